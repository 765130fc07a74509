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

Iterative models are validated after every epoch on a copy; the test metrics are those of the
best validation epoch. Valid and test events are streamed in one time-ordered pass, so a model
keeps the state it built on valid events when it reaches test events.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from harness.api import Model
from harness.errors import UsageError
from harness.interactions import Interactions
from harness.metrics import TIE_POLICIES, auc, mae, mae_by_bin, mrr, rank_bounds, recall

__all__ = [
    "PROTOCOLS",
    "Evaluation",
    "Protocol",
    "check_compatible",
    "evaluate",
    "iter_blocks",
    "prepare",
    "replay",
]

PROTOCOLS = ("streaming", "state", "sessions")
#: Return-time bins in days, centred on whole days as in THRNN's Figure 3.
GAP_BINS_DAYS = (0.0, 0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5, math.inf)
_NEEDS = {"streaming": ("rank",), "state": ("state",), "sessions": ("rank", "return_time")}
_VALID, _TEST = 1, 2


@dataclass(frozen=True)
class Protocol:
    """Everything about how a model is evaluated, recorded with every run."""

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

    def __post_init__(self) -> None:
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
        if min(train, valid, test) <= 0 or train + valid + test > 1 + 1e-9:
            raise UsageError(
                "split fractions must be positive and sum to at most 1, but got "
                f"train={train}, valid={valid}, test={test}"
            )
        for attr, value in zip(("train", "valid", "test"), (train, valid, test)):
            object.__setattr__(self, attr, value)

    @property
    def fractions(self) -> tuple[float, float, float]:
        """The train, valid and test fractions (set by the constructor)."""
        assert self.train is not None and self.valid is not None and self.test is not None
        return self.train, self.valid, self.test

    @property
    def selection_metric(self) -> str:
        """The validation metric that picks the best epoch (``mae`` for return-time-only models
        on the sessions protocol)."""
        return {"streaming": "mrr", "state": "auc", "sessions": "recall@20"}[self.name]

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


@dataclass
class Evaluation:
    """What :func:`evaluate` measured: metrics per split, the per-epoch curve and timings."""

    metrics: dict[str, dict[str, Any]]
    epochs: list[dict[str, Any]]
    best_epoch: int | None
    timing: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    model_report: dict[str, Any] | None = None


def check_compatible(model_cls: type[Model], protocol: str, name: str | None = None) -> None:
    """Raise a clear error before any work when the model cannot be evaluated on ``protocol``."""
    name = name or model_cls.__name__
    needs = _NEEDS[protocol]
    if not set(needs) & set(model_cls.capabilities):
        declared = ", ".join(sorted(model_cls.capabilities)) or "nothing"
        fits = [p for p, n in _NEEDS.items() if set(n) & set(model_cls.capabilities)]
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
                stream, gap=protocol.session_gap or 3600.0, max_length=protocol.max_session_length
            )
        _, valid, test = protocol.fractions
        codes = session_split(stream, test=test, valid=valid)
    else:
        codes = index_split(len(stream), *protocol.fractions)
    codes = np.asarray(codes)
    evaluated = codes >= _VALID
    if not all((codes == code).any() for code in (0, _VALID, _TEST)):
        raise UsageError(
            f"the {protocol.name} split of {stream.name!r} ({len(stream)} events) leaves no "
            "training, validation or test events; use a larger dataset or other --split fractions"
        )
    ranked = np.ones(len(stream), bool)
    gap = np.full(len(stream), np.nan)
    if protocol.name == "sessions":
        ranked, gap = _session_targets(stream)
    idx = np.flatnonzero(evaluated)
    return Prepared(
        train=stream[codes == 0],
        events=stream[idx],
        split=codes[idx].astype(np.int8),
        ranked=ranked[idx],
        gap=gap[idx],
    )


def _session_targets(stream: Interactions) -> tuple[np.ndarray, np.ndarray]:
    """Which events are within-session queries, and the return-time target at each visit end."""
    assert stream.session is not None and stream.visit is not None, "sessionize the stream first"
    n = len(stream)
    order = np.lexsort((np.arange(n), stream.user))  # by user, then time
    user, session, visit, t = (stream.user[order], stream.session[order],
                               stream.visit[order], stream.t[order])
    same_user = np.r_[False, user[1:] == user[:-1]]
    ranked = np.empty(n, bool)
    ranked[order] = same_user & np.r_[False, session[1:] == session[:-1]]
    ends_visit = np.r_[visit[1:] != visit[:-1], True]
    next_is_same_user = np.r_[same_user[1:], False]
    gap_sorted = np.full(n, np.nan)
    has_next = ends_visit & next_is_same_user
    gap_sorted[has_next] = t[1:][has_next[:-1]] - t[has_next]
    gap = np.empty(n)
    gap[order] = gap_sorted
    return ranked, gap


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


class _Collector:
    """Predictions gathered during a pass, per split."""

    def __init__(self) -> None:
        self.best: list[np.ndarray] = []
        self.worst: list[np.ndarray] = []
        self.rank_split: list[np.ndarray] = []
        self.state: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.gaps: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.model_seconds = 0.0
        self.events = 0

    def extend(self, other: _Collector) -> None:
        for name in ("best", "worst", "rank_split", "state", "gaps"):
            getattr(self, name).extend(getattr(other, name))
        self.model_seconds += other.model_seconds
        self.events += other.events

    def metrics(self, split: int, protocol: Protocol, notes: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.best:
            where = np.concatenate(self.rank_split) == split
            best, worst = np.concatenate(self.best)[where], np.concatenate(self.worst)[where]
            out["queries"] = int(where.sum())
            if where.any():
                out["mrr"] = mrr(best, worst)
                for k in protocol.ks:
                    out[f"recall@{k}"] = recall(best, worst, k)
                    out[f"mrr@{k}"] = mrr(best, worst, k)
        if self.state:
            labels, probs, where = (np.concatenate(c) for c in zip(*self.state))
            labels, probs = labels[where == split], probs[where == split]
            try:
                out["auc"] = auc(labels, probs)
            except ValueError as exc:
                notes.append(f"auc not reported for split {_SPLIT_NAMES[split]}: {exc}")
        if self.gaps:
            true, pred, where = (np.concatenate(c) for c in zip(*self.gaps))
            true, pred = true[where == split] / 3600.0, pred[where == split] / 3600.0
            if true.size:
                out["mae"] = mae(true, pred)
                out["mae_by_gap_days"] = mae_by_bin(true / 24.0, pred / 24.0, GAP_BINS_DAYS)
                out["return_time_queries"] = int(true.size)
        return out


_SPLIT_NAMES = {_VALID: "valid", _TEST: "test"}


def _stream(
    model: Model,
    data: Prepared,
    protocol: Protocol,
    start: int,
    stop: int,
    blocks: list[tuple[int, int]],
    progress: Callable[[int], None] | None,
) -> _Collector:
    """Feed events ``[start, stop)`` of ``data.events`` to ``model`` block by block."""
    out = _Collector()
    caps = type(model).capabilities
    want_rank = "rank" in caps and protocol.name != "state"
    want_state = "state" in caps and protocol.name != "sessions"
    want_gap = "return_time" in caps and protocol.name == "sessions"
    events = data.events
    clock = time.perf_counter
    for a, b in blocks:
        if b <= start or a >= stop:
            continue
        a, b = max(a, start), min(b, stop)
        block = events[a:b]
        ranked = data.ranked[a:b]
        if want_rank and ranked.any():
            tic = clock()
            scores = model.score(block)
            out.model_seconds += clock() - tic
            if scores.shape != (b - a, events.n_items):
                raise ValueError(
                    f"{type(model).__name__}.score returned shape {scores.shape}, "
                    f"expected {(b - a, events.n_items)}"
                )
            best, worst = rank_bounds(scores[ranked], block.item[ranked], protocol.tie_policy)
            out.best.append(best)
            out.worst.append(worst)
            out.rank_split.append(data.split[a:b][ranked])
        tic = clock()
        model.observe(block)
        if want_state:
            probs = np.asarray(model.predict_state(block), dtype=np.float64)
            out.state.append((block.label, probs, data.split[a:b]))
        if want_gap:
            ends = ~np.isnan(data.gap[a:b])
            if ends.any():
                pred = model.predict_return_time(block.user[ends], block.t[ends])
                out.gaps.append((data.gap[a:b][ends], np.asarray(pred, np.float64),
                                 data.split[a:b][ends]))
        out.model_seconds += clock() - tic
        out.events += b - a
        if progress is not None:
            progress(b - a)
    return out


def evaluate(
    model: Model,
    stream: Interactions | Prepared,
    protocol: Protocol | None = None,
    *,
    epochs: int | None = None,
    seed: int = 0,
    progress: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> Evaluation:
    """Fit ``model`` on the protocol's training part and evaluate it on valid and test.

    ``on_epoch`` is called with each epoch's record (Optuna uses it to prune).
    """
    from tqdm import tqdm

    protocol = protocol or Protocol()
    check_compatible(type(model), protocol.name)
    data = stream if isinstance(stream, Prepared) else prepare(stream, protocol)
    notes: list[str] = []
    max_block = protocol.max_block if type(model).supports_blocks else 1
    blocks = list(iter_blocks(data.events, max_block))
    valid_end = int(np.flatnonzero(data.split == _VALID)[-1]) + 1
    n_eval = len(data.events)

    def bar(total: int, desc: str):
        # disable=None: bars only when stderr is a terminal
        return tqdm(total=total, desc=desc, unit="ev", disable=None if progress else True, leave=False,
                    mininterval=0.5)

    tic = time.perf_counter()
    model.fit(data.train, seed=seed)
    setup_seconds = time.perf_counter() - tic
    epoch_records: list[dict[str, Any]] = []
    fit_samples: list[float] = []
    valid_samples: list[float] = []
    best: tuple[float, int, Model, _Collector] | None = None
    selection = protocol.selection_metric
    if protocol.name == "sessions" and "rank" not in type(model).capabilities:
        selection = "mae"
    sign = -1.0 if selection == "mae" else 1.0
    if not type(model).iterative or not (epochs or type(model).default_epochs):
        n_epochs = 0
    else:
        n_epochs = epochs if epochs is not None else type(model).default_epochs

    def validate(candidate: Model) -> tuple[_Collector, float]:
        with bar(valid_end, "valid") as pb:
            t0 = time.perf_counter()
            collected = _stream(candidate, data, protocol, 0, valid_end, blocks, pb.update)
            return collected, time.perf_counter() - t0

    if n_epochs == 0:
        probe = model
        collected, seconds = validate(probe)
        valid_samples.append(seconds)
        best = (0.0, 0, probe, collected)
    for epoch in range(1, n_epochs + 1):
        t0 = time.perf_counter()
        losses = model.train_epoch() or {}
        fit_samples.append(time.perf_counter() - t0)
        probe = copy.deepcopy(model)
        collected, seconds = validate(probe)
        valid_samples.append(seconds)
        valid_metrics = collected.metrics(_VALID, protocol, [])
        value = valid_metrics.get(selection, math.nan)
        record = {"epoch": epoch, "fit_seconds": fit_samples[-1], "valid_seconds": seconds,
                  "losses": {k: float(v) for k, v in losses.items()},
                  "valid": _plain(valid_metrics)}
        epoch_records.append(record)
        if on_epoch is not None:
            on_epoch(record)
        if best is None or (not math.isnan(value)
                            and (math.isnan(best[0]) or sign * value > sign * best[0])):
            best = (value, epoch, probe, collected)
        elif epoch - best[1] >= protocol.patience:
            notes.append(f"early stop after epoch {epoch}: no better validation {selection} "
                         f"for {protocol.patience} epochs")
            break
    assert best is not None
    if n_epochs and math.isnan(best[0]):
        notes.append(f"validation {selection} was not available: epoch {best[1]} reported")
    _, best_epoch, probe, collected = best
    with bar(n_eval - valid_end, "test") as pb:
        t0 = time.perf_counter()
        rest = _stream(probe, data, protocol, valid_end, n_eval, blocks, pb.update)
        test_seconds = time.perf_counter() - t0
    collected.extend(rest)
    eval_seconds = valid_samples[best_epoch - 1 if n_epochs else 0] + test_seconds
    metrics = {name: collected.metrics(code, protocol, notes) for code, name in _SPLIT_NAMES.items()}
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
                    "test_seconds": [test_seconds]},
    }
    report = getattr(probe, "fit_report", None)
    return Evaluation(
        _plain(metrics), epoch_records, best_epoch if n_epochs else None, timing, notes,
        _plain(report) if isinstance(report, dict) else None,
    )


def replay(model: Model, data: Prepared, protocol: Protocol, max_block: int) -> dict[str, np.ndarray]:
    """Stream all of ``data.events`` through an already fitted ``model`` and return the raw
    predictions: ``best``/``worst`` ranks of the ranked events, ``state`` probabilities and
    ``gap`` predictions, in event order. The conformance checks compare such replays."""
    blocks = list(iter_blocks(data.events, max_block))
    got = _stream(model, data, protocol, 0, len(data.events), blocks, None)
    cat = lambda parts: np.concatenate(parts) if parts else np.empty(0)  # noqa: E731
    return {
        "best": cat(got.best),
        "worst": cat(got.worst),
        "state": cat([p for _, p, _ in got.state]),
        "gap": cat([p for _, p, _ in got.gaps]),
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
