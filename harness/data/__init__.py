"""Datasets: loaders, the registry of manifests and downloads, sessions, splits, and the
synthetic generator.

Nothing here imports torch. Names are imported on first use, so that ``harness --help``, which
imports :mod:`harness.data.cli`, does not pay for numpy.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DataError": "_common",
    "DataOrderWarning": "_common",
    "data_home": "_common",
    "FileDataset": "datasets",
    "Manifest": "datasets",
    "dataset_stats": "datasets",
    "download_dataset": "datasets",
    "import_dataset": "datasets",
    "manifest_names": "datasets",
    "manifests": "datasets",
    "open_dataset": "datasets",
    "load_jodie_csv": "jodie",
    "write_jodie_csv": "jodie",
    "load_lastfm_1k": "logs",
    "load_reddit_subreddits": "logs",
    "sessionize": "sessions",
    "index_split": "splits",
    "session_split": "splits",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'harness.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"harness.data.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
