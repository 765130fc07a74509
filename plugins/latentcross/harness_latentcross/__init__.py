"""LatentCross for harness: a recurrent model over each user's items whose input and output are
multiplied by ``1 + context embedding`` (time context), trained with t-Batch."""

from __future__ import annotations

from harness_latentcross._model import LatentCross, latent_cross
from harness_latentcross._tbatch import Plan, plan_window, time_windows

__all__ = ["LatentCross", "Plan", "latent_cross", "plan_window", "time_windows"]
