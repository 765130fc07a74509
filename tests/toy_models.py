"""Small models for testing the evaluator and the conformance suite (not plugins)."""

from __future__ import annotations

import json
import time

import numpy as np

import harness.api
from harness.api import Model, progress


class Counts(Model):
    """Popularity so far, written plainly; exact for blocks by counting earlier block events."""

    capabilities = frozenset({"rank", "state"})
    supports_blocks = True

    def __init__(self, *, prior: float = 0.0) -> None:
        self.prior = prior

    def fit(self, train, *, seed=0):
        self.counts_ = np.bincount(train.item, minlength=train.n_items).astype(float) + self.prior

    def score(self, block):
        scores = np.tile(self.counts_, (len(block), 1))
        for j in range(1, len(block)):
            scores[j:, block.item[j - 1]] += 1
        return scores

    def observe(self, block):
        np.add.at(self.counts_, block.item, 1)

    def predict_state(self, block):
        return 1.0 / (1.0 + self.counts_[block.item])


class Peeking(Counts):
    """Cheats: puts the true item first. The conformance suite must catch it."""

    def score(self, block):
        scores = super().score(block)
        scores[np.arange(len(block)), block.item] += 1e9
        return scores


class Recorder(Model):
    """Scores every item alike. With ``log`` set it appends every call it gets to that file, one
    JSON line each, from whichever process makes the call, so tests can see what it was shown."""

    capabilities = frozenset({"rank"})
    supports_blocks = True

    def __init__(self, *, log: str | None = None) -> None:
        self.log = log

    def _write(self, kind, stream):
        if self.log:
            with open(self.log, "a") as out:
                out.write(json.dumps([kind, stream.t.tolist(), stream.user.tolist()]) + "\n")

    def fit(self, train, *, seed=0):
        self._write("fit", train)

    def score(self, block):
        self._write("score", block)
        return np.zeros((len(block), block.n_items))

    def observe(self, block):
        self._write("observe", block)


def read_log(path) -> list[tuple[str, list[float], list[int]]]:
    """The calls a :class:`Recorder` wrote."""
    return [tuple(json.loads(line)) for line in open(path)]


class Scripted(Counts):
    """An iterative model whose quality per epoch follows a script: at epoch ``e`` it scores
    ``script[e-1] * popularity`` (1 good, 0 all tied, -1 bad)."""

    capabilities = frozenset({"rank"})
    iterative = True
    default_epochs = 3

    def __init__(self, *, script: tuple = (0, 1, -1, -1, -1, -1, -1), prior: float = 0.0,
                 pause: float = 0.0) -> None:
        self.script = script
        self.prior = prior
        self.pause = pause  # seconds per "batch" of train_epoch

    def fit(self, train, *, seed=0):
        super().fit(train, seed=seed)
        self.epoch_ = 0

    def train_epoch(self):
        self.epoch_ += 1
        for _ in progress(range(4)):  # four "batches", counted for the progress bar
            time.sleep(self.pause)
        return {"loss": 1.0 / self.epoch_}

    def score(self, block):
        return self.script[self.epoch_ - 1] * super().score(block)


class Miscounting(Scripted):
    """Sends the evaluator a count that no :func:`harness.api.progress` would send."""

    def train_epoch(self):
        hook = harness.api._progress_hook
        if hook is not None:
            hook(-1, None, "batch")
        return super().train_epoch()


class ConstantReturn(Model):
    """Predicts the same return time for everyone."""

    capabilities = frozenset({"return_time"})

    def __init__(self, *, hours: float = 5.0) -> None:
        self.hours = hours

    def fit(self, train, *, seed=0):
        pass

    def predict_return_time(self, user, t):
        return np.full(len(user), self.hours * 3600.0)


class Thrnn(ConstantReturn):
    """A stand-in for THRNN in grid tests: a return time that depends on ``alpha``."""

    def __init__(self, *, hours: float = 5.0, alpha: float = 1.0) -> None:
        self.hours = hours
        self.alpha = alpha

    def predict_return_time(self, user, t):
        return np.full(len(user), self.hours * self.alpha * 3600.0)


class SummaryProbe(Counts):
    """Reports in ``fit_report`` the whole-stream summary it was handed before ``fit`` (if any)."""

    def use_stream_summary(self, summary):
        self.summary_ = summary

    def fit(self, train, *, seed=0):
        super().fit(train, seed=seed)
        self.fit_report = {"summary": getattr(self, "summary_", None), "train_events": len(train)}
