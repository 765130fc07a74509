"""THRNN (Vassøy et al., 2019) as a harness model plugin: ``harness run --models thrnn
--protocol sessions``; ranks items and predicts return times."""

from harness_thrnn._model import PRESETS, THRNN
from harness_thrnn._time import (
    EXPECTATIONS,
    expected_gap,
    gap_bucket,
    log_density,
    simpson_grid,
    time_loss,
)

__all__ = [
    "EXPECTATIONS",
    "PRESETS",
    "THRNN",
    "expected_gap",
    "gap_bucket",
    "log_density",
    "simpson_grid",
    "time_loss",
]
