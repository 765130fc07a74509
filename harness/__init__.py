"""harness: benchmark models of temporal user-item interactions on one trustworthy protocol.

The public interfaces are :class:`Model`, :class:`Dataset`, :class:`Metric` and the event stream
:class:`Interactions`; :func:`evaluate` runs a protocol on a model. Names are imported on first
use, so that ``import harness`` (and ``harness --help``) stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Model": "harness.api",
    "Dataset": "harness.api",
    "Metric": "harness.api",
    "Interactions": "harness.interactions",
    "Protocol": "harness.evaluate",
    "evaluate": "harness.evaluate",
    "HarnessError": "harness.errors",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'harness' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
