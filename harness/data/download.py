"""Streaming downloads that resume after an interruption and verify a checksum."""

from __future__ import annotations

import contextlib
import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

from harness.data._common import DataError

__all__ = ["download_file"]

_BLOCK = 1 << 20


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


def _open(url: str, offset: int, timeout: float):
    headers = {"User-Agent": "harness-datasets/1"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _drop_empty(part: Path) -> None:
    """Remove a partial file with nothing in it to resume from."""
    with contextlib.suppress(OSError):
        if part.stat().st_size == 0:
            part.unlink()


def download_file(url: str, dest: Path, *, sha256: str | None = None, progress: bool = True,
                  timeout: float = 60.0) -> str:
    """Download ``url`` to ``dest`` and return the file's SHA-256.

    Bytes go to ``dest.part`` first. When that exists (an earlier download was interrupted) the
    download resumes with an HTTP Range request; a server that answers with the whole file
    restarts it. With ``sha256`` given, a file with another checksum is deleted and refused.
    ``dest`` appears only complete and verified.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    try:
        try:
            response = _open(url, offset, timeout)
        except urllib.error.HTTPError as exc:
            if exc.code != 416 or not offset:
                raise
            part.unlink()  # the partial file is not a prefix the server knows: start over
            offset = 0
            response = _open(url, 0, timeout)
        with response:
            status = getattr(response, "status", 200)
            content_range = response.headers.get("Content-Range", "")
            if offset and not (status == 206 and content_range.startswith(f"bytes {offset}-")):
                offset = 0  # no resume support: restart from the beginning
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length is not None else None
            from tqdm import tqdm

            with open(part, "ab" if offset else "wb") as fh, tqdm(
                total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                desc=dest.name, disable=not progress, leave=False,
            ) as bar:
                while block := response.read(_BLOCK):
                    fh.write(block)
                    bar.update(len(block))
    except urllib.error.HTTPError as exc:
        _drop_empty(part)
        raise DataError(f"{url}: the server answered {exc.code} {exc.reason}; check the URL in the "
                        "dataset's manifest") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        _drop_empty(part)
        raise DataError(f"{url}: download failed ({reason}); run the command again to resume "
                        f"({part.stat().st_size if part.exists() else 0} bytes kept)") from None
    got = part.stat().st_size
    if total is not None and got != total:
        raise DataError(f"{url}: the download stopped at {got} of {total} bytes; run the command "
                        "again to resume")
    digest = _sha256(part)
    if sha256 and digest != sha256.lower():
        with contextlib.suppress(OSError):
            part.unlink()
        raise DataError(f"{url}: checksum mismatch: expected sha256 {sha256}, got {digest}; the "
                        "file on the server changed or was corrupted, so it was refused (if the "
                        "change is expected, update the checksum and download again)")
    os.replace(part, dest)
    return digest
