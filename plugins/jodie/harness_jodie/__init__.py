"""JODIE for harness: dynamic user and item embeddings from coupled RNNs, trained with t-Batch."""

from __future__ import annotations

from harness_jodie._model import JODIE
from harness_jodie._tbatch import Window, plan_windows, time_deltas

__all__ = ["JODIE", "Window", "plan_windows", "time_deltas"]
