"""LatentCross for harness: a recurrent model over each user's items whose input and output are
multiplied by ``1 + context embedding`` (time context), trained with t-Batch."""

from __future__ import annotations

from harness_rrn import Plan, plan_window, time_windows

from harness_latentcross._model import LatentCross, latent_cross

__all__ = ["LatentCross", "Plan", "latent_cross", "plan_window", "time_windows"]
