"""Popularity-based negative sampling, as GRU4Rec's official code draws its shared negatives."""

from __future__ import annotations

import numpy as np

__all__ = ["PopularitySampler"]


class PopularitySampler:
    """Draws items with probability ``count ** alpha`` (items with count 0 are never drawn).

    ``counts`` are raw training counts per item; ``alpha`` is GRU4Rec's ``sample_alpha`` (0
    draws uniformly from the items seen, 1 by raw popularity). Picklable.
    """

    def __init__(self, counts: np.ndarray, alpha: float) -> None:
        counts = np.asarray(counts, dtype=np.float64)
        weights = np.where(counts > 0, counts, 0.0) ** alpha * (counts > 0)
        total = weights.sum()
        self.n_items = int(counts.size)
        self.cdf = np.cumsum(weights / total) if total > 0 else np.zeros(counts.size)

    @property
    def empty(self) -> bool:
        """True when no item can be drawn (no item has a count)."""
        return not (self.cdf.size and self.cdf[-1] > 0)

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` item ids (int64), drawn with replacement, in ascending order."""
        # Sorted keys make the search faster; the order of shared negatives is irrelevant.
        u = np.sort(rng.random(n)) * self.cdf[-1]
        return np.minimum(np.searchsorted(self.cdf, u, side="right"), self.n_items - 1)
