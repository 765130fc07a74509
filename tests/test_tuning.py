"""harness tune and harness grid: trial accounting, resume, parallel workers, pruning, best params."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from harness.api import Model


class Tilted(Model):
    """Popularity scaled by ``quality - decay * (epoch - 1)``: negative quality ranks popular
    items last (a bad region of the search space), and ``decay`` makes later epochs worse."""

    capabilities: ClassVar[frozenset[str]] = frozenset({"rank"})
    supports_blocks: ClassVar[bool] = True
    iterative: ClassVar[bool] = True
    default_epochs: ClassVar[int] = 3

    def __init__(self, *, quality: float = 1.0, decay: float = 0.0) -> None:
        self.quality = quality
        self.decay = decay

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        return {"quality": trial.suggest_float("quality", -1.0, 1.0),
                "decay": trial.suggest_float("decay", 0.0, 0.5)}

    def fit(self, train, *, seed=0):
        self.counts_ = np.bincount(train.item, minlength=train.n_items).astype(float)
        self.epoch_ = 0

    def train_epoch(self):
        self.epoch_ += 1
        return {"loss": 1.0 / self.epoch_}

    def score(self, block):
        scores = np.tile(self.counts_, (len(block), 1))
        for j in range(1, len(block)):
            scores[j:, block.item[j - 1]] += 1
        return (self.quality - self.decay * (self.epoch_ - 1)) * scores

    def observe(self, block):
        np.add.at(self.counts_, block.item, 1)
