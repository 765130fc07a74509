"""The JODIE CSV format: a header line, then ``user_id,item_id,timestamp,state_label,f1,...,fF``.

User and item ids may be any strings; they become dense integers in order of first appearance
in the time-sorted stream. Events are sorted by timestamp with a stable sort (a warning says how
many were out of order). Numbers are parsed by numpy's C reader, in several processes for large
files; every malformed line is reported as ``FILE:LINE: problem; fix``.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import re
import sys
import warnings
from pathlib import Path

import numpy as np

from harness.data._common import DataError, DataOrderWarning
from harness.interactions import Interactions

__all__ = ["load_jodie_csv", "read_source", "renumber", "sort_and_remap", "write_jodie_csv"]

_PIECE_BYTES = 16 << 20
_PARALLEL_BYTES = 32 << 20
_BAD_FLOAT = re.compile(r"could not convert string (.*) to float64 at row (\d+), column (\d+)")
_COLUMN_NAMES = ("user_id", "item_id", "timestamp", "state_label")

# Set by the parent before forking workers, which read them copy-on-write.
_DATA: bytes = b""
_STARTS: list[int] = []
_NCOLS = 0


def read_source(path: Path) -> bytes:
    """The bytes of a data file, or a one-line error when it cannot be read."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file; check the path (or register the data with "
                        "`harness datasets import PATH --name NAME`)")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a data file; give the path of the file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror}); check its permissions") from None


_MAGIC = {b"\x1f\x8b": "gzip", b"PK\x03\x04": "zip", b"BZh": "bzip2", b"\xfd7zXZ": "xz",
          b"\x93NUMPY": "numpy", b"PAR1": "parquet"}
_CONTROL = bytes(set(range(32)) - {9, 10, 13})


def _check_text(path: Path, data: bytes) -> None:
    """A binary file (compressed, or not a CSV at all) is named as such, not as a line with the
    wrong number of columns."""
    head = data[:65536]
    kind = next((name for magic, name in _MAGIC.items() if head.startswith(magic)), None)
    if kind is None:
        # text in any 8-bit encoding (user names in Latin-1) has no NUL and few control bytes
        control = len(head) - len(head.translate(None, _CONTROL))
        if b"\x00" not in head and control <= len(head) // 100:
            return
        kind = "binary"
    what = f"{kind}-compressed data" if kind in ("gzip", "zip", "bzip2", "xz") else f"{kind} data"
    raise DataError(f"{path}: not a text CSV (it holds {what}); a JODIE CSV is plain text "
                    "(user_id,item_id,timestamp,state_label,f1,...)"
                    + ("; decompress it first" if "compressed" in what else ""))


def _column_name(col: int) -> str:
    return _COLUMN_NAMES[col] if col < 4 else f"feature f{col - 3}"


def _is_number(field: bytes) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def _parse_piece(lo: int, hi: int) -> tuple:
    """Parse lines ``lo..hi-1`` (0-based data lines) of ``_DATA``.

    Returns ``("ok", t, label, features)`` or ``("error", line_index, message)``.
    """
    data, starts, ncols = _DATA, _STARTS, _NCOLS
    b0, b1 = starts[lo], starts[hi] - 1
    if data.count(b",", b0, b1) != (hi - lo) * (ncols - 1):
        for k in range(lo, hi):
            found = data.count(b",", starts[k], starts[k + 1] - 1) + 1
            if found != ncols:
                return ("error", k, f"expected {ncols} columns (user_id,item_id,timestamp,"
                        f"state_label and {ncols - 4} features, as on line 2), found {found}")
    try:
        values = np.loadtxt(io.BytesIO(data[b0:b1]), delimiter=",", dtype=np.float64,
                            usecols=range(2, ncols), comments=None, ndmin=2)
    except ValueError as exc:
        match = _BAD_FLOAT.search(str(exc))
        if match is None:
            return ("error", lo, f"cannot parse the lines from here on: {exc}")
        row, col = int(match.group(2)), int(match.group(3)) - 1
        return ("error", lo + row, f"{_column_name(col)} {match.group(1)} is not a number")
    if values.shape[0] != hi - lo:  # loadtxt skips blank lines; they were rejected before
        return ("error", lo, "unexpected line structure (blank line?)")
    finite = np.isfinite(values)
    if not finite.all():
        row, col = np.argwhere(~finite)[0]
        return ("error", lo + int(row), f"{_column_name(int(col) + 2)} is {values[row, col]}; "
                "NaN and infinite values are not allowed")
    label = values[:, 1]
    bad = (label != 0) & (label != 1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        return ("error", lo + row, f"state_label must be 0 or 1, got {label[row]:g}")
    return ("ok", values[:, 0].copy(), label.astype(np.int8),
            values[:, 2:].astype(np.float32))


def _workers(requested: int | None, nbytes: int) -> int:
    if requested is not None:
        return max(1, requested)
    env = os.environ.get("HARNESS_LOAD_WORKERS")
    if env:
        return max(1, int(env))
    if nbytes < _PARALLEL_BYTES or "fork" not in multiprocessing.get_all_start_methods():
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return min(cpus, 8)


def load_jodie_csv(path: str | Path, *, workers: int | None = None,
                   name: str | None = None) -> Interactions:
    """Parse a JODIE CSV file into a time-ordered :class:`Interactions` stream.

    ``workers`` processes parse the numbers (default: one per CPU for files over 32 MiB; the
    environment variable ``HARNESS_LOAD_WORKERS`` overrides). Raises :class:`DataError` with
    ``FILE:LINE: problem`` for malformed input; warns with :class:`DataOrderWarning` when events
    had to be sorted.
    """
    global _DATA, _STARTS, _NCOLS
    path = Path(path)
    data = read_source(path)
    _check_text(path, data)
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n")
    end = len(data)
    while end and data[end - 1] in b"\n":
        end -= 1
    if end == 0:
        raise DataError(f"{path}: the file is empty; a JODIE CSV needs a header line "
                        "(user_id,item_id,timestamp,state_label,...) and one line per event")
    first = data.find(b"\n", 0, end)
    if first < 0:
        raise DataError(f"{path}: the file has a header line but no events; add one line per "
                        "event (user_id,item_id,timestamp,state_label,f1,...,fF)")
    header = data[:first].split(b",")
    if len(header) >= 4 and _is_number(header[2]) and _is_number(header[3]):
        raise DataError(f"{path}:1: the first line looks like an event, but a JODIE CSV starts "
                        "with a header line; add the line user_id,item_id,timestamp,state_label")

    find = data.find
    starts: list[int] = []
    users: list[bytes] = []
    items: list[bytes] = []
    s = first + 1
    while s < end:
        c1 = find(b",", s, end)
        nl = find(b"\n", s, end)
        if nl < 0:
            nl = end
        line = len(starts) + 2
        if nl == s:
            raise DataError(f"{path}:{line}: the line is empty; remove blank lines between events")
        c2 = find(b",", c1 + 1, nl) if 0 <= c1 < nl else -1
        if c2 < 0:
            raise DataError(f"{path}:{line}: expected at least 4 columns (user_id,item_id,"
                            f"timestamp,state_label), found {data.count(b',', s, nl) + 1}")
        if c1 == s or c2 == c1 + 1:
            which = "user_id" if c1 == s else "item_id"
            raise DataError(f"{path}:{line}: {which} is empty; every event needs a user and an item")
        starts.append(s)
        users.append(data[s:c1])
        items.append(data[c1 + 1 : c2])
        s = nl + 1
    n = len(starts)
    starts.append(end + 1)  # line k ends (exclusive) at starts[k + 1] - 1
    ncols = data.count(b",", starts[0], starts[1] - 1) + 1
    if ncols < 4:
        raise DataError(f"{path}:2: expected at least 4 columns (user_id,item_id,timestamp,"
                        f"state_label), found {ncols}")

    _DATA, _STARTS, _NCOLS = data, starts, ncols
    try:
        per_line = max(1, (end - first) // n)
        step = max(1, _PIECE_BYTES // per_line)
        pieces = [(lo, min(lo + step, n)) for lo in range(0, n, step)]
        nworkers = min(_workers(workers, end), len(pieces))
        if nworkers > 1:
            ctx = multiprocessing.get_context("fork")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
                with ctx.Pool(nworkers) as pool:
                    results = pool.starmap(_parse_piece, pieces, chunksize=1)
        else:
            results = [_parse_piece(lo, hi) for lo, hi in pieces]
    finally:
        _DATA, _STARTS, _NCOLS = b"", [], 0
    for res in results:
        if res[0] == "error":
            raise DataError(f"{path}:{res[1] + 2}: {res[2]}; fix or remove the line")
    t = np.concatenate([r[1] for r in results])
    label = np.concatenate([r[2] for r in results])
    features = (np.concatenate([r[3] for r in results]) if len(results) > 1
                else results[0][3])
    del results

    user_map: dict[bytes, int] = {}
    item_map: dict[bytes, int] = {}
    user = np.fromiter((user_map.setdefault(u, len(user_map)) for u in users), np.int64, n)
    item = np.fromiter((item_map.setdefault(i, len(item_map)) for i in items), np.int64, n)
    return sort_and_remap(user, item, t, label, features, len(user_map), len(item_map),
                          source=str(path), name=name or path.stem)


def sort_and_remap(user: np.ndarray, item: np.ndarray, t: np.ndarray, label: np.ndarray,
                   features: np.ndarray, n_users: int, n_items: int, *, source: str,
                   name: str, warn: bool = True) -> Interactions:
    """Stable-sort events by time and renumber users and items by first appearance."""
    out_of_order = int(np.count_nonzero(t[1:] < np.maximum.accumulate(t)[:-1])) if len(t) else 0
    if out_of_order:
        if warn:
            warnings.warn(f"{source}: {out_of_order} events were out of time order; sorted them "
                          "by timestamp (stable: equal timestamps keep file order)",
                          DataOrderWarning, stacklevel=3)
        order = np.argsort(t, kind="stable")
        user, item, t, label = user[order], item[order], t[order], label[order]
        if features.shape[1]:
            features = features[order]
        else:
            features = np.zeros((len(t), 0), np.float32)
    user = renumber(user, n_users)
    item = renumber(item, n_items)
    return Interactions.from_arrays(user, item, t, label, features, n_users=n_users,
                                    n_items=n_items, name=name)


def renumber(ids: np.ndarray, n: int) -> np.ndarray:
    """Renumber ids in ``[0, n)`` by first appearance; ids that never occur come last, in order."""
    present, first = np.unique(ids, return_index=True)
    if len(present) == n and np.all(first[1:] > first[:-1]):
        return ids.astype(np.int32)
    new = np.empty(n, np.int64)
    new[present[np.argsort(first, kind="stable")]] = np.arange(len(present))
    absent = np.setdiff1d(np.arange(n), present)
    new[absent] = np.arange(len(present), n)
    return new[ids].astype(np.int32)


# -- writing ------------------------------------------------------------------------------------

def _digits(values: np.ndarray, width: int | None = None) -> np.ndarray:
    """Non-negative integers as right-aligned ASCII digits, leading positions 0 (dropped later)."""
    top = int(values.max()) if len(values) else 0
    width = width or max(1, len(str(top)))
    powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    digits = (values[:, None] // powers) % 10 + 48
    keep = values[:, None] >= powers
    keep[:, -1] = True
    return np.where(keep, digits, 0).astype(np.uint8)


def _column(rows: int, byte: int) -> np.ndarray:
    return np.full((rows, 1), byte, np.uint8)


def write_jodie_csv(stream: Interactions, path: str | Path, *, decimals: int = 4) -> None:
    """Write a stream as a JODIE CSV (features with ``decimals`` digits after the point).

    Timestamps are written exactly (as integers when they all are). The file is written through
    a temporary name and renamed, so a reader never sees half a file.
    """
    path = Path(path)
    _n, nfeat = len(stream), stream.n_features
    header = "user_id,item_id,timestamp,state_label" + "".join(f",f{k + 1}" for k in range(nfeat))
    integral = bool(np.all(stream.t == np.round(stream.t))) and (
        len(stream) == 0 or float(np.abs(stream.t).max()) < 2**53)
    scale = 10**decimals
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        _write_rows(stream, tmp, header, integral, scale, decimals)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_rows(stream: Interactions, tmp: Path, header: str, integral: bool, scale: int,
                decimals: int) -> None:
    n, nfeat = len(stream), stream.n_features
    with open(tmp, "wb") as fh:
        fh.write(header.encode() + b"\n")
        rows = max(1, (1 << 23) // (8 * (nfeat + 4)))
        for lo in range(0, n, rows):
            part = stream[lo : lo + rows]
            m = len(part)
            cols = [_digits(part.user.astype(np.int64)), _column(m, 44),
                    _digits(part.item.astype(np.int64)), _column(m, 44)]
            if integral:
                tt = part.t.astype(np.int64)
                cols += [np.where(tt < 0, 45, 0).astype(np.uint8)[:, None], _digits(np.abs(tt))]
            else:
                cols.append(np.array([repr(float(x)).encode() for x in part.t]).view(
                    np.uint8).reshape(m, -1))
            cols += [_column(m, 44), (part.label.astype(np.uint8) + 48)[:, None]]
            if nfeat:
                q = np.rint(part.features.astype(np.float64) * scale).astype(np.int64)
                sign = np.where(q < 0, 45, 0).astype(np.uint8)
                q = np.abs(q)
                whole = q // scale
                wwidth = max(1, len(str(int(whole.max()))))
                for k in range(nfeat):
                    cols += [_column(m, 44), sign[:, k : k + 1], _digits(whole[:, k], wwidth)]
                    if decimals:
                        cols += [_column(m, 46), _digits(q[:, k] % scale + scale)[:, 1:]]
            cols.append(_column(m, 10))
            block = np.concatenate(cols, axis=1)
            fh.write(block[block != 0].tobytes())


if sys.platform == "win32":  # pragma: no cover - no fork there
    _PARALLEL_BYTES = 1 << 62
