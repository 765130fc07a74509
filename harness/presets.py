"""Named presets: a paper's evaluation settings as protocol options and model parameters, so that
its numbers can be reproduced with one flag and every run record says which preset made it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.errors import UsageError, did_you_mean

__all__ = ["PRESETS", "Preset", "get_preset"]


@dataclass(frozen=True)
class Preset:
    """Protocol options and per-model parameters; the command line overrides both."""

    description: str
    protocol: dict[str, Any] = field(default_factory=dict)
    params: dict[str, dict[str, Any]] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    "thrnn": Preset(
        "the sessions protocol as the THRNN authors' code (Vassøy et al. 2019; BjornarVass/Recsys) "
        "runs it: sessions by an idle gap of 30 min (1 h on datasets named reddit*), 1-event "
        "sessions dropped, lengths 2-39 kept, parts of 20 with a trailing 1-event part dropped, "
        "users with fewer than 3 sessions dropped, per-user 80/20 split without validation, and "
        "their tester's return-time MAE (start-to-start gaps, gaps under the session gap left out, "
        "gaps from 500 h on compressed and left out of the headline mae_thrnn)",
        protocol={"name": "sessions", "valid": 0.0, "test": 0.2, "min_session_length": 2,
                  "max_visit_length": 39, "drop_single_tail": True, "min_user_sessions": 3,
                  "session_gap": 1800.0, "max_return_gap": 500 * 3600.0},
    ),
    "jodie": Preset(
        "JODIE as its authors' code evaluates it: ties in the true item's favour, online "
        "fine-tuning on valid and test events, time differences standardised and time windows "
        "sized with the whole stream (the evaluator hands models the whole stream's summary "
        "statistics, recorded under stream_summary)",
        protocol={"tie_policy": "optimistic", "stream_summary": True},
        params={"jodie": {"online_updates": True, "dt_statistics": "stream",
                          "window_span": "stream"}},
    ),
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; an unknown name is a usage error listing the known ones."""
    if name not in PRESETS:
        raise UsageError(did_you_mean(name, list(PRESETS), "preset"))
    return PRESETS[name]
