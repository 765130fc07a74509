"""RRN for harness: a user LSTM and an item LSTM over their histories, dynamic plus stationary
scores, trained with t-Batch."""

from __future__ import annotations

from harness_rrn._model import RRN
from harness_rrn._tbatch import Plan, log_gaps, plan_window, time_windows

__all__ = ["RRN", "Plan", "log_gaps", "plan_window", "time_windows"]
