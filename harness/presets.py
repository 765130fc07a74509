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
