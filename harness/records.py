"""Run records: one versioned JSON file per (model, dataset, protocol, seed) run."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from harness.errors import HarnessError

__all__ = [
    "SCHEMA_VERSION",
    "STATUSES",
    "environment",
    "load_records",
    "new_run_id",
    "write_json_atomic",
    "write_record",
]

SCHEMA_VERSION = 1
STATUSES = ("ok", "failed", "timeout", "skipped", "pruned")
REQUIRED_KEYS = (
    "schema_version", "run_id", "status", "model", "params", "dataset", "protocol", "seed",
    "metrics", "epochs", "timing", "environment",
)


def new_run_id() -> str:
    """A sortable, unique id: UTC time then random hex."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]


def _version(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _git_revision() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("-dirty" if dirty else "")


def environment() -> dict[str, Any]:
    """Versions and machine facts needed to rerun a result (torch is not imported for this)."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "harness": _version("harness"),
        "numpy": _version("numpy"),
        "torch": _version("torch"),
        "git_revision": _git_revision(),
        "argv": sys.argv[1:],
    }


def write_json_atomic(path: Path, payload: dict[str, Any]) -> Path:
    """Write JSON through a temporary file and a rename, so no reader sees half a file."""
    from harness.data._common import atomic_write_bytes

    atomic_write_bytes(path, (json.dumps(payload, indent=1, allow_nan=True) + "\n").encode())
    return path


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text).strip("-") or "x"


def run_dir(results_dir: str | Path, dataset: str, protocol: str) -> Path:
    """``results_dir/<dataset>/<protocol>``: where the records (and checkpoints) of runs go."""
    return Path(results_dir) / _slug(Path(dataset).stem if "/" in dataset else dataset) / protocol


def write_record(record: dict[str, Any], results_dir: str | Path) -> Path:
    """Write ``record`` under ``results_dir/<dataset>/<protocol>/`` and return its path."""
    name = f"{_slug(record['model'])}-seed{record['seed']}-{record['run_id']}.json"
    return write_json_atomic(
        run_dir(results_dir, record["dataset"]["name"], record["protocol"]["name"]) / name, record)


def load_records(results_dir: str | Path) -> list[dict[str, Any]]:
    """Every run record under ``results_dir``; an unreadable or old-format file is an error
    that names it and says what to do."""
    records = []
    root = Path(results_dir)
    for path in sorted(root.rglob("*.json")):
        if path.name.startswith("."):
            continue
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise HarnessError(f"{path}: not a readable run record ({exc}); delete or fix it") from exc
        if not isinstance(record, dict) or "schema_version" not in record:
            continue  # not a run record (e.g. a study summary)
        got = record["schema_version"]
        if got != SCHEMA_VERSION:
            raise HarnessError(
                f"{path}: run record schema_version {got}, but this harness reads version "
                f"{SCHEMA_VERSION}; rerun the run with `harness run` (the record keeps its command "
                "under environment.argv) or install the harness version that wrote it"
            )
        missing = [k for k in REQUIRED_KEYS if k not in record]
        if missing:
            raise HarnessError(f"{path}: run record lacks keys {missing}; delete or rerun it")
        record["_path"] = str(path)
        records.append(record)
    return records
