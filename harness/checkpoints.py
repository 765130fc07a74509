"""Checkpoints of iterative runs: a killed run continues from its last epoch with ``--resume``.

After every epoch the model's own process pickles its state (the model object, with its
optimizer, and the global random states of Python, NumPy and torch); the evaluator never
unpickles it (it is the model's code) but stores it as raw bytes, with the evaluator's own state
(the epochs so far, the best epoch and the best epoch's model), in one file next to the run's
records, written atomically (a temporary file renamed into place). A resumed run restores the
best epoch's model to replay its validation pass, restores the last epoch's model to train on,
and ends with exactly the metrics of a run that was never stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from harness._wire import WireError, decode, encode
from harness.errors import HarnessError

__all__ = ["Checkpoint", "run_key"]

VERSION = 1


def run_key(identity: dict[str, Any]) -> str:
    """A short digest of what makes two runs the same run (model, parameters, data, protocol,
    seed, epochs): a checkpoint is resumed only by the run it was written for."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:12]


class Checkpoint:
    """The checkpoint file of one run at ``path`` (it may not exist yet)."""

    def __init__(self, path: Path, key: str) -> None:
        self.path = path
        self.key = key

    def load(self) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
        """The saved header and model states, or ``None`` when there is no checkpoint."""
        try:
            frame = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            header, arrays = decode(frame)
        except WireError as exc:
            raise HarnessError(f"{self.path}: not a readable checkpoint ({exc}); delete it to "
                               "start the run over") from None
        if header.get("version") != VERSION or header.get("key") != self.key:
            raise HarnessError(f"{self.path}: a checkpoint of another run or harness version; "
                               "delete it to start the run over")
        return header, arrays

    def save(self, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Write atomically: a reader (or a resumed run) sees the old file or the new one."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(encode({**header, "version": VERSION, "key": self.key}, arrays))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
