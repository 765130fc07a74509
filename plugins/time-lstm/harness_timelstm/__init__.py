"""Time-LSTM (Zhu et al., IJCAI 2017; the TLSTM3 cell) for harness, as the JODIE paper's baseline."""

from __future__ import annotations

from harness_timelstm._model import AUTHORS_CLAMP, TIME_SCALES, WT1_CONSTRAINTS, TimeLSTM, tlstm3_cell

__all__ = ["AUTHORS_CLAMP", "TIME_SCALES", "WT1_CONSTRAINTS", "TimeLSTM", "tlstm3_cell"]
