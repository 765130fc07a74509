"""Datasets: loaders, the registry of manifests and downloads, sessions, splits, and the
synthetic generator.

Nothing here imports torch.
"""

from __future__ import annotations

from harness.data._common import DataError, DataOrderWarning, data_home
from harness.data.datasets import (
    FileDataset,
    Manifest,
    dataset_stats,
    download_dataset,
    import_dataset,
    manifest_names,
    manifests,
    open_dataset,
)
from harness.data.jodie import load_jodie_csv, write_jodie_csv
from harness.data.logs import load_lastfm_1k, load_reddit_subreddits
from harness.data.sessions import sessionize
from harness.data.splits import index_split, session_split

__all__ = [
    "DataError",
    "DataOrderWarning",
    "FileDataset",
    "Manifest",
    "data_home",
    "dataset_stats",
    "download_dataset",
    "import_dataset",
    "index_split",
    "load_jodie_csv",
    "load_lastfm_1k",
    "load_reddit_subreddits",
    "manifest_names",
    "manifests",
    "open_dataset",
    "session_split",
    "sessionize",
    "write_jodie_csv",
]
