"""Confidence intervals and paired tests from the per-event outcomes that run records keep.

What a record keeps (``record["outcomes"]``, test split only), grouped by user (users ascending,
each user's events in stream order):

- ``rank``: per ranked event the best and worst rank of its true item. Every rank metric under
  the record's tie policy follows from them exactly (:func:`harness.metrics.reciprocal_ranks`,
  :func:`harness.metrics.hits`).
- ``state``: per event its label and the dense rank of its predicted probability among the
  split's predictions (AUC depends on the order of the scores only, ties included).
- ``return_time``: per return-time query its absolute error in hours.

Each array is stored once, zlib-compressed and base64-encoded; a Wikipedia test split (15,748
events) takes 14-50 KB, 1-3.6 bytes per event (measured in ``benchmarks/RESULTS.md``). Users are
kept as deltas of the sorted ids plus event counts, so the cost per user is about two bytes.

Why users and not events are resampled: a user's events are not independent draws (a user who
repeats an item is ranked well again and again), so resampling events treats a user's thousand
events as a thousand independent observations and gives intervals that are too narrow. The
bootstrap here draws users with replacement and keeps each drawn user's events together (a
cluster bootstrap); a metric that is a mean over events becomes a ratio of sums over the drawn
users. The paired test draws the same users for both models, so it compares them on the same
events and removes the variance the two share.
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.errors import HarnessError
from harness.metrics import hits, reciprocal_ranks

__all__ = [
    "LEVEL",
    "OUTCOMES_FORMAT",
    "Outcomes",
    "bootstrap",
    "has_outcomes",
    "interval",
    "kind_of",
    "outcome_table",
    "pack",
    "paired_p",
    "point",
    "unpack",
]

OUTCOMES_FORMAT = 1
LEVEL = 0.95
#: Which outcome kind each metric is computed from.
_KIND = {"auc": "state", "mae": "return_time"}


def pack(values: np.ndarray) -> dict[str, Any]:
    """A JSON-ready, compressed copy of a 1-D array (little-endian bytes, zlib, base64)."""
    values = np.ascontiguousarray(values)
    dtype = values.dtype.newbyteorder("<")
    raw = zlib.compress(values.astype(dtype, copy=False).tobytes(), 6)
    return {"dtype": dtype.str, "n": int(values.size), "zlib_base64": base64.b64encode(raw).decode()}


def unpack(packed: Mapping[str, Any]) -> np.ndarray:
    """The array :func:`pack` stored."""
    try:
        raw = zlib.decompress(base64.b64decode(packed["zlib_base64"]))
        values = np.frombuffer(raw, dtype=np.dtype(packed["dtype"]))
    except (KeyError, TypeError, ValueError, zlib.error) as exc:
        raise HarnessError(f"a packed outcome array is unreadable ({exc}); rerun the run") from exc
    if values.size != packed["n"]:
        raise HarnessError(f"a packed outcome array holds {values.size} values, not {packed['n']}; "
                           "rerun the run")
    return values


def outcome_table(user: np.ndarray, index: np.ndarray, columns: Mapping[str, np.ndarray]
                  ) -> dict[str, Any]:
    """The stored form of one outcome kind: ``columns`` (one value per event) grouped by user.

    ``index`` is each event's position in the whole stream; the fingerprint hashes the events'
    positions and users, so two records hold outcomes of the same events exactly when their
    fingerprints are equal.
    """
    user = np.asarray(user, np.int64)
    index = np.asarray(index, np.int64)
    order = np.lexsort((index, user))
    users, counts = np.unique(user[order], return_counts=True)
    digest = hashlib.sha256(index[order].astype("<i8").tobytes() + user[order].astype("<i8").tobytes())
    return {
        "events": int(len(user)),
        "fingerprint": digest.hexdigest()[:16],
        "user_deltas": pack(np.diff(users, prepend=0).astype(np.int32)),
        "counts": pack(counts.astype(np.int32)),
        **{name: pack(np.asarray(col)[order]) for name, col in columns.items()},
    }


@dataclass(frozen=True)
class Outcomes:
    """One record's outcomes of one kind: per-user event ``counts`` and per-event ``columns``."""

    fingerprint: str
    counts: np.ndarray
    columns: dict[str, np.ndarray]

    @classmethod
    def from_record(cls, record: Mapping[str, Any], kind: str) -> Outcomes | None:
        """The outcomes of ``kind`` (``rank``, ``state``, ``return_time``), or None when the
        record has none (an older record, or a model without that capability)."""
        stored = (record.get("outcomes") or {})
        if stored.get("format") != OUTCOMES_FORMAT or kind not in stored:
            return None
        table = stored[kind]
        columns = {k: unpack(v) for k, v in table.items()
                   if isinstance(v, dict) and k not in ("user_deltas", "counts")}
        return cls(table["fingerprint"], unpack(table["counts"]).astype(np.int64), columns)

    @property
    def users(self) -> int:
        return len(self.counts)


def has_outcomes(metric: str) -> bool:
    """Whether a run record's outcomes determine ``metric`` (THRNN's return-time MAE, with its
    own gap filters, is not among them)."""
    name = metric.partition("@")[0]
    return metric in _KIND or name in ("mrr", "recall")


def kind_of(metric: str) -> str:
    """The outcome kind a metric is computed from."""
    return _KIND.get(metric, "rank")


def _per_event(metric: str, out: Outcomes) -> np.ndarray:
    if metric == "mae":
        return out.columns["abs_error_hours"].astype(np.float64)
    best = out.columns["best"].astype(np.float64)
    worst = best + out.columns["ties"]
    name, _, k = metric.partition("@")
    if name == "mrr":
        return reciprocal_ranks(best, worst, int(k) if k else None)
    if name == "recall":
        return hits(best, worst, int(k))
    raise HarnessError(f"no bootstrap for metric {metric!r}")


def _weighted_auc(labels: np.ndarray, ranks: np.ndarray, weights: np.ndarray) -> float:
    """AUC with event weights (a bootstrap resample's multiplicities), ties counting one half."""
    neg = np.bincount(ranks, weights * (labels == 0), minlength=int(ranks.max()) + 1)
    below = np.cumsum(neg) - neg
    pos = labels == 1
    n_pos, n_neg = float(weights[pos].sum()), float(neg.sum())
    if n_pos == 0 or n_neg == 0:
        return np.nan
    return float((weights[pos] * (below[ranks[pos]] + 0.5 * neg[ranks[pos]])).sum() / (n_pos * n_neg))


def _prepared(metric: str, out: Outcomes) -> tuple[np.ndarray, ...]:
    """What each resample needs of a run: per-user sums of the metric's per-event values (or,
    for AUC, the events' labels and score ranks)."""
    if metric == "auc":
        return out.columns["label"], out.columns["score_rank"].astype(np.int64)
    starts = np.r_[0, np.cumsum(out.counts)[:-1]]
    return np.add.reduceat(_per_event(metric, out), starts), out.counts.astype(np.float64)


def _replicates(metric: str, runs: Sequence[tuple[Outcomes, tuple[np.ndarray, ...]]],
                weights: np.ndarray) -> np.ndarray:
    """The metric on each resample (rows of user ``weights``), averaged over ``runs`` (seeds)."""
    total = np.zeros(len(weights))
    for out, prepared in runs:
        if metric == "auc":
            labels, ranks = prepared
            total += [_weighted_auc(labels, ranks, np.repeat(w, out.counts)) for w in weights]
        else:
            sums, counts = prepared
            # einsum, not a BLAS product: BLAS threads crawl on a busy machine at this size.
            total += np.einsum("bu,u->b", weights, sums) / np.einsum("bu,u->b", weights, counts)
    return total / len(runs)


def point(metric: str, runs: Sequence[Outcomes]) -> float:
    """The metric from the outcomes themselves (every user once), averaged over runs."""
    prepared = [(out, _prepared(metric, out)) for out in runs]
    return float(_replicates(metric, prepared, np.ones((1, runs[0].users)))[0])


def _resamples(n_users: int, n_resamples: int, seed: int, chunk: int = 256) -> Iterator[np.ndarray]:
    """Multiplicities of each user in each resample (users drawn with replacement), in chunks."""
    rng = np.random.default_rng(seed)
    for start in range(0, n_resamples, chunk):
        rows = min(chunk, n_resamples - start)
        draws = rng.integers(0, n_users, size=(rows, n_users)) + n_users * np.arange(rows)[:, None]
        yield np.bincount(draws.ravel(), minlength=rows * n_users).reshape(rows, n_users).astype(
            np.float64)


def bootstrap(metric: str, groups: Mapping[Any, Sequence[Outcomes]], *, n_resamples: int = 2000,
              seed: int = 0) -> dict[Any, np.ndarray]:
    """Bootstrap replicates of ``metric`` for every group of runs (a leaderboard row: its seeds),
    all over the same resamples of users, so that replicates of two groups are paired.

    Every run of every group must hold outcomes of the same events (equal fingerprints).
    """
    runs = [out for group in groups.values() for out in group]
    if not runs:
        return {}
    prints = {out.fingerprint for out in runs}
    if len(prints) != 1:
        raise HarnessError(f"outcomes of different events cannot be paired (fingerprints {sorted(prints)})")
    prepared = {key: [(out, _prepared(metric, out)) for out in group] for key, group in groups.items()}
    parts: dict[Any, list[np.ndarray]] = {key: [] for key in groups}
    for weights in _resamples(runs[0].users, n_resamples, seed):
        for key, group in prepared.items():
            parts[key].append(_replicates(metric, group, weights))
    return {key: np.concatenate(chunks) for key, chunks in parts.items()}


def interval(replicates: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates (resamples where the metric is undefined,
    such as AUC without a positive, are left out)."""
    tail = 100 * (1 - level) / 2
    lo, hi = np.nanpercentile(replicates, [tail, 100 - tail])
    return float(lo), float(hi)


def paired_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided p-value of the paired bootstrap test that ``a`` and ``b`` (replicates over the
    same resamples) have equal metrics: twice the share of resamples on the far side of zero.
    ``p < 1 - level`` when the percentile interval of the difference excludes zero (up to how
    percentiles interpolate between replicates)."""
    diff = a - b
    diff = diff[~np.isnan(diff)]
    if diff.size == 0:
        return float("nan")
    return float(min(1.0, 2 * min(np.mean(diff <= 0), np.mean(diff >= 0))))
