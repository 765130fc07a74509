"""The evaluator: it owns time, feeds models events in order and turns predictions into metrics.

Protocols (see DESIGN.md):

- ``streaming``: JODIE's next-item experiment. Index split 80/10/10; every valid and test event
  is ranked over all items before the model observes it. State-change AUC is reported too when
  the model predicts states and the split holds both classes.
- ``state``: JODIE's state-change experiment. Index split 60/20/20; AUC of the probability of
  label 1 from the state after each event.
- ``sessions``: THRNN's protocol. Each user's events are sessionized; per user the last 20% of
  sessions are test and the 10% before them valid. Next item within sessions (every event but a
  session's first) and the return time from the end of each visit to the user's next one.
  ``Protocol("sessions", preset="thrnn")`` is the THRNN authors' setting (:mod:`harness.presets`):
  their preprocessing, a per-user 80/20 split with no validation part, and their return-time MAE.

A protocol with ``valid=0`` trains for the requested epochs with no selection and tests the last
one. ``refit=True`` selects the epoch count on validation, then fits a fresh copy of the model on
train + valid for that many epochs and tests it (the validation figures are those of the
selection run).

Iterative models are validated after every epoch on a copy; the test metrics are those of the
best validation epoch. Valid and test events are streamed in one time-ordered pass, so a model
keeps the state it built on valid events when it reaches test events.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from harness._wire import SHARED_MIN
from harness.api import Model
from harness.checkpoints import Checkpoint
from harness.errors import HarnessError, UsageError
from harness.interactions import Interactions
from harness.metrics import (
    TIE_POLICIES,
    auc,
    first_bad_row,
    mae,
    mae_by_bin,
    mrr,
    rank_bounds,
    recall,
    thrnn_return_mae,
)
from harness.sandbox import LocalModel, ModelError, ModelProcess, ModelRef, Step, placement

__all__ = [
    "AUDIT_COUNTS",
    "PROTOCOLS",
    "AuditFailure",
    "Evaluation",
    "Protocol",
    "check_compatible",
    "evaluate",
    "iter_blocks",
    "prepare",
    "preset_session_gap",
    "replay",
    "stream_summary",
]

PROTOCOLS = ("streaming", "state", "sessions")
#: Return-time bins in hours, centred on whole days as in THRNN's Figure 3.
GAP_BINS_HOURS = (0.0, 12.0, 36.0, 60.0, 84.0, 108.0, 132.0, 156.0, 180.0, math.inf)
#: Inner bucket edges (hours) of THRNN's return-time table (the authors' tester); the buckets
#: below ``min_return_gap`` and from ``max_return_gap`` on are reported apart.
THRNN_GAP_EDGES_HOURS = (2.0, 12.0, *(36.0 + 24.0 * k for k in range(12)), 348.0, 396.0, 444.0)
def preset_session_gap(preset: str | None, dataset: str) -> float | None:
    """The session gap (seconds) a preset uses on ``dataset``, or None when it sets none.

    THRNN's code uses 30 min on LastFM and 1 h on Reddit (its paper's text says the reverse):
    datasets whose name starts with ``reddit`` get 1 h, every other dataset 30 min.
    """
    if preset != "thrnn":
        return None
    return 3600.0 if Path(dataset).name.lower().startswith("reddit") else 1800.0
_NEEDS = {"streaming": ("rank",), "state": ("state",), "sessions": ("rank", "return_time")}
_VALID, _TEST = 1, 2


@dataclass(frozen=True)
class Protocol:
    """Everything about how a model is evaluated, recorded with every run.

    Sessions settings (see :func:`harness.data.sessionize`): ``session_gap`` (seconds),
    ``max_session_length`` (parts), ``min_session_length``, ``max_visit_length`` (sessions outside
    are dropped), ``drop_single_tail`` and ``min_user_sessions``. ``valid`` may be 0 (no
    selection; the last epoch is tested); ``refit`` retrains on train + valid for the selected
    epoch count. ``min_return_gap`` (seconds; None: not computed) turns on THRNN's return-time
    figures, with gaps from ``max_return_gap`` on compressed. ``preset`` (:mod:`harness.presets`)
    fills every field left None and sets the protocol's name; its settings of fields that have a
    default (``tie_policy``, ``stream_summary``) are the command line's to apply. After
    construction every field holds its resolved value.
    """

    name: str = "streaming"
    train: float | None = None
    valid: float | None = None
    test: float | None = None
    tie_policy: str = "average"
    ks: tuple[int, ...] = (1, 5, 10, 20)
    session_gap: float | None = None
    max_session_length: int = 20
    patience: int = 5
    max_block: int = 1024
    audits: int = 16
    preset: str | None = None
    min_session_length: int | None = None
    max_visit_length: int | None = None
    drop_single_tail: bool | None = None
    min_user_sessions: int | None = None
    refit: bool = False
    min_return_gap: float | None = None
    max_return_gap: float | None = None
    #: Hand models aggregate statistics of the whole stream, evaluation part included (see
    #: :meth:`harness.api.Model.use_stream_summary`): the JODIE paper's preset only.
    stream_summary: bool = False

    def __post_init__(self) -> None:
        if self.preset is not None:
            from harness.presets import get_preset

            for key, value in get_preset(self.preset).protocol.items():
                if key == "name" and self.name not in (value, "streaming"):
                    raise UsageError(f"preset {self.preset!r} is a {value!r} protocol, but the "
                                     f"protocol is {self.name!r}; leave out --protocol")
                if key == "name" or getattr(self, key) is None:
                    object.__setattr__(self, key, value)
            if self.min_return_gap is None and self.session_gap is not None:
                object.__setattr__(self, "min_return_gap", float(self.session_gap))
        if self.name not in PROTOCOLS:
            raise UsageError(f"protocol must be one of {PROTOCOLS}, but got {self.name!r}")
        if self.tie_policy not in TIE_POLICIES:
            raise UsageError(f"tie policy must be one of {TIE_POLICIES}, got {self.tie_policy!r}")
        defaults = {"streaming": (0.8, 0.1, 0.1), "state": (0.6, 0.2, 0.2),
                    "sessions": (0.7, 0.1, 0.2)}[self.name]
        train, valid, test = (default if given is None else given
                              for given, default in zip((self.train, self.valid, self.test), defaults))
        if self.name == "sessions":
            train = round(1.0 - valid - test, 10)  # every session is in one part
        if self.audits < 0:
            raise UsageError(f"audits must be >= 0, but got {self.audits}")
        if min(train, test) <= 0 or valid < 0 or train + valid + test > 1 + 1e-9:
            raise UsageError(
                "split fractions must be positive (valid may be 0) and sum to at most 1, but got "
                f"train={train}, valid={valid}, test={test}"
            )
        if self.refit and valid <= 0:
            raise UsageError("refit chooses the epoch count on validation, so it needs a "
                             f"validation part, but valid={valid}; pass --split TRAIN,VALID,TEST")
        for attr, value in zip(("train", "valid", "test"), (train, valid, test)):
            object.__setattr__(self, attr, value)
        unset: dict[str, Any] = {"min_session_length": 1,
                                 "max_visit_length": 2 * self.max_session_length,
                                 "drop_single_tail": False, "min_user_sessions": 1,
                                 "max_return_gap": 500 * 3600.0}
        for key, value in unset.items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, value)
        for key in ("max_session_length", "min_session_length", "max_visit_length",
                    "min_user_sessions"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"{key} must be an integer >= 1, but got {value!r}")
        for key in ("session_gap", "min_return_gap", "max_return_gap"):
            value = getattr(self, key)
            if value is not None and not (isinstance(value, (int, float)) and 0 < value < math.inf):
                raise UsageError(f"{key} must be a positive number of seconds, but got {value!r}")
        if self.min_return_gap is not None and self.min_return_gap >= (self.max_return_gap or 0):
            raise UsageError("`min_return_gap < max_return_gap` must hold, but got "
                             f"min_return_gap={self.min_return_gap}, "
                             f"max_return_gap={self.max_return_gap}")

    @property
    def fractions(self) -> tuple[float, float, float]:
        """The train, valid and test fractions (set by the constructor)."""
        assert self.train is not None and self.valid is not None and self.test is not None
        return self.train, self.valid, self.test

    @property
    def selection_metric(self) -> str:
        """The validation metric that picks the best epoch (``mae``, or ``mae_thrnn`` when the
        THRNN figure is computed, for return-time-only models on the sessions protocol)."""
        return {"streaming": "mrr", "state": "auc", "sessions": "recall@20"}[self.name]

    @property
    def return_selection_metric(self) -> str:
        """The validation metric of return-time-only models (lower is better)."""
        return "mae" if self.min_return_gap is None else "mae_thrnn"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ks"] = list(self.ks)
        return out


@dataclass
class Prepared:
    """A stream cut for one protocol: training events, evaluation events and their targets."""

    train: Interactions
    events: Interactions  # valid and test events in time order
    split: np.ndarray  # 1 valid, 2 test, per event of ``events``
    ranked: np.ndarray  # bool: the event is a next-item query
    gap: np.ndarray  # seconds to the user's next visit when the event ends a visit, else NaN
    index: np.ndarray  # position of each evaluation event in the whole (sessionized) stream
    summary: dict[str, Any] = field(default_factory=dict)  # stream_summary() of the whole stream
    span: np.ndarray | None = None  # seconds from the visit's start to its end, where gap is set
    refit: Prepared | None = None  # train + valid as training, test events (protocol.refit)

    def counts(self) -> dict[str, int]:
        """What the protocol kept of the stream (after sessions and their filters)."""
        users = np.union1d(self.train.user, self.events.user)
        out = {"users": int(users.size), "events": len(self.train) + len(self.events),
               "train_events": len(self.train), "valid_events": int((self.split == _VALID).sum()),
               "test_events": int((self.split == _TEST).sum())}
        if self.train.session is not None and self.events.session is not None:
            out["sessions"] = int(np.union1d(self.train.session, self.events.session).size)
        return out


@dataclass
class Evaluation:
    """What :func:`evaluate` measured: metrics per split, the per-epoch curve and timings."""

    metrics: dict[str, dict[str, Any]]
    epochs: list[dict[str, Any]]
    best_epoch: int | None
    timing: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    model_report: dict[str, Any] | None = None
    audit: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    #: Per-event outcomes of the test split, for confidence intervals (see :mod:`harness.stats`).
    outcomes: dict[str, Any] = field(default_factory=dict)
    #: What the model was handed of the whole stream (``protocol.stream_summary`` only).
    stream_summary: dict[str, Any] | None = None


def check_compatible(model: type[Model] | Iterable[str], protocol: str, name: str | None = None) -> None:
    """Raise a clear error before any work when a model (its class, or its capabilities) cannot be
    evaluated on ``protocol``."""
    caps = set(model.capabilities) if isinstance(model, type) else set(model)
    name = name or (model.__name__ if isinstance(model, type) else "the model")
    needs = _NEEDS[protocol]
    if not set(needs) & caps:
        declared = ", ".join(sorted(caps)) or "nothing"
        fits = [p for p, n in _NEEDS.items() if set(n) & caps]
        hint = f"; use --protocol {' or '.join(fits)}" if fits else ""
        raise UsageError(
            f"model {name!r} cannot run the {protocol!r} protocol: it needs capability "
            f"{' or '.join(repr(n) for n in needs)}, and {name} declares {declared}{hint}"
        )


def prepare(stream: Interactions, protocol: Protocol) -> Prepared:
    """Cut ``stream`` into the protocol's training and evaluation parts."""
    from harness.data.sessions import sessionize
    from harness.data.splits import index_split, session_split

    if protocol.name == "sessions":
        if stream.session is None:
            stream = sessionize(
                stream, gap=protocol.session_gap or 3600.0, max_length=protocol.max_session_length,
                min_length=protocol.min_session_length or 1,
                max_visit_length=protocol.max_visit_length,
                drop_single_tail=bool(protocol.drop_single_tail),
                min_user_sessions=protocol.min_user_sessions or 1,
            )
        _, valid, test = protocol.fractions
        codes = session_split(stream, test=test, valid=valid)
    else:
        codes = index_split(len(stream), *protocol.fractions)
    codes = np.asarray(codes)
    needed = (0, _VALID, _TEST) if protocol.fractions[1] > 0 else (0, _TEST)
    if not all((codes == code).any() for code in needed):
        raise UsageError(
            f"the {protocol.name} split of {stream.name!r} ({len(stream)} events) leaves no "
            "training, validation or test events; use a larger dataset or other --split fractions"
        )
    ranked = np.ones(len(stream), bool)
    gap = np.full(len(stream), np.nan)
    span = None
    if protocol.name == "sessions":
        ranked, gap, span = _session_targets(stream)

    summary = stream_summary(stream)

    def cut(train: np.ndarray, evaluated: np.ndarray) -> Prepared:
        idx = np.flatnonzero(evaluated)
        return Prepared(train=stream[train], events=stream[idx], split=codes[idx].astype(np.int8),
                        ranked=ranked[idx], gap=gap[idx], index=idx,
                        span=None if span is None else span[idx], summary=summary)

    data = cut(codes == 0, codes >= _VALID)
    if protocol.refit:
        data.refit = cut((codes == 0) | (codes == _VALID), codes == _TEST)
    return data


def _moments(x: np.ndarray) -> dict[str, float]:
    return {"count": int(x.size), "mean": float(x.mean()) if x.size else 0.0,
            "std": float(x.std()) if x.size else 0.0}


def stream_summary(stream: Interactions) -> dict[str, Any]:
    """Aggregate time statistics of a whole stream (never its events): its first and last time,
    and the count, mean and population std of the gaps between consecutive events of a user
    (``user_gap``) and of an item (``item_gap``) and of the offsets ``t - t_start`` of each user's
    and each item's first event (``user_first``, ``item_first``). Any convention for a node's
    first gap follows by pooling, e.g. JODIE's ``t - t0`` pools ``*_gap`` with ``*_first``."""
    t = stream.t
    out: dict[str, Any] = {"events": len(stream), "t_start": float(t[0]) if len(t) else 0.0,
                           "t_end": float(t[-1]) if len(t) else 0.0}
    for name, key in (("user", stream.user), ("item", stream.item)):
        order = np.argsort(key, kind="stable")
        same = key[order][1:] == key[order][:-1]
        gaps = t[order][1:][same] - t[order][:-1][same]
        first = np.r_[True, ~same]
        out[f"{name}_gap"] = _moments(gaps)
        out[f"{name}_first"] = _moments(t[order][first] - out["t_start"])
    return out


def _session_targets(stream: Interactions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which events are within-session queries, and at each visit end the return-time target
    (seconds to the user's next visit) and the visit's span (seconds since its first event)."""
    assert stream.session is not None and stream.visit is not None, "sessionize the stream first"
    n = len(stream)
    order = np.lexsort((np.arange(n), stream.user))  # by user, then time
    user, session, visit, t = (stream.user[order], stream.session[order],
                               stream.visit[order], stream.t[order])
    same_user = np.r_[False, user[1:] == user[:-1]]
    ranked = np.empty(n, bool)
    ranked[order] = same_user & np.r_[False, session[1:] == session[:-1]]
    starts_visit = np.r_[True, visit[1:] != visit[:-1]]
    ends_visit = np.r_[visit[1:] != visit[:-1], True]
    next_is_same_user = np.r_[same_user[1:], False]
    gap_sorted = np.full(n, np.nan)
    has_next = ends_visit & next_is_same_user
    gap_sorted[has_next] = t[1:][has_next[:-1]] - t[has_next]
    start_time = np.maximum.accumulate(np.where(starts_visit, np.arange(n), 0))
    span_sorted = np.where(has_next, t - t[start_time], np.nan)
    gap = np.empty(n)
    gap[order] = gap_sorted
    span = np.empty(n)
    span[order] = span_sorted
    return ranked, gap, span


def iter_blocks(stream: Interactions, max_block: int = 1024) -> Iterator[tuple[int, int]]:
    """Maximal runs ``[start, stop)`` of consecutive events in which no user and no item repeats."""
    users: set[int] = set()
    items: set[int] = set()
    start = 0
    for j, (u, i) in enumerate(zip(stream.user.tolist(), stream.item.tolist())):
        if u in users or i in items or j - start >= max_block:
            yield start, j
            users.clear()
            items.clear()
            start = j
        users.add(u)
        items.add(i)
    if start < len(stream):
        yield start, len(stream)


def by_user(data: Prepared, max_block: int = 1024) -> tuple[Prepared, list[tuple[int, int]]]:
    """``data`` with its evaluation events reordered user by user, and the blocks over them.

    Within each part (valid, test), block ``k`` holds the ``k``-th event of every user who has
    one there (split after ``max_block`` events): each user's events stay in time order and in
    blocks of their own, and the validation pass's events (up to the last validation event) are
    never mixed with the test pass's. Only for models that declare
    ``independent_users``: for them the answers are the same in any order of other users'
    events, and blocks get as large as the number of users."""
    n = len(data.events)
    order = np.arange(n)
    blocks: list[tuple[int, int]] = []
    valid_end = _valid_end(data)
    for start, stop in ((0, valid_end), (valid_end, n)):
        user = data.events.user[start:stop]
        grouped = np.argsort(user, kind="stable")
        first = np.r_[0, np.flatnonzero(np.diff(user[grouped])) + 1]
        lane = np.empty(len(user), np.int64)
        lane[grouped] = np.arange(len(user)) - np.repeat(first, np.diff(np.r_[first, len(user)]))
        order[start:stop] = start + np.argsort(lane, kind="stable")
        lanes = np.sort(lane)
        edges = np.r_[0, np.flatnonzero(np.diff(lanes)) + 1, len(lanes)]
        for a, b in zip(edges[:-1], edges[1:]):
            blocks += [(int(start + c), int(start + min(c + max_block, b))) for c in range(a, b, max_block)]

    def take(array: np.ndarray | None) -> np.ndarray | None:
        return None if array is None else array[order]

    moved = replace(data, events=data.events[order], split=data.split[order],
                    ranked=data.ranked[order], gap=data.gap[order], index=data.index[order],
                    span=take(data.span))
    return moved, blocks


def _valid_end(data: Prepared) -> int:
    """Where the validation pass ends: after the last validation event (0 without one)."""
    in_valid = np.flatnonzero(data.split == _VALID)
    return int(in_valid[-1]) + 1 if in_valid.size else 0


def schedule(data: Prepared, max_block: int, independent_users: bool
             ) -> tuple[Prepared, list[tuple[int, int]]]:
    """The evaluation events and their blocks as a pass feeds them: in time order (the rule
    of :func:`iter_blocks`), or user by user (:func:`by_user`) for models that declare
    ``independent_users``."""
    if independent_users:
        return by_user(data, max_block)
    return data, list(iter_blocks(data.events, max_block))


class AuditFailure(HarnessError):
    """A model's answers broke a rule of the protocol (look-ahead, state change in ``score``,
    non-finite or wrongly shaped predictions): the run is ``failed`` with this reason."""


class _Collector:
    """Predictions gathered during a pass, per split, and what the audits checked."""

    def __init__(self) -> None:
        self.best: list[np.ndarray] = []
        self.worst: list[np.ndarray] = []
        self.rank_split: list[np.ndarray] = []
        self.rank_event: list[tuple[np.ndarray, np.ndarray]] = []  # users and stream positions
        self.state: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.state_event: list[tuple[np.ndarray, np.ndarray]] = []
        self.gaps: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self.gap_event: list[tuple[np.ndarray, np.ndarray]] = []
        self.model_seconds = 0.0
        self.events = 0
        self.audit = dict.fromkeys(AUDIT_COUNTS, 0)

    def extend(self, other: _Collector) -> None:
        for name in ("best", "worst", "rank_split", "rank_event", "state", "state_event", "gaps",
                     "gap_event"):
            getattr(self, name).extend(getattr(other, name))
        self.model_seconds += other.model_seconds
        self.events += other.events
        for key, value in other.audit.items():
            self.audit[key] += value

    def metrics(self, split: int, protocol: Protocol, notes: list[str]) -> dict[str, Any]:
        """The metrics of one split, summed in the stream's event order whatever order the
        pass took (so that a model evaluated user by user gets the same floating-point sums)."""
        out: dict[str, Any] = {}

        def in_order(events: list[tuple[np.ndarray, np.ndarray]], *columns: np.ndarray
                     ) -> list[np.ndarray]:
            order = _event_order(events)
            return [column[order] for column in columns]

        if self.best:
            best, worst, codes = in_order(self.rank_event, np.concatenate(self.best),
                                          np.concatenate(self.worst), np.concatenate(self.rank_split))
            where = codes == split
            best, worst = best[where], worst[where]
            out["queries"] = int(where.sum())
            if where.any():
                out["mrr"] = mrr(best, worst)
                for k in protocol.ks:
                    out[f"recall@{k}"] = recall(best, worst, k)
                    out[f"mrr@{k}"] = mrr(best, worst, k)
        if self.state:
            labels, probs, where = in_order(self.state_event, *(np.concatenate(c) for c in zip(*self.state)))
            labels, probs = labels[where == split], probs[where == split]
            try:
                out["auc"] = auc(labels, probs)
                out["auc_positives"] = int((labels == 1).sum())
                out["auc_events"] = int(labels.size)
            except ValueError as exc:
                notes.append(f"auc not reported for split {_SPLIT_NAMES[split]}: {exc}")
        if self.gaps:
            true, pred, where, span = in_order(self.gap_event, *(np.concatenate(c) for c in zip(*self.gaps)))
            sel = where == split
            true, pred, span = true[sel] / 3600.0, pred[sel] / 3600.0, span[sel] / 3600.0  # hours
            if true.size:
                out["mae"] = mae(true, pred)
                out["mae_by_gap_hours"] = mae_by_bin(true, pred, GAP_BINS_HOURS)
                out["return_time_queries"] = int(true.size)
                if protocol.min_return_gap is not None:
                    assert protocol.max_return_gap is not None
                    thrnn = thrnn_return_mae(span + true, span + pred,
                                             min_gap=protocol.min_return_gap / 3600.0,
                                             max_gap=protocol.max_return_gap / 3600.0,
                                             edges=THRNN_GAP_EDGES_HOURS)
                    out["return_time_thrnn_queries"] = thrnn.pop("queries")
                    out["mae_thrnn_by_gap_hours"] = thrnn.pop("mae_thrnn_by_gap")
                    out.update(thrnn)
        return out

    def outcomes(self, split: int) -> dict[str, Any]:
        """The per-event outcomes of one split that confidence intervals and paired tests need
        (see :mod:`harness.stats`), compact enough for a run record."""
        from harness.stats import OUTCOMES_FORMAT, outcome_table

        def events(parts: list[tuple[np.ndarray, np.ndarray]], where: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
            user, index = (np.concatenate(c) for c in zip(*parts))
            return user[where], index[where]

        out: dict[str, Any] = {"format": OUTCOMES_FORMAT, "split": _SPLIT_NAMES[split], "unit": "user"}
        if self.best:
            where = np.concatenate(self.rank_split) == split
            if where.any():
                best, worst = np.concatenate(self.best)[where], np.concatenate(self.worst)[where]
                out["rank"] = outcome_table(*events(self.rank_event, where), {
                    "best": best.astype(np.int32), "ties": (worst - best).astype(np.int32)})
        if self.state:
            labels, probs, codes = (np.concatenate(c) for c in zip(*self.state))
            where = codes == split
            if len({0, 1} & set(labels[where].tolist())) == 2:
                _, ranks = np.unique(probs[where], return_inverse=True)
                out["state"] = outcome_table(*events(self.state_event, where), {
                    "label": labels[where].astype(np.int8), "score_rank": ranks.astype(np.int32)})
        if self.gaps:
            true, pred, codes, _ = (np.concatenate(c) for c in zip(*self.gaps))
            where = codes == split
            if where.any():
                out["return_time"] = outcome_table(*events(self.gap_event, where), {
                    "abs_error_hours": np.abs(true[where] - pred[where]) / 3600.0})
        return out


def _event_order(events: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """The order that puts answers collected block by block (``(user, index)`` per block) back
    into the stream's event order."""
    return np.argsort(np.concatenate([index for _, index in events]), kind="stable")


_SPLIT_NAMES = {_VALID: "valid", _TEST: "test"}
#: What the audits of a run count: blocks and rows re-scored with their own and later events
#: altered, blocks scored twice, forks of the model's process made for the audits, and (models
#: that declare ``independent_users``) rows answered again by a copy that saw only its user.
AUDIT_COUNTS = ("lookahead_blocks", "lookahead_rows", "twice_blocks", "forks", "own_user_rows")
#: Rows compared per audited block at most (a seeded sample of wider blocks).
AUDIT_ROWS = 16


class _Auditor:
    """Which blocks a pass audits (seeded): ``protocol.audits`` blocks re-scored with their own
    and later events altered, and as many other blocks scored twice."""

    def __init__(self, protocol: Protocol, seed: int, pass_number: int, n_blocks: int,
                 independent_users: bool = False) -> None:
        self.rng = np.random.default_rng([seed, pass_number, 0xA0D17])
        k = min(protocol.audits, n_blocks)
        self.lookahead = set(self.rng.choice(n_blocks, k, replace=False).tolist())
        self.twice = set(self.rng.choice(n_blocks, k, replace=False).tolist())
        #: blocks with a row answered again by a copy that observes only that row's user
        self.own_user = sorted(self.rng.choice(n_blocks, k, replace=False).tolist()) \
            if independent_users else []

    def rows(self, below: int, also: int | None = None) -> list[int]:
        """The rows an audit compares among ``[0, below)``: all of them up to
        :data:`AUDIT_ROWS`, else a seeded sample of that many (with ``also`` among them): over a
        wide catalogue a row is megabytes, and every row of a block is equally a test."""
        if below <= AUDIT_ROWS:
            return list(range(below))
        others = [r for r in range(below) if r != also]
        picked = self.rng.choice(others, AUDIT_ROWS - (also is not None), replace=False).tolist()
        return sorted(picked + ([also] if also is not None else []))


def _altered(block: Interactions, j: int, rng: np.random.Generator, only_label: bool) -> Interactions:
    """``block`` with the label (and unless ``only_label`` the item and features) of events
    ``j`` and later changed; users and times stay, and items stay distinct within the block
    where the catalogue allows it."""
    label = block.label.copy()
    label[j:] = 1 - label[j:]
    if only_label:
        return replace(block, label=label)
    n = len(block) - j
    taken = block.item if block.n_items - len(block) >= n else block.item[:j]
    free = np.setdiff1d(np.arange(block.n_items, dtype=block.item.dtype), taken)
    item = block.item.copy()
    if free.size >= n:
        item[j:] = rng.choice(free, n, replace=False)
    else:  # a block of more events than free items (user by user, items may repeat)
        item[j:] = (item[j:] + rng.integers(1, max(block.n_items, 2), n)) % block.n_items
    features = block.features.copy()
    features[j:] = rng.normal(size=features[j:].shape)
    return replace(block, item=item, label=label, features=features)


def _check_answers(got: Step, block: Interactions, score: bool, state: bool,
                   n_ends: int, index: np.ndarray) -> None:
    """Shapes and finiteness of a step's answers; raise :class:`AuditFailure` with the event."""
    rows = len(block)

    def fail(what: str, bad: np.ndarray | None = None) -> None:
        at = f" at event {int(index[int(np.flatnonzero(bad)[0])]):,}" if bad is not None and bad.any() else \
            f" at event {int(index[0]):,}"
        raise AuditFailure(f"{what}{at}")

    if score:
        scores = got.scores
        if scores is None or scores.shape != (rows, block.n_items):
            shape = None if scores is None else scores.shape
            fail(f"score() returned shape {shape} for a block of {rows} events over "
                 f"{block.n_items} items")
        assert scores is not None
        bad_row = first_bad_row(scores)
        if bad_row is not None:
            fail("score() returned NaN or infinity", np.arange(rows) == bad_row)
    if state:
        probs = got.state
        if probs is None or probs.shape != (rows,):
            fail(f"predict_state() returned shape {None if probs is None else probs.shape} for a "
                 f"block of {rows} events")
        assert probs is not None
        bad = ~np.isfinite(probs) | (probs < 0) | (probs > 1)
        if bad.any():
            fail("predict_state() returned a value that is not a probability in [0, 1]", bad)
    if n_ends:
        gaps = got.gap
        if gaps is None or gaps.shape != (n_ends,):
            fail(f"predict_return_time() returned shape {None if gaps is None else gaps.shape} "
                 f"for {n_ends} users")
        assert gaps is not None
        if not (np.isfinite(gaps).all() and (gaps >= 0).all()):
            fail("predict_return_time() returned a gap that is not finite and >= 0")


def _compare(real: np.ndarray | None, other: np.ndarray | None, index: int, why: str) -> None:
    """Raise :class:`AuditFailure` unless two answers (the same rows of a block) are equal."""
    if real is None or other is None:
        return
    if other.shape != real.shape or not np.array_equal(real, other):
        if other.shape == real.shape:
            diff = float(np.max(np.abs(real.astype(np.float64) - other), initial=0.0))
            detail = f" (largest difference {diff:.3g})"
        else:
            detail = f" (shape {other.shape} against {real.shape})"
        raise AuditFailure(f"{why} at event {index:,}{detail}")


def _stream(
    proc: Any,
    data: Prepared,
    protocol: Protocol,
    capabilities: frozenset[str] | set[str],
    start: int,
    stop: int,
    blocks: list[tuple[int, int]],
    progress: Callable[[int], None] | None,
    auditor: _Auditor | None = None,
    shadow_cpus: set[int] | None = None,
) -> _Collector:
    """Feed events ``[start, stop)`` of ``data.events`` to ``proc`` block by block, auditing the
    pass when an ``auditor`` is given (its shadow runs on ``shadow_cpus``).

    A block goes out as soon as the answer to the one before it is in, and that answer is checked
    and ranked while the model works on the next: never earlier, since a block carries its own
    truth for the model to observe after scoring it.

    Audits never touch the pass's process, so it cannot tell an audited block from another: a
    shadow, forked from it before the first block, observes the same blocks (without scoring
    them: ``score`` must not change a model's state, and the scores would be thrown away) up to
    the last audited block, at idle priority. Before an audited block the shadow forks a copy
    that is asked about the block with its own and later events altered; its answer is compared
    with the pass's answer at the end of the pass, so a row that differs is either look-ahead or
    state that ``score`` changed.
    """
    out = _Collector()
    want_rank = "rank" in capabilities and protocol.name != "state"
    want_state = "state" in capabilities and protocol.name != "sessions"
    want_gap = "return_time" in capabilities and protocol.name == "sessions"
    events = data.events
    clock = time.perf_counter
    todo = [(max(a, start), min(b, stop)) for a, b in blocks if a < stop and b > start]
    shadow = proc.fork() if auditor is not None else None
    if shadow is not None:
        shadow.idle(shadow_cpus or set())
    last_audit = max(auditor.lookahead, default=-1) if auditor is not None else -1
    audits: list[tuple[Step, Any, Any, list[int], int, int]] = []
    own = _own_user_copies(shadow, auditor, events, todo, start) if shadow is not None else {}
    out.audit["forks"] += len({id(c) for cs in own.values() for c in cs})
    if want_rank and todo:
        largest = max(b - a for a, b in todo) * events.n_items * 8
        if largest >= SHARED_MIN:
            proc.share_answers(largest)
    pending: tuple[int, int, int, bool, np.ndarray | None, Any, Any] | None = None

    def settle_block(got: Step, k: int, a: int, b: int, score: bool, ends: np.ndarray | None,
                     first_scores: tuple[list[int], np.ndarray] | None, audit: Any) -> None:
        block, index, ranked = events[a:b], data.index[a:b], data.ranked[a:b]
        for check in own.get(k, ()):
            if check.target == k:
                check.keep(got)
        n_ends = int(ends.sum()) if ends is not None else 0
        _check_answers(got, block, score, want_state, n_ends, index)
        if first_scores is not None:
            twice_rows, first = first_scores
            assert got.scores is not None
            _compare(got.scores[twice_rows], first, int(index[0]),
                     "score() changed the model's state: scoring the same block twice gave "
                     "different rows, block starting")
            out.audit["twice_blocks"] += 1
        if audit is not None:  # what the comparison needs, out of the memory reused next block
            rows, gaps_before = audit[2], audit[3]
            kept = Step(None if got.scores is None else got.scores[rows],
                        None if got.state is None else got.state[rows],
                        None if got.gap is None else got.gap[:gaps_before].copy())
            audits.append((kept, *audit, int(index[rows[-1]])))
        if score:
            assert got.scores is not None
            rows = None if ranked.all() else np.flatnonzero(ranked)
            best, worst = rank_bounds(got.scores, block.item[ranked], protocol.tie_policy, rows,
                                      finite=True)  # _check_answers has checked
            out.best.append(best)
            out.worst.append(worst)
            out.rank_split.append(data.split[a:b][ranked])
            out.rank_event.append((block.user[ranked], index[ranked]))
        if want_state:
            assert got.state is not None
            out.state.append((block.label, got.state.astype(np.float64), data.split[a:b]))
            out.state_event.append((block.user, index))
        if n_ends:
            assert ends is not None and got.gap is not None
            span = data.span[a:b][ends] if data.span is not None else np.zeros(n_ends)
            out.gaps.append((data.gap[a:b][ends], got.gap.astype(np.float64), data.split[a:b][ends],
                             span))
            out.gap_event.append((block.user[ends], index[ends]))
        out.events += b - a
        if progress is not None:
            progress(b - a)

    def collect() -> Step:
        tic = clock()
        got = proc.answer(reuse=True)  # valid until the next collect(): settled before it
        out.model_seconds += clock() - tic
        return got

    for k, (a, b) in enumerate(todo):
        block = events[a:b]
        score = want_rank and bool(data.ranked[a:b].any())
        ends = ~np.isnan(data.gap[a:b]) if want_gap else None
        n_ends = int(ends.sum()) if ends is not None else 0
        lookahead: tuple[int, list[int], Interactions, Interactions | None] | None = None
        if shadow is not None and auditor is not None and k in auditor.lookahead \
                and (score or want_state or n_ends):
            j = int(auditor.rng.integers(b - a))
            rows = auditor.rows(j + 1, also=j)
            lookahead = (j, rows, _altered(block, j, auditor.rng, False),
                         _altered(block, j, auditor.rng, True) if want_state else None)
        twice_rows = auditor.rows(b - a) if score and auditor and k in auditor.twice else None
        tic = clock()
        if pending is not None and twice_rows is None:  # goes the moment answer k - 1 is in
            proc.step(block, score=score, state=want_state, ends=ends, answer_later=True,
                      after_answer=True)
        got = proc.answer(reuse=True) if pending is not None else None  # valid until the next
        first_scores: tuple[list[int], np.ndarray] | None = None
        if twice_rows is not None:
            first_scores = (twice_rows, proc.score(block, rows=twice_rows))
        if pending is None or twice_rows is not None:
            proc.step(block, score=score, state=want_state, ends=ends, answer_later=True)
        out.model_seconds += clock() - tic
        # the shadow and its copies get block k only now that the pass has it
        audit: tuple[Any, Any, list[int], int] | None = None
        if lookahead is not None and shadow is not None:
            j, rows, altered_block, relabelled_block = lookahead
            altered = shadow.fork(wait=False)
            altered.step(altered_block, score=score, state=want_state, ends=ends,
                         answer_later=True, rows=rows)
            altered.release()
            relabelled = None
            if relabelled_block is not None:
                relabelled = shadow.fork(wait=False)
                relabelled.step(relabelled_block, score=score, state=True, answer_later=True, rows=rows)
                relabelled.release()
            out.audit["forks"] += 1 + (relabelled is not None)
            gaps_before = int((np.flatnonzero(ends) < j).sum()) if ends is not None else 0
            audit = (altered, relabelled, rows, gaps_before)
        if shadow is not None and k < last_audit:  # never ahead of the pass
            shadow.step(block, score=False, state=want_state, ends=ends, reply=False)
        for check in own.get(k, ()):
            check.feed(k, events, a, score, want_state, ends)
        if pending is not None:
            assert got is not None
            settle_block(got, *pending)
        pending = (k, a, b, score, ends, first_scores, audit)
    if pending is not None:
        settle_block(collect(), *pending)
    if shadow is not None:
        out.audit["forks"] += 1
        _settle(shadow, audits, own, data.index, out)
    return out


class _OwnUserCheck:
    """A copy of the pass at its start that observes only one user's events of the pass and
    answers about one of them again (models that declare ``independent_users``)."""

    def __init__(self, copy: Any, target: int, row: int, at: dict[int, int]) -> None:
        self.copy, self.target, self.row, self.at = copy, target, row, at
        self.got: Step | None = None  # the pass's answer for this user's row
        self.event = -1
        self.gap_row: int | None = None

    def feed(self, k: int, events: Interactions, a: int, score: bool, state: bool,
             ends: np.ndarray | None) -> None:
        """Block ``k`` of the pass (just sent to the pass): this user's row of it, if any."""
        p = self.at[k]
        row_ends = ends[p - a:p - a + 1] if ends is not None else None
        if k < self.target:
            self.copy.step(events[p:p + 1], score=False, state=state, ends=row_ends, reply=False)
            return
        self.copy.step(events[p:p + 1], score=score, state=state, ends=row_ends, answer_later=True)
        self.copy.release()
        if ends is not None and ends[p - a]:
            self.gap_row = int(ends[:p - a].sum())

    def keep(self, got: Step) -> None:
        """Keep the pass's answer for this user's row (copied: ``got`` is reused)."""
        i, g = self.row, self.gap_row

        def row(x: np.ndarray | None, at: int | None) -> np.ndarray | None:
            return None if x is None or at is None else x[at:at + 1].copy()

        self.got = Step(row(got.scores, i), row(got.state, i), row(got.gap, g))

    def compare(self, index: np.ndarray) -> None:
        assert self.got is not None
        event = int(index[self.at[self.target]])
        alt = self.copy.answer()
        why = ("not independent of other users: a copy that observed only this user's events "
               "answers differently (the model declares independent_users)")
        got = self.got
        _compare(got.scores, alt.scores, event, why)
        _compare(got.state, alt.state, event, why)
        if self.gap_row is not None:
            _compare(got.gap, alt.gap, event, why)


def _own_user_copies(shadow: Any, auditor: _Auditor | None, events: Interactions,
                     todo: list[tuple[int, int]], start: int) -> dict[int, list[_OwnUserCheck]]:
    """For each of the auditor's ``own_user`` blocks, a copy of the shadow before its first
    block that will be fed one user's rows up to a row of that block; by the blocks it needs."""
    checks: dict[int, list[_OwnUserCheck]] = {}
    if auditor is None or not auditor.own_user:
        return checks
    starts = np.array([a for a, _ in todo])
    for target in auditor.own_user:
        a, b = todo[target]
        row = int(auditor.rng.integers(b - a))
        user = events.user[a + row]
        positions = start + np.flatnonzero(events.user[start:a + row + 1] == user)
        ks = np.searchsorted(starts, positions, side="right") - 1
        at = dict(zip(ks.tolist(), positions.tolist()))
        check = _OwnUserCheck(shadow.fork(wait=False), target, row, at)
        for k in ks.tolist():
            checks.setdefault(k, []).append(check)
    return checks


def _settle(shadow: Any, audits: list[tuple[Step, Any, Any, list[int], int, int]],
            own: dict[int, list[_OwnUserCheck]], index: np.ndarray, out: _Collector) -> None:
    """Compare the audited answers, once the shadow and its copies have given them."""
    checks = list({id(c): c for cs in own.values() for c in cs}.values())
    # the shadow never scored: a difference is look-ahead or state that score() changed
    changed = " (or score() changed the model's state)"
    why = "look-ahead: a score row depends on its own or a later event's item, label or features" + changed
    try:
        shadow.sync()
        for got, altered, relabelled, rows, gaps_before, event in audits:
            alt = altered.answer()
            # rows[-1] is the first altered event: its state may depend on its own item
            _compare(got.scores, alt.scores, event, why)
            _compare(None if got.state is None else got.state[:-1],
                     None if alt.state is None else alt.state[:-1], event,
                     "look-ahead: a state prediction depends on a later event" + changed)
            _compare(got.gap, None if alt.gap is None else alt.gap[:gaps_before], event,
                     "look-ahead: a return time depends on a later event of its block" + changed)
            if relabelled is not None:
                alt = relabelled.answer()
                _compare(got.scores, alt.scores, event, why)
                _compare(got.state, alt.state, event,
                         "look-ahead: a state prediction depends on its own event's label" + changed)
            out.audit["lookahead_blocks"] += 1
            out.audit["lookahead_rows"] += len(rows) if got.scores is not None or got.state is not None \
                else gaps_before
        for check in checks:
            check.compare(index)
            out.audit["own_user_rows"] += 1
    finally:
        for _, altered, relabelled, _, _, _ in audits:
            for clone in (altered, relabelled):
                if clone is not None:
                    clone.close()
        for check in checks:
            check.copy.close()
        shadow.close()


def evaluate(
    model: Model | ModelRef | ModelProcess,
    stream: Interactions | Prepared,
    protocol: Protocol | None = None,
    *,
    epochs: int | None = None,
    seed: int = 0,
    progress: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    threads: int | None = None,
    checkpoint: Checkpoint | None = None,
    resume: bool = False,
) -> Evaluation:
    """Fit a model on the protocol's training part and evaluate it on valid and test.

    The model runs in a process of its own (see :mod:`harness.sandbox`): give a
    :class:`ModelRef` (nothing of the model is imported here), an unfitted model object (its
    class must be importable), or a started :class:`ModelProcess` (left running). Every pass is
    audited. ``on_epoch`` is called with each epoch's record (Optuna uses it to prune).

    With a ``checkpoint``, an iterative model's state is saved there after every epoch; with
    ``resume`` too, the run continues from the saved epoch when there is one (see
    :mod:`harness.checkpoints`).
    """
    if isinstance(model, ModelProcess):
        return _evaluate(model, stream, protocol, epochs, seed, progress, on_epoch, checkpoint, resume)
    if isinstance(model, Model):  # before a process is started for it
        check_compatible(type(model), (protocol or Protocol()).name)
    with ModelProcess.start(model, threads=threads) as proc:
        return _evaluate(proc, stream, protocol, epochs, seed, progress, on_epoch, checkpoint, resume)


def _evaluate(
    proc: ModelProcess,
    stream: Interactions | Prepared,
    protocol: Protocol | None,
    epochs: int | None,
    seed: int,
    progress: bool,
    on_epoch: Callable[[dict[str, Any]], None] | None,
    checkpoint: Checkpoint | None = None,
    resume: bool = False,
) -> Evaluation:
    from harness.progress import RunProgress, number

    protocol = protocol or Protocol()
    meta = proc.meta
    caps = frozenset(meta["capabilities"])
    check_compatible(caps, protocol.name, meta["name"])
    data = stream if isinstance(stream, Prepared) else prepare(stream, protocol)
    if protocol.refit and data.refit is None:
        raise UsageError("the protocol asks for refit, but the prepared data has no refit part; "
                         "prepare it with the same protocol")
    notes: list[str] = []
    max_block = protocol.max_block if meta["supports_blocks"] else 1
    valid_end = _valid_end(data)
    independent = bool(meta.get("independent_users")) and max_block > 1
    data, blocks = schedule(data, max_block, independent)
    if independent:
        notes.append("evaluated user by user (the model declares independent_users): block k "
                     "holds every user's k-th event of the pass; audited by copies that observe "
                     "only their own user's events")
    passes = iter(range(1, 1 << 30))

    def run_pass(probe: ModelProcess, part: Prepared, part_blocks: list[tuple[int, int]],
                 start: int, stop: int, desc: str, number: int | None = None
                 ) -> tuple[_Collector, float]:
        n_blocks = sum(a < stop and b > start for a, b in part_blocks)
        number = next(passes) if number is None else number
        auditor = _Auditor(protocol, seed, number, n_blocks, independent) if protocol.audits else None
        with say.bar(desc, stop - start) as pb, placement(probe) as spare:
            t0 = time.perf_counter()
            collected = _stream(probe, part, protocol, caps, start, stop, part_blocks, pb.update,
                                auditor, spare)
            return collected, time.perf_counter() - t0

    def validate(probe: ModelProcess, number: int | None = None, desc: str = "valid"
                 ) -> tuple[_Collector, float]:
        return run_pass(probe, data, blocks, 0, valid_end, desc, number)

    if not meta["iterative"] or not (epochs or meta["default_epochs"]):
        n_epochs = 0
    else:
        n_epochs = epochs if epochs is not None else meta["default_epochs"]
    saved = checkpoint.load() if checkpoint is not None and resume and n_epochs else None
    epoch_records: list[dict[str, Any]] = []
    fit_samples: list[float] = []
    valid_samples: list[float] = []
    checkpoint_samples: list[float] = []
    best: tuple[float, int, ModelProcess | None, _Collector] | None = None
    best_state: np.ndarray | None = None
    selection = protocol.selection_metric
    if protocol.name == "sessions" and "rank" not in caps:
        selection = protocol.return_selection_metric
    sign = -1.0 if selection.startswith("mae") else 1.0
    handed = data.summary if protocol.stream_summary else None
    pristine = proc.fork() if protocol.refit else None  # never fitted: refit starts from it
    say = RunProgress(meta["name"], seed, n_epochs, enabled=progress)
    try:
        tic = time.perf_counter()
        first_epoch = 1
        if saved is None:
            with say.training("fit") as on_progress:
                proc.fit(data.train, seed=seed, stream_summary=handed, on_progress=on_progress)
        else:  # the best epoch's validation pass is replayed: same pass number, same audits
            header, states = saved
            epoch_records, best_epoch = list(header["epochs"]), int(header["best_epoch"])
            fit_samples = [float(e["fit_seconds"]) for e in epoch_records]
            valid_samples = [float(e["valid_seconds"]) for e in epoch_records if "valid_seconds" in e]
            best_state = states.get("best", states["current"])
            if valid_end:
                proc.restore(best_state)
                probe = proc.fork()
                collected, _ = validate(probe, number=best_epoch)
                best = (float(header["best_value"]), best_epoch, probe, collected)
            else:
                best = (math.nan, best_epoch, None, _Collector())
            proc.restore(states["current"])
            first_epoch = len(epoch_records) + 1
            passes = iter(range(first_epoch, 1 << 30))
            notes.append(f"resumed after epoch {len(epoch_records)} from {checkpoint.path}"
                         if checkpoint is not None else "resumed")
        setup_seconds = time.perf_counter() - tic

        if n_epochs == 0:
            probe = proc.fork()
            collected, seconds = validate(probe) if valid_end else (_Collector(), 0.0)
            valid_samples += [seconds] if valid_end else []
            best = (0.0, 0, probe, collected)
            value = collected.metrics(_VALID, protocol, []).get(selection) if valid_end else None
            say.say(f"fit {setup_seconds:.1f} s · valid {selection} {number(value)} · {seconds:.1f} s")
        stopped = bool(valid_end) and best is not None and first_epoch - 1 - best[1] >= protocol.patience
        for epoch in range(first_epoch, n_epochs + 1):
            if stopped:
                break
            t0 = time.perf_counter()
            with say.training(f"epoch {epoch}/{n_epochs}") as on_progress:
                losses = proc.train_epoch(on_progress)
            fit_samples.append(time.perf_counter() - t0)
            record = {"epoch": epoch, "fit_seconds": fit_samples[-1], "losses": losses}
            if not valid_end:  # nothing to select on: the last epoch is tested
                improved = True
                best = (math.nan, epoch, None, _Collector())
            else:
                probe = proc.fork()  # the pass runs in a copy: nothing it does reaches training
                collected, seconds = validate(probe, desc=f"valid {epoch}/{n_epochs}")
                valid_samples.append(seconds)
                valid_metrics = collected.metrics(_VALID, protocol, [])
                value = valid_metrics.get(selection, math.nan)
                record.update(valid_seconds=seconds, valid=_plain(valid_metrics))
                improved = best is None or (not math.isnan(value)
                                            and (math.isnan(best[0]) or sign * value > sign * best[0]))
                if improved:
                    if best is not None and best[2] is not None:
                        best[2].close()
                    best = (value, epoch, probe, collected)
                else:
                    probe.close()
            epoch_records.append(record)
            say.epoch(record, selection)
            assert best is not None
            if checkpoint is not None:
                t0 = time.perf_counter()
                try:
                    state = proc.checkpoint()
                except ModelError as exc:  # a model that does not pickle still runs, unresumable
                    notes.append(f"no checkpoints: the model's state could not be saved ({exc})")
                    checkpoint = None
            if checkpoint is not None:
                if improved:
                    best_state = state
                states = {"current": state}
                if not improved and best_state is not None:
                    states["best"] = best_state
                checkpoint.save({"best_epoch": best[1], "best_value": best[0], "epochs": epoch_records},
                                states)
                checkpoint_samples.append(time.perf_counter() - t0)
            if on_epoch is not None:
                on_epoch(record)
            stopped = bool(valid_end) and epoch - best[1] >= protocol.patience
        if stopped:
            notes.append(f"early stop after epoch {len(epoch_records)}: no better validation "
                         f"{selection} for {protocol.patience} epochs")
            say.say(notes[-1] + f"; testing epoch {best[1] if best else '?'}")
        assert best is not None
        _, best_epoch, best_probe, collected = best
        probe = best_probe if best_probe is not None else proc.fork()
        if not valid_end:
            notes.append("no validation part: no model selection"
                         + (f", tested after the last epoch ({best_epoch})" if n_epochs else ""))
        elif n_epochs and math.isnan(best[0]):
            notes.append(f"validation {selection} was not available: epoch {best[1]} reported")
        refit_seconds = None
        test_data, test_blocks, test_start = data, blocks, valid_end
        if pristine is not None:
            assert data.refit is not None
            probe.close()
            probe, pristine = pristine, None
            t0 = time.perf_counter()
            probe.fit(data.refit.train, seed=seed, stream_summary=handed)
            for _ in range(best_epoch if n_epochs else 0):
                probe.train_epoch()
            refit_seconds = time.perf_counter() - t0
            notes.append(f"refit: a fresh model fitted on train + valid "
                         f"({len(data.refit.train)} events)"
                         + (f" for {best_epoch} epochs (the best validation epoch)" if n_epochs
                            else "") + " was tested")
            test_data, test_start = data.refit, 0
            test_data, test_blocks = schedule(test_data, max_block, independent)
        rest, test_seconds = run_pass(probe, test_data, test_blocks, test_start,
                                      len(test_data.events), "test")
        collected.extend(rest)
        report = probe.report()
        probe.close()
    finally:
        if pristine is not None:
            pristine.close()
    best_valid = valid_samples[best_epoch - 1 if n_epochs else 0] if valid_samples else 0.0
    eval_seconds = best_valid + test_seconds
    metrics = {name: collected.metrics(code, protocol, notes) for code, name in _SPLIT_NAMES.items()}
    say.say(f"test {selection} {number(metrics['test'].get(selection))}"
            + (f" (epoch {best_epoch})" if n_epochs else "") + f" · {test_seconds:.1f} s")
    fit_seconds = setup_seconds + sum(fit_samples)
    timing = {
        "fit_seconds": fit_seconds,
        "setup_seconds": setup_seconds,
        "eval_seconds": eval_seconds,
        "eval_model_seconds": collected.model_seconds,
        "eval_events": collected.events,
        "events_per_second": collected.events / eval_seconds if eval_seconds > 0 else None,
        "train_events": len(data.train),
        "samples": {"epoch_fit_seconds": fit_samples, "valid_seconds": valid_samples,
                    "test_seconds": [test_seconds], "checkpoint_seconds": checkpoint_samples},
    }
    if refit_seconds is not None:
        assert data.refit is not None
        timing.update(refit_seconds=refit_seconds, refit_train_events=len(data.refit.train))
    audit = {**collected.audit, "audits_per_pass": protocol.audits}
    return Evaluation(
        _plain(metrics), epoch_records, best_epoch if n_epochs else None, timing, notes,
        _plain(report) if report is not None else None, audit=audit, meta=meta,
        outcomes=collected.outcomes(_TEST), stream_summary=handed,
    )


def replay(model: Model, data: Prepared, protocol: Protocol, max_block: int,
           user_by_user: bool = False) -> dict[str, np.ndarray]:
    """Stream all of ``data.events`` through an already fitted ``model`` in this process (read-only
    copies of each block, no audits; in time order, or :func:`by_user`) and return the raw
    predictions: ``best``/``worst`` ranks of the ranked events, ``state`` probabilities and
    ``gap`` predictions, in event order. The conformance checks compare such replays."""
    data, blocks = schedule(data, max_block, user_by_user)
    local = LocalModel(model)
    got = _stream(local, data, protocol, type(model).capabilities, 0, len(data.events), blocks, None)

    def cat(parts: list[np.ndarray], events: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        return np.concatenate(parts)[_event_order(events)] if parts else np.empty(0)

    return {
        "best": cat(got.best, got.rank_event),
        "worst": cat(got.worst, got.rank_event),
        "state": cat([p for _, p, _ in got.state], got.state_event),
        "gap": cat([p for _, p, _, _ in got.gaps], got.gap_event),
    }


def _plain(value: Any) -> Any:
    """Numpy scalars to Python numbers, recursively (for JSON)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
