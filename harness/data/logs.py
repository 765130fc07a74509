"""Session logs of the THRNN paper: LastFM-1K and the Reddit subreddit interactions.

* LastFM-1K (``userid-timestamp-artid-artname-traid-traname.tsv``, also read straight from
  ``lastfm-dataset-1K.tar.gz``): tab-separated ``user, ISO timestamp, artist id, artist name,
  track id, track name``. Items are artists: the MusicBrainz artist id, or the artist name where
  the id is empty (as for about 600,000 of its 19 million listens). The THRNN authors' script
  keys items by the id alone, so all those listens become one item there; here each artist name
  is its own item. Only the first four fields are read: a stray tab inside a track name changes
  nothing. Lines that cannot be read (fewer than four fields, no user, no artist, a bad
  timestamp) are skipped and counted, with one warning that names the first; a byte-order mark
  and a carriage return are stripped from every line.
* Reddit subreddit interactions (Kaggle ``colemaclean/subreddit-interactions``, ``reddit_data.csv``):
  ``username,subreddit,utc`` with a header line. Items are subreddits.

Both files list events newest first per user, so they are sorted (stable) without a warning.
"""

from __future__ import annotations

import datetime as _dt
import tarfile
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np

from harness.data._common import DataError
from harness.data.jodie import read_source, sort_and_remap
from harness.interactions import Interactions

__all__ = ["LASTFM_MEMBER", "load_lastfm_1k", "load_reddit_subreddits", "parse_iso_utc"]

LASTFM_MEMBER = "userid-timestamp-artid-artname-traid-traname.tsv"
_BOM = b"\xef\xbb\xbf"
_CHUNK = 64 << 20


def _lines(fh: IO[bytes]) -> Iterator[tuple[int, list[bytes]]]:
    """Yield ``(line number of the first line, lines)`` in chunks, without line endings."""
    line_no = 1
    rest = b""
    while True:
        block = fh.read(_CHUNK)
        if not block:
            break
        block = rest + block
        cut = block.rfind(b"\n")
        if cut < 0:
            rest = block
            continue
        rest = block[cut + 1 :]
        lines = block[:cut].split(b"\n")
        yield line_no, lines
        line_no += len(lines)
    if rest:
        yield line_no, [rest]


def _open_lastfm(path: Path) -> tuple[IO[bytes], object]:
    name = path.name.lower()
    if name.endswith((".tar.gz", ".tgz", ".tar")):
        try:
            archive = tarfile.open(path, "r:*")
            members = [m for m in archive.getmembers() if m.isfile() and m.name.endswith(".tsv")]
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise DataError(f"{path}: not a readable tar archive ({exc}); download it again") from None
        wanted = [m for m in members if m.name.endswith(LASTFM_MEMBER)] or [
            m for m in members if "profile" not in m.name]
        if not wanted:
            raise DataError(f"{path}: the archive holds no {LASTFM_MEMBER}; is it LastFM-1K?")
        fh = archive.extractfile(wanted[0])
        assert fh is not None
        return fh, archive
    if not path.is_file():
        read_source(path)
    return open(path, "rb"), None


def parse_iso_utc(stamps: list[bytes], *, where: str = "", first_line: int = 1,
                  strict: bool = True) -> np.ndarray:
    """Seconds since the epoch of ``YYYY-MM-DDTHH:MM:SSZ`` strings (vectorized; others slowly).

    A string that is no ISO 8601 time is an error naming ``where`` and its line, or NaN when
    ``strict`` is False."""
    arr = np.array(stamps, dtype="S20")
    width_ok = np.array([len(s) == 20 for s in stamps], bool) if len(stamps) else np.ones(0, bool)
    b = arr.view(np.uint8).reshape(len(arr), 20).astype(np.int64) - 48
    digits = [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18]
    ok = width_ok & np.all((b[:, digits] >= 0) & (b[:, digits] <= 9), axis=1)
    ok &= (b[:, 4] == ord("-") - 48) & (b[:, 7] == ord("-") - 48) & (b[:, 10] == ord("T") - 48)
    ok &= (b[:, 13] == ord(":") - 48) & (b[:, 16] == ord(":") - 48) & (b[:, 19] == ord("Z") - 48)
    year = b[:, 0] * 1000 + b[:, 1] * 100 + b[:, 2] * 10 + b[:, 3]
    month, day = b[:, 5] * 10 + b[:, 6], b[:, 8] * 10 + b[:, 9]
    hour, minute, second = b[:, 11] * 10 + b[:, 12], b[:, 14] * 10 + b[:, 15], b[:, 17] * 10 + b[:, 18]
    ok &= (month >= 1) & (month <= 12) & (day >= 1) & (day <= 31) & (hour < 24) & (minute < 60)
    ok &= second < 61
    # Days from the civil date (Howard Hinnant's algorithm).
    y = year - (month <= 2)
    era = np.floor_divide(y, 400)
    yoe = y - era * 400
    mp = (month + 9) % 12
    doy = (153 * mp + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    days = era * 146097 + doe - 719468
    seconds = (days * 86400 + hour * 3600 + minute * 60 + second).astype(np.float64)
    for k in np.flatnonzero(~ok):
        text = stamps[k].decode("utf-8", "replace")
        try:
            value = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            if not strict:
                seconds[k] = np.nan
                continue
            raise DataError(f"{where}:{first_line + k}: timestamp {text!r} is not an ISO 8601 "
                            "time (like 2009-05-04T23:08:57Z); fix or remove the line") from None
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.UTC)
        seconds[k] = value.timestamp()
    return seconds


def _finish(path: Path, users: list[bytes], items: list[bytes], t: np.ndarray,
            what: str) -> Interactions:
    if not users:
        raise DataError(f"{path}: the file holds no events; is it the {what} file?")
    user_map: dict[bytes, int] = {}
    item_map: dict[bytes, int] = {}
    n = len(users)
    user = np.fromiter((user_map.setdefault(u, len(user_map)) for u in users), np.int64, n)
    item = np.fromiter((item_map.setdefault(i, len(item_map)) for i in items), np.int64, n)
    return sort_and_remap(user, item, t, np.zeros(n, np.int8), np.zeros((n, 0), np.float32),
                          len(user_map), len(item_map), source=str(path),
                          name=path.name.split(".")[0], warn=False)


def load_lastfm_1k(path: str | Path) -> Interactions:
    """Load LastFM-1K listens (the .tsv or the .tar.gz) with artists as items; an empty artist
    id maps to the artist name (see the module notes). Malformed lines are skipped and counted
    in a warning; a file with no readable line is an error."""
    path = Path(path)
    if not path.exists():
        read_source(path)
    fh, archive = _open_lastfm(path)
    users: list[bytes] = []
    items: list[bytes] = []
    times: list[np.ndarray] = []
    skipped = 0
    first_bad: tuple[int, str] | None = None

    def bad(line_no: int, why: str) -> None:
        nonlocal skipped, first_bad
        skipped += 1
        if first_bad is None:
            first_bad = (line_no, why)

    try:
        for first, lines in _lines(fh):
            stamps: list[bytes] = []
            numbers: list[int] = []
            for k, line in enumerate(lines):
                if line.startswith(_BOM):
                    line = line[len(_BOM):]
                f = line.rstrip(b"\r").split(b"\t", 4)  # the track fields are never needed
                if len(f) < 4:
                    bad(first + k, f"{len(f)} tab-separated fields, at least 4 needed (user, "
                                   "timestamp, artist id, artist name)")
                    continue
                if not f[0] or not (f[2] or f[3]):
                    bad(first + k, "no user, or neither an artist id nor an artist name")
                    continue
                users.append(f[0])
                items.append(f[2] or b"name:" + f[3])
                stamps.append(f[1])
                numbers.append(first + k)
            t = parse_iso_utc(stamps, where=str(path), strict=False)
            for j in np.flatnonzero(np.isnan(t)).tolist():
                bad(numbers[j], f"timestamp {stamps[j].decode('utf-8', 'replace')!r} is not ISO 8601")
            if np.isnan(t).any():
                keep = ~np.isnan(t)
                start = len(users) - len(stamps)
                users[start:] = [u for u, ok in zip(users[start:], keep) if ok]
                items[start:] = [i for i, ok in zip(items[start:], keep) if ok]
                t = t[keep]
            times.append(t)
    except (OSError, EOFError, tarfile.TarError, zlib.error) as exc:
        raise DataError(f"{path}: the file is truncated or corrupt ({exc}); download it "
                        "again") from None
    finally:
        fh.close()
        if archive is not None:
            archive.close()  # type: ignore[attr-defined]
    if skipped:
        assert first_bad is not None
        line_no, why = first_bad
        if not users:
            raise DataError(f"{path}: no line could be read ({skipped:,} malformed; line "
                            f"{line_no}: {why}); is it the LastFM-1K listens file?")
        warnings.warn(f"{path}: skipped {skipped:,} malformed line{'s' * (skipped > 1)} of "
                      f"{skipped + len(users):,} (first at line {line_no}: {why})", stacklevel=2)
    t = np.concatenate(times) if times else np.zeros(0)
    return _finish(path, users, items, t, "LastFM-1K")


def load_reddit_subreddits(path: str | Path) -> Interactions:
    """Load the Reddit subreddit interactions CSV (``username,subreddit,utc``)."""
    path = Path(path)
    if not path.is_file():
        read_source(path)
    users: list[bytes] = []
    items: list[bytes] = []
    times: list[np.ndarray] = []
    with open(path, "rb") as fh:
        for first, lines in _lines(fh):
            start = 0
            if first == 1:
                if not lines[0].lower().startswith(b"username,subreddit,utc"):
                    raise DataError(f"{path}:1: expected the header username,subreddit,utc; is "
                                    "this the Reddit subreddit interactions file?")
                start = 1
            stamps = []
            for k in range(start, len(lines)):
                f = lines[k].rstrip(b"\r").split(b",")
                if len(f) != 3:
                    raise DataError(f"{path}:{first + k}: expected 3 columns (username,subreddit,"
                                    f"utc), found {len(f)}; fix or remove the line")
                if not f[0] or not f[1]:
                    raise DataError(f"{path}:{first + k}: the username or subreddit is empty")
                users.append(f[0])
                items.append(f[1])
                stamps.append(f[2])
            try:
                t = np.array(stamps, dtype="S").astype(np.float64)
            except ValueError:
                for k, s in enumerate(stamps):
                    try:
                        float(s)
                    except ValueError:
                        raise DataError(f"{path}:{first + start + k}: utc {s.decode(errors='replace')!r}"
                                        " is not a number; fix or remove the line") from None
                raise
            bad = ~np.isfinite(t)
            if bad.any():
                k = int(np.flatnonzero(bad)[0])
                raise DataError(f"{path}:{first + start + k}: utc is {t[k]}; NaN and infinite "
                                "values are not allowed")
            times.append(t)
    t = np.concatenate(times) if times else np.zeros(0)
    return _finish(path, users, items, t, "Reddit subreddit interactions")
