"""The three counting baselines.

All three are exact under the streaming protocol: every observed event updates them, and
:meth:`score` on a block gives row ``j`` exactly what scoring event ``j`` alone would give after
observing events ``0..j-1``. Scores are plain numbers; tied items get exactly equal scores, so the
evaluator's tie policy decides their ranks (items never seen, or never touched by the user, are
all tied at the lowest score, 0).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from harness.api import Model
from harness.errors import UsageError
from harness.interactions import Interactions

__all__ = ["Frequency", "Popularity", "Recency"]


class _Counting(Model):
    """Shared checks of the three baselines (no parameters, nothing to tune)."""

    capabilities: ClassVar[frozenset[str]] = frozenset({"rank"})
    supports_blocks: ClassVar[bool] = True
    iterative: ClassVar[bool] = False

    def __init__(self) -> None:
        pass

    def _check_block(self, block: Interactions, what: str) -> None:
        n_items = getattr(self, "n_items_", None)
        if n_items is None:
            raise UsageError(
                f"{type(self).__name__} is not fitted; call fit(train) before {what}()"
            )
        if len(block) and (int(block.item.max()) >= n_items or int(block.item.min()) < 0):
            raise UsageError(
                f"{type(self).__name__}.{what}: item ids must lie in [0, {n_items}) as in the "
                f"training stream, but the block has {int(block.item.min())}.."
                f"{int(block.item.max())}; build train and evaluation from one stream"
            )
        if len(block) and int(block.user.min()) < 0:
            raise UsageError(
                f"{type(self).__name__}.{what}: user ids must be >= 0, "
                f"but the block has {int(block.user.min())}"
            )


class Popularity(_Counting):
    """Score of an item = number of events of that item so far, over all users.

    ``fit`` counts the training events; ``observe`` adds every evaluation event.
    """

    def fit(self, train: Interactions, *, seed: int = 0) -> None:
        self.n_items_ = int(train.n_items)
        self.counts_ = np.bincount(train.item, minlength=self.n_items_).astype(np.float64)

    def score(self, block: Interactions) -> np.ndarray:
        self._check_block(block, "score")
        n = len(block)
        scores = np.empty((n, self.n_items_), dtype=np.float64)
        scores[:] = self.counts_
        if n > 1:
            # Row j also counts the block's events 0..j-1: a running count over the few items
            # the block touches.
            earlier = block.item[:-1]
            cols, inverse = np.unique(earlier, return_inverse=True)
            increments = np.zeros((n, len(cols)), dtype=np.float64)
            np.add.at(increments, (np.arange(1, n), inverse), 1.0)
            scores[:, cols] += np.cumsum(increments, axis=0)
        return scores

    def observe(self, block: Interactions) -> None:
        self._check_block(block, "observe")
        self.counts_ += np.bincount(block.item, minlength=self.n_items_)


class _PerUser(_Counting):
    """A per-user sparse store ``user -> {item: value}`` that scores a block as dense rows.

    Only (user, item) pairs that occurred are stored, so memory follows the number of distinct
    pairs, not ``n_users * n_items``.
    """

    def fit(self, train: Interactions, *, seed: int = 0) -> None:
        self.n_items_ = int(train.n_items)
        self.table_: dict[int, dict[int, float]] = {}
        self._start()
        self._add(train.user, train.item, train.t)

    def _start(self) -> None:
        """Reset any extra state before the training events are added."""

    def _add(self, users: np.ndarray, items: np.ndarray, times: np.ndarray) -> None:
        raise NotImplementedError

    def _row_values(self, values: np.ndarray, block: Interactions) -> np.ndarray:
        """Map stored values to scores (all >= 1, so that untouched items at 0 are lowest)."""
        return values

    def _earlier(self, scores: np.ndarray, j: int, i: int, block: Interactions) -> None:
        """Apply the block's earlier event ``i`` of the same user to row ``j``."""
        raise NotImplementedError

    def score(self, block: Interactions) -> np.ndarray:
        self._check_block(block, "score")
        n = len(block)
        scores = np.zeros((n, self.n_items_), dtype=np.float64)
        rows, cols, vals = [], [], []
        table = self.table_
        for j, user in enumerate(block.user.tolist()):
            seen = table.get(user)
            if seen:
                k = len(seen)
                rows.append(np.full(k, j, dtype=np.int64))
                cols.append(np.fromiter(seen.keys(), dtype=np.int64, count=k))
                vals.append(np.fromiter(seen.values(), dtype=np.float64, count=k))
        if rows:
            scores[np.concatenate(rows), np.concatenate(cols)] = self._row_values(
                np.concatenate(vals), block
            )
        if n > 1 and len(np.unique(block.user)) < n:
            # A block never repeats a user under the block contract; one-event-at-a-time
            # semantics still hold if a caller passes one that does.
            users = block.user
            for j in range(1, n):
                for i in np.flatnonzero(users[:j] == users[j]).tolist():
                    self._earlier(scores, j, i, block)
        return scores

    def observe(self, block: Interactions) -> None:
        self._check_block(block, "observe")
        self._add(block.user, block.item, block.t)


class Frequency(_PerUser):
    """Score of an item for a user = number of that user's events with the item so far.

    Items the user never touched score 0 (tied, lowest); a cold user gets an all-zero row.
    """

    def _add(self, users: np.ndarray, items: np.ndarray, times: np.ndarray) -> None:
        if len(users) == 0:
            return
        keys = users.astype(np.int64) * self.n_items_ + items
        pairs, counts = np.unique(keys, return_counts=True)
        table = self.table_
        for key, count in zip(pairs.tolist(), counts.tolist(), strict=True):
            user, item = divmod(key, self.n_items_)
            seen = table.setdefault(user, {})
            seen[item] = seen.get(item, 0.0) + count

    def _earlier(self, scores: np.ndarray, j: int, i: int, block: Interactions) -> None:
        scores[j, block.item[i]] += 1.0


class Recency(_PerUser):
    """Score of an item for a user = time of the user's most recent event with the item.

    Reported as ``t_last - t_floor + 1``, where ``t_floor`` is the earliest timestamp the model
    has stored: a shift by a constant, so it orders items exactly as ``t_last`` does, keeps every
    touched item at a score >= 1 whatever the sign or origin of the timestamps, and leaves items
    the user never touched at 0 (tied, lowest). Items last touched at the same instant tie.
    """

    def _start(self) -> None:
        self.t_floor_ = np.inf

    def _add(self, users: np.ndarray, items: np.ndarray, times: np.ndarray) -> None:
        if len(users) == 0:
            return
        self.t_floor_ = min(self.t_floor_, float(times.min()))
        keys = users.astype(np.int64) * self.n_items_ + items
        # The last occurrence of each pair carries its latest time (events are in time order).
        pairs, first_in_reversed = np.unique(keys[::-1], return_index=True)
        last_times = times[::-1][first_in_reversed]
        table = self.table_
        for key, t in zip(pairs.tolist(), last_times.tolist(), strict=True):
            user, item = divmod(key, self.n_items_)
            seen = table.setdefault(user, {})
            previous = seen.get(item)
            seen[item] = t if previous is None else max(previous, t)

    def _floor(self, block: Interactions) -> float:
        # Stored times are all >= t_floor_; with nothing stored yet, only the block's own
        # events (at or after its first time) can enter a row.
        if np.isfinite(self.t_floor_) or not len(block):
            return float(self.t_floor_)
        return float(block.t[0])

    def _row_values(self, values: np.ndarray, block: Interactions) -> np.ndarray:
        return values - self._floor(block) + 1.0

    def _earlier(self, scores: np.ndarray, j: int, i: int, block: Interactions) -> None:
        value = float(block.t[i]) - self._floor(block) + 1.0
        scores[j, block.item[i]] = max(scores[j, block.item[i]], value)
