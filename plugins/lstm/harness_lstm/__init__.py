"""The LSTM baseline of the JODIE paper for harness, and the recurrent machinery Time-LSTM shares."""

from __future__ import annotations

from harness_lstm._model import LSTM
from harness_lstm._recurrent import RecurrentRecommender, flat_cells, plan_lanes

__all__ = ["LSTM", "RecurrentRecommender", "flat_cells", "plan_lanes"]
