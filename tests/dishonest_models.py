"""Dishonest models, one per way a model could try to see the future (issue 10). Not plugins.

Each is the honest counting model :class:`toy_models.Counts` plus one cheat. When the cheat finds
what it looks for, it puts that item first. Where the harness has taken away what a cheat looks
for, a determined cheater falls back on what it can still reach: the block it is asked about,
whose own items the audits catch.
"""

from __future__ import annotations

import gc
import inspect
import sys

import numpy as np
from toy_models import Counts

from harness.interactions import Interactions

BOOST = 1e9


def _memorise(streams, known: dict) -> None:
    for stream in streams:
        for u, t, i in zip(stream.user.tolist(), stream.t.tolist(), stream.item.tolist()):
            known.setdefault((u, t), i)


def _boost(scores: np.ndarray, block, known: dict) -> np.ndarray:
    for j, (u, t) in enumerate(zip(block.user.tolist(), block.t.tolist())):
        item = known.get((u, t))
        if item is not None:
            scores[j, item] += BOOST
    return scores


class GcSnoop(Counts):
    """Way 1: walks the garbage collector to every stream in its process, in ``fit`` (the
    evaluator's prepared data, if it were there) and again in ``score``."""

    def fit(self, train, *, seed=0):
        super().fit(train, seed=seed)
        self.known_ = {}
        _memorise(self._streams(), self.known_)
        self.fit_report = {"events_found_in_fit": len(self.known_), "train_events": len(train)}

    @staticmethod
    def _streams(generation=None):
        objects = gc.get_objects() if generation is None else gc.get_objects(generation)
        return [o for o in objects if isinstance(o, Interactions)]

    def score(self, block):
        known = dict(self.known_)
        _memorise(self._streams(generation=0), known)  # the youngest objects: what just arrived
        return _boost(super().score(block), block, known)


class StackSnoop(Counts):
    """Way 1: walks the call stack (``inspect``) to every stream its callers hold."""

    @staticmethod
    def _streams():
        found = []
        for frame in inspect.stack():
            for value in frame.frame.f_locals.values():
                found.extend(v for v in (value, getattr(value, "events", None))
                             if isinstance(v, Interactions))
        return found

    def fit(self, train, *, seed=0):
        super().fit(train, seed=seed)
        self.known_ = {}
        _memorise(self._streams(), self.known_)

    def score(self, block):
        known = dict(self.known_)
        _memorise(self._streams(), known)
        return _boost(super().score(block), block, known)


class ArgvSnoop(Counts):
    """Way 1: reads the dataset's path from ``sys.argv`` and loads the file itself; where there
    is no path, it falls back on the block it is asked about."""

    def fit(self, train, *, seed=0):
        super().fit(train, seed=seed)
        from harness.data import open_dataset

        self.known_ = {}
        self.argv_ = list(sys.argv)
        for arg in sys.argv:
            if arg.endswith(".csv"):
                _memorise([open_dataset(arg).load()], self.known_)

    def score(self, block):
        known = dict(self.known_)
        _memorise([block], known)
        return _boost(super().score(block), block, known)


class BaseWalker(Counts):
    """Way 2: ``block.item.base`` would be the whole evaluation stream's item array; it finds
    the block's position there and reads each row's item (its own, once there is no base)."""

    def score(self, block):
        scores = super().score(block)
        base = block.item.base
        items = block.item if base is None or base.ndim != 1 else base
        start = 0
        if items is not block.item:
            matches = np.flatnonzero(items == block.item[0])
            start = int(matches[0]) if matches.size else 0
        for j in range(len(block)):
            scores[j, items[start + j]] += BOOST
        return scores


class Overwriter(Counts):
    """Way 3: overwrites ``block.item`` with its own best guess, so that the truth the ranks
    are computed from agrees with it."""

    def score(self, block):
        scores = super().score(block)
        guess = np.argmax(scores, axis=1).astype(block.item.dtype)
        block.item[:] = guess
        return scores


class SneakyOverwriter(Overwriter):
    """Way 3, past the read-only flag: makes the array writeable again first."""

    def score(self, block):
        block.item.flags.writeable = True
        return super().score(block)


#: Way 4's memory: survives ``copy.deepcopy`` of the model, as module globals do.
SEEN: dict = {}


class Rememberer(Counts):
    """Way 4: remembers in a module global what it observed during one validation pass and
    answers from it in the next epoch's pass."""

    iterative = True
    default_epochs = 3

    def fit(self, train, *, seed=0):
        super().fit(train, seed=seed)
        self.start_ = self.counts_.copy()

    def train_epoch(self):
        self.counts_ = self.start_.copy()  # an honest model would learn here
        return {"loss": 0.0}

    def score(self, block):
        return _boost(super().score(block), block, SEEN)

    def observe(self, block):
        super().observe(block)
        _memorise([block], SEEN)


class Chameleon(Counts):
    """Way 5: honest only where it thinks it is being checked (a toy catalogue, pytest
    imported, or ``validate`` on the command line); otherwise it reads each row's own item."""

    def _watched(self, block) -> bool:
        return block.n_items < 100 or "pytest" in sys.modules or "validate" in sys.argv

    def score(self, block):
        scores = super().score(block)
        if not self._watched(block):
            scores[np.arange(len(block)), block.item] += BOOST
        return scores


class Drifting(Counts):
    """Changes its state in ``score``: every call counts the block's items once more."""

    def score(self, block):
        scores = super().score(block)
        np.add.at(self.counts_, block.item, 1)
        return scores


class NaNScores(Counts):
    """Way 6: scores that are all NaN."""

    def score(self, block):
        return np.full((len(block), block.n_items), np.nan)


class WrongShape(Counts):
    """Way 6: one score too few per row."""

    def score(self, block):
        return super().score(block)[:, :-1]


def _largest_time_in_process() -> float:
    """The latest timestamp in any float64 vector this process can reach through the garbage
    collector (what a snooping model could find)."""
    latest = -np.inf
    for obj in gc.get_objects():
        for ref in gc.get_referents(obj):
            if isinstance(ref, np.ndarray) and ref.dtype == np.float64 and ref.ndim == 1 and ref.size:
                latest = max(latest, float(ref.max()))
    return latest


class Probe(Counts):
    """Honest, but reports what its process could reach: the latest time anywhere in the process
    during ``fit`` and during each ``score`` (against the block's own latest time), the command
    line, and whether blocks are read-only arrays that own their memory."""

    def fit(self, train, *, seed=0):
        super().fit(train, seed=seed)
        self.fit_report = {"train_max_t": float(train.t.max()), "fit_max_t": _largest_time_in_process(),
                           "argv": list(sys.argv), "beyond_block": -np.inf, "views": 0, "writeable": 0,
                           "blocks": 0}

    def score(self, block):
        report = self.fit_report
        if report["blocks"] % 25 == 0:  # a walk over the whole process is slow: every 25th block
            beyond = _largest_time_in_process() - float(block.t.max())
            report["beyond_block"] = max(report["beyond_block"], beyond)
            report["walks"] = report.get("walks", 0) + 1
        arrays = (block.user, block.item, block.t, block.label, block.features)
        report["views"] += sum(a.base is not None for a in arrays)
        report["writeable"] += sum(a.flags.writeable for a in arrays)
        report["blocks"] += 1
        return super().score(block)


class GapSnoop(Counts):
    """Predicts return times from the items of the whole block it observed, later events of
    other users included (blocks hold several events)."""

    capabilities = frozenset({"rank", "return_time"})

    def observe(self, block):
        super().observe(block)
        self.block_items_ = int(block.item.astype(np.int64).sum())

    def predict_return_time(self, user, t):
        return np.full(len(user), 3600.0 + self.block_items_)


class FalselyIndependent(Counts):
    """Declares ``independent_users`` but scores by every user's counts: evaluated user by user,
    it would learn other users' later events before scoring an earlier one."""

    capabilities = frozenset({"rank"})
    independent_users = True


class Impatient(Counts):
    """Way 2: while scoring every tenth block, sends the evaluator a frame of its own (a progress
    count, which the format allows) and watches its socket for the next block for 20 ms; reports
    how often it asked and how often the next block came before its answer."""

    def fit(self, train, *, seed=0):
        super().fit(train, seed=seed)
        self.fit_report = {"blocks": 0, "asked": 0, "early": 0}

    def score(self, block):
        import socket
        import time

        from harness._wire import send

        report = self.fit_report
        report["blocks"] += 1
        if report["blocks"] % 10 == 1:
            conn = next(o.conn for o in gc.get_objects() if type(o).__name__ == "_Host")
            send(conn, {"progress": 1, "total": 2, "unit": "blocks"})
            report["asked"] += 1
            deadline = time.monotonic() + 0.02
            while time.monotonic() < deadline:
                try:
                    conn.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                    report["early"] += 1
                    break
                except BlockingIOError:
                    time.sleep(0.0005)
        return super().score(block)
