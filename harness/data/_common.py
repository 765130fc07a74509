"""Shared pieces of :mod:`harness.data`: errors, warnings, the data directory, atomic writes."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from harness.errors import HarnessError

__all__ = [
    "DataError",
    "DataOrderWarning",
    "atomic_dir",
    "atomic_write_bytes",
    "data_home",
]


class DataError(HarnessError):
    """A data file or dataset the user can fix: the message names the file, the line and the fix."""


class DataOrderWarning(UserWarning):
    """Events were not in time order in the file; they were sorted (stably)."""


def data_home() -> Path:
    """Where downloads and caches live: ``$HARNESS_DATA``, else the user's cache directory.

    The default is ``$XDG_CACHE_HOME/harness`` (``~/.cache/harness``) on Linux,
    ``~/Library/Caches/harness`` on macOS and ``%LOCALAPPDATA%\\harness\\Cache`` on Windows.
    """
    env = os.environ.get("HARNESS_DATA")
    if env:
        return Path(env).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
        return base / "harness" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "harness"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "harness"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (never half a file).

    The file gets the permissions of any new file (``0666`` less the umask), not ``mkstemp``'s
    private ``0600``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``path`` when the block succeeds.

    If ``path`` appears meanwhile (another process wrote the same cache entry), the temporary
    directory is dropped: both contain the same data.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        try:
            os.rename(tmp, path)
        except OSError:
            if not path.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
