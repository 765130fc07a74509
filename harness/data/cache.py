"""Checksums of source files and the binary cache of parsed streams.

A parsed stream is stored as raw ``.npy`` files in ``<data home>/cache/<sha256>/<kind>/``, keyed
by the checksum of its source file, so a second load only reads arrays. A source's checksum is
remembered together with its size, modification time and inode, so it is not recomputed while the
file is unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from harness.data._common import atomic_dir, atomic_write_bytes, data_home
from harness.interactions import Interactions

__all__ = ["CACHE_VERSION", "file_sha256", "load_cached", "remember_sha256", "store_cached"]

#: Bump when the parsed form changes: old cache entries are then ignored.
CACHE_VERSION = 1
_CHUNK = 1 << 22
_MMAP_BYTES = 64 << 20


def _memo_path(path: Path) -> Path:
    key = hashlib.sha1(str(path.resolve()).encode()).hexdigest()
    return data_home() / "hashes" / f"{key}.json"


def _stat_key(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}


def remember_sha256(path: Path, digest: str) -> None:
    """Record ``digest`` as the checksum of ``path`` as it is now (size, mtime, inode)."""
    record = {"path": str(path.resolve()), "sha256": digest, **_stat_key(path)}
    try:
        atomic_write_bytes(_memo_path(path), json.dumps(record).encode())
    except OSError:
        pass  # an unwritable cache only costs a recomputation


def file_sha256(path: Path, *, remember: bool = True) -> str:
    """SHA-256 of a file, reusing the remembered value while the file is unchanged."""
    path = Path(path)
    memo = _memo_path(path)
    try:
        record = json.loads(memo.read_text())
        if all(record.get(k) == v for k, v in _stat_key(path).items()):
            return str(record["sha256"])
    except (OSError, ValueError, KeyError):
        pass
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    digest = h.hexdigest()
    if remember:
        remember_sha256(path, digest)
    return digest


def _entry(sha256: str, kind: str) -> Path:
    return data_home() / "cache" / sha256 / f"{kind}-v{CACHE_VERSION}"


_COLUMNS = ("user", "item", "t", "label", "features")


def load_cached(sha256: str, kind: str, name: str) -> Interactions | None:
    """The stream cached for this source checksum and parser kind, or None."""
    entry = _entry(sha256, kind)
    try:
        meta = json.loads((entry / "meta.json").read_text())
        arrays = {c: _load_array(entry / f"{c}.npy") for c in _COLUMNS}
    except (OSError, ValueError):
        return None
    return Interactions(
        **arrays, n_users=int(meta["n_users"]), n_items=int(meta["n_items"]), name=name
    )


def _load_array(path: Path) -> np.ndarray:
    """Small arrays are read; large ones are memory-mapped copy-on-write (writable, private,
    paged in on use), which makes a cached load of a Reddit-sized stream near-instant."""
    if path.stat().st_size < _MMAP_BYTES:
        return np.load(path, allow_pickle=False)
    return np.load(path, mmap_mode="c", allow_pickle=False)


def store_cached(sha256: str, kind: str, stream: Interactions) -> None:
    """Write the stream's arrays for later loads (atomically; failures are ignored)."""
    entry = _entry(sha256, kind)
    if entry.is_dir():
        return
    try:
        with atomic_dir(entry) as tmp:
            for c in _COLUMNS:
                np.save(tmp / f"{c}.npy", getattr(stream, c), allow_pickle=False)
            meta = {"n_users": stream.n_users, "n_items": stream.n_items, "version": CACHE_VERSION}
            (tmp / "meta.json").write_text(json.dumps(meta))
    except OSError:
        pass


def clear_memo(path: Path) -> None:
    """Forget the remembered checksum of ``path``."""
    try:
        os.unlink(_memo_path(Path(path)))
    except OSError:
        pass
