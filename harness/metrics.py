"""Metrics as pure functions and as :class:`~harness.api.Metric` classes.

Ranking metrics take the true item's rank as a pair ``(best, worst)``: the 1-based ranks it would
get if every tie were broken in its favour or against it. The ``average`` tie policy reports the
exact expectation of each metric under uniformly random tie-breaking (``best < worst``); the
``optimistic`` and ``pessimistic`` policies pass ``best == worst``. Empty inputs and AUC without
both classes are errors, never a silent 0 or 0.5.
"""

from __future__ import annotations

import numpy as np
from scipy.special import digamma
from scipy.stats import rankdata

from harness.api import Metric

__all__ = [
    "AUC",
    "MAE",
    "MRR",
    "TIE_POLICIES",
    "Recall",
    "auc",
    "first_bad_row",
    "hits",
    "mae",
    "mae_by_bin",
    "mrr",
    "rank_bounds",
    "recall",
    "reciprocal_ranks",
    "thrnn_return_mae",
]

TIE_POLICIES = ("average", "optimistic", "pessimistic")


_RANK_CHUNK = 65536  # elements compared per step of rank_bounds


def rank_bounds(
    scores: np.ndarray, targets: np.ndarray, tie_policy: str = "average", rows: np.ndarray | None = None,
    *, finite: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Best and worst 1-based rank of ``targets[j]`` in row ``j`` of ``scores`` (higher is better),
    or in row ``rows[j]`` when ``rows`` (row indices) is given.

    ``optimistic`` returns ``(best, best)``, ``pessimistic`` ``(worst, worst)``, ``average`` both.
    NaN scores are an error; ``finite`` says the caller has checked that there are none.
    """
    if tie_policy not in TIE_POLICIES:
        raise ValueError(f"tie_policy must be one of {TIE_POLICIES}, but got {tie_policy!r}")
    scores = np.asarray(scores)
    n, m = len(targets), scores.shape[1]
    picked = np.arange(n) if rows is None else rows
    if not finite:
        bad = first_bad_row(scores if rows is None else scores[rows], nan_only=True)
        if bad is not None:
            raise ValueError(f"the model returned NaN scores (first in block row {int(picked[bad])})")
    true = scores[picked, targets]
    # Compare a few rows at a time through one small buffer that stays in cache: over 94k items
    # this is about 4x faster than whole-block comparisons, which allocate and sweep memory.
    step = max(1, _RANK_CHUNK // max(m, 1))
    buf = np.empty((min(step, n), m), dtype=bool)
    greater = np.empty(n, dtype=np.intp)
    ties = np.empty(n, dtype=np.intp) if tie_policy != "optimistic" else None
    for a in range(0, n, step):
        b = min(a + step, n)
        if b == a + 1:  # a view of one row, counted without an axis (numpy's fast path)
            part, axis = scores[picked[a]:picked[a] + 1], None
        else:
            part, axis = (scores[a:b] if rows is None else scores[rows[a:b]]), 1
        view, t = buf[: b - a], true[a:b, None]
        np.greater(part, t, out=view)
        greater[a:b] = np.count_nonzero(view, axis=axis)
        if ties is not None:
            np.equal(part, t, out=view)
            ties[a:b] = np.count_nonzero(view, axis=axis)
    best = greater + 1
    if ties is None:
        return best, best
    worst = greater + ties
    if tie_policy == "pessimistic":
        return worst, worst
    return best, worst


def first_bad_row(scores: np.ndarray, nan_only: bool = False) -> int | None:
    """The first row of ``scores`` that holds NaN (or, unless ``nan_only``, infinity), if any.

    A row's sum is finite unless the row holds NaN or infinity, or overflows; a NaN sum needs a
    NaN or both infinities. Only rows whose sum says so are looked at element by element."""
    with np.errstate(invalid="ignore", over="ignore"):
        sums = np.add.reduce(scores, axis=1)
    for row in np.flatnonzero(np.isnan(sums) if nan_only else ~np.isfinite(sums)):
        values = scores[row]
        if (np.isnan(values) if nan_only else ~np.isfinite(values)).any():
            return int(row)
    return None


def _bounds(best, worst) -> tuple[np.ndarray, np.ndarray]:
    best = np.asarray(best, dtype=np.float64)
    worst = best if worst is None else np.asarray(worst, dtype=np.float64)
    if best.size == 0:
        raise ValueError("no ranks to average: the evaluation produced no queries")
    if np.any(best < 1) or np.any(worst < best):
        raise ValueError("ranks must satisfy 1 <= best <= worst")
    return best, worst


def _harmonic(n: np.ndarray) -> np.ndarray:
    """H(n) = 1 + 1/2 + ... + 1/n, with H(0) = 0."""
    return np.where(n > 0, digamma(n + 1.0) + np.euler_gamma, 0.0)


def reciprocal_ranks(best, worst=None, k: int | None = None) -> np.ndarray:
    """Per query: the reciprocal rank (0 beyond ``k``), expected over tie-breaking."""
    best, worst = _bounds(best, worst)
    top = worst if k is None else np.minimum(worst, k)
    hit = top >= best
    total = np.where(hit, _harmonic(top) - _harmonic(best - 1), 0.0)
    # Harmonic differences lose precision for large ranks; the exact reciprocal is cheap there.
    single = best == worst
    total = np.where(single, np.where(hit, 1.0 / best, 0.0), total)
    return total / (worst - best + 1)


def hits(best, worst=None, k: int = 10) -> np.ndarray:
    """Per query: the probability that the true item ranks within the top ``k`` (over
    tie-breaking)."""
    best, worst = _bounds(best, worst)
    inside = np.clip(np.minimum(worst, k) - best + 1, 0, None)
    return inside / (worst - best + 1)


def mrr(best, worst=None, k: int | None = None) -> float:
    """Mean reciprocal rank (reciprocal rank counts 0 beyond ``k``), expected over tie-breaking."""
    return float(np.mean(reciprocal_ranks(best, worst, k)))


def recall(best, worst=None, k: int = 10) -> float:
    """Share of queries whose true item ranks within the top ``k`` (expected over tie-breaking)."""
    return float(np.mean(hits(best, worst, k)))


def auc(labels, scores) -> float:
    """Area under the ROC curve (ties count one half), via the Mann-Whitney statistic."""
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.shape != scores.shape:
        raise ValueError(f"labels and scores differ in shape: {labels.shape} vs {scores.shape}")
    positives = int((labels == 1).sum())
    negatives = int((labels == 0).sum())
    if positives + negatives != labels.size:
        raise ValueError("AUC labels must be 0 or 1")
    if positives == 0 or negatives == 0:
        raise ValueError(
            f"AUC needs both classes, but got {positives} positives and {negatives} negatives"
        )
    if np.isnan(scores).any():
        raise ValueError("AUC scores contain NaN")
    ranks = rankdata(scores)
    return float((ranks[labels == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def mae(true, predicted) -> float:
    """Mean absolute error."""
    true = np.asarray(true, dtype=np.float64)
    predicted = np.asarray(predicted, dtype=np.float64)
    if true.size == 0:
        raise ValueError("no predictions to average: the evaluation produced no return-time queries")
    if true.shape != predicted.shape:
        raise ValueError(f"true and predicted differ in shape: {true.shape} vs {predicted.shape}")
    if not np.isfinite(predicted).all():
        raise ValueError("predicted values contain NaN or infinity")
    return float(np.mean(np.abs(true - predicted)))


def mae_by_bin(true, predicted, edges) -> dict[str, dict[str, float]]:
    """MAE per bin of the true value: ``{"[lo, hi)": {"mae": ..., "count": ...}}``; empty bins
    are left out."""
    true = np.asarray(true, dtype=np.float64)
    predicted = np.asarray(predicted, dtype=np.float64)
    out: dict[str, dict[str, float]] = {}
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (true >= lo) & (true < hi)
        if inside.any():
            out[f"[{lo:g}, {hi:g})"] = {
                "mae": mae(true[inside], predicted[inside]),
                "count": int(inside.sum()),
            }
    return out


def thrnn_return_mae(true, predicted, *, min_gap: float, max_gap: float,
                     edges=()) -> dict[str, object]:
    """Return-time MAE as the THRNN authors' tester reports it, on start-to-start gaps.

    A query whose true gap is below ``min_gap`` falls in their lowest bucket and counts in no
    total. A true gap of ``max_gap`` or more is compressed to ``max_gap`` and falls in their last
    bucket, which the headline total leaves out. Returns ``mae_thrnn`` (the headline: true gaps
    in ``[min_gap, max_gap)``), ``mae_thrnn_with_compressed`` (the compressed ones too),
    ``mae_thrnn_by_gap`` (per bucket: ``[0, min_gap)``, ``[min_gap, e1)``, ... ``[max_gap, inf)``
    with inner ``edges`` between the two, each with ``mae`` and ``count``; empty buckets left
    out) and ``queries`` (``kept``, ``below_min``, ``compressed``). A total with no query is
    left out rather than reported as 0. Units are the caller's (the harness passes hours).
    """
    true = np.asarray(true, dtype=np.float64)
    predicted = np.asarray(predicted, dtype=np.float64)
    if true.shape != predicted.shape:
        raise ValueError(f"true and predicted differ in shape: {true.shape} vs {predicted.shape}")
    if not min_gap < max_gap:
        raise ValueError(f"`min_gap < max_gap` must hold, but got {min_gap=}, {max_gap=}")
    compressed = true >= max_gap
    below = true < min_gap
    kept = ~below & ~compressed
    target = np.minimum(true, max_gap)
    inner = [e for e in edges if min_gap < e < max_gap]
    out: dict[str, object] = {
        "queries": {"kept": int(kept.sum()), "below_min": int(below.sum()),
                    "compressed": int(compressed.sum())},
        "mae_thrnn_by_gap": mae_by_bin(target, predicted, [0.0, min_gap, *inner, max_gap, np.inf]),
    }
    if kept.any():
        out["mae_thrnn"] = mae(target[kept], predicted[kept])
    if (kept | compressed).any():
        out["mae_thrnn_with_compressed"] = mae(target[~below], predicted[~below])
    return out


class _Accumulating(Metric):
    """Keeps the arrays of every update and computes on the concatenation."""

    def reset(self) -> None:
        self._parts: list[tuple[np.ndarray, ...]] = []

    def update(self, *arrays: np.ndarray) -> None:
        self._parts.append(tuple(np.asarray(a) for a in arrays))

    def _columns(self) -> list[np.ndarray]:
        if not self._parts:
            raise ValueError(f"{self.name}: compute() called before any update()")
        return [np.concatenate(col) for col in zip(*self._parts)]


class MRR(_Accumulating):
    """Mean reciprocal rank; ``update(best, worst)`` or ``update(ranks)``."""

    needs = "rank"

    def compute(self) -> float:
        best, *worst = self._columns()
        return mrr(best, worst[0] if worst else None, k=self.k)


class Recall(_Accumulating):
    """Recall@k (``k`` defaults to 10); ``update(best, worst)`` or ``update(ranks)``."""

    needs = "rank"

    def __init__(self, k: int | None = 10) -> None:
        super().__init__(k=10 if k is None else k)

    def compute(self) -> float:
        best, *worst = self._columns()
        return recall(best, worst[0] if worst else None, k=self.k or 10)


class AUC(_Accumulating):
    """ROC AUC of state-change probabilities; ``update(labels, scores)``."""

    needs = "state"

    def compute(self) -> float:
        return auc(*self._columns())


class MAE(_Accumulating):
    """Mean absolute error of return times; ``update(true, predicted)``."""

    needs = "return_time"
    higher_is_better = False

    def compute(self) -> float:
        return mae(*self._columns())
