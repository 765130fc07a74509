"""A complete third-party model plugin: predict that each user repeats their last item."""

from __future__ import annotations

import numpy as np

from harness.api import Model


class LastItem(Model):
    """Scores 1 for the user's most recent item, 0 for every other item (ties stay ties)."""

    capabilities = frozenset({"rank"})
    supports_blocks = True  # users are distinct within a block, so rows are independent

    def __init__(self, *, weight: float = 1.0) -> None:
        self.weight = weight  # constructor: store keywords, nothing else

    def fit(self, train, *, seed=0):
        self.last_ = np.full(train.n_users, -1)
        self.last_[train.user] = train.item  # later events overwrite earlier ones

    def score(self, block):
        scores = np.zeros((len(block), block.n_items))
        known = self.last_[block.user] >= 0
        scores[np.flatnonzero(known), self.last_[block.user][known]] = self.weight
        return scores

    def observe(self, block):
        self.last_[block.user] = block.item

    @classmethod
    def search_space(cls, trial):
        return {"weight": trial.suggest_float("weight", 0.5, 2.0)}
