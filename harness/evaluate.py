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

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from harness.api import Model
from harness.errors import HarnessError, UsageError
from harness.interactions import Interactions
from harness.metrics import TIE_POLICIES, auc, mae, mae_by_bin, mrr, rank_bounds, recall
from harness.sandbox import LocalModel, ModelProcess, ModelRef, Step, one_core

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
    audits: int = 16

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
        if self.audits < 0:
            raise UsageError(f"audits must be >= 0, but got {self.audits}")
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
    index: np.ndarray  # position of each evaluation event in the whole (sessionized) stream


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
        index=idx,
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


class AuditFailure(HarnessError):
    """A model's answers broke a rule of the protocol (look-ahead, state change in ``score``,
    non-finite or wrongly shaped predictions): the run is ``failed`` with this reason."""


class _Collector:
    """Predictions gathered during a pass, per split, and what the audits checked."""

    def __init__(self) -> None:
        self.best: list[np.ndarray] = []
        self.worst: list[np.ndarray] = []
        self.rank_split: list[np.ndarray] = []
        self.state: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.gaps: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.model_seconds = 0.0
        self.events = 0
        self.audit = dict.fromkeys(AUDIT_COUNTS, 0)

    def extend(self, other: _Collector) -> None:
        for name in ("best", "worst", "rank_split", "state", "gaps"):
            getattr(self, name).extend(getattr(other, name))
        self.model_seconds += other.model_seconds
        self.events += other.events
        for key, value in other.audit.items():
            self.audit[key] += value

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
#: What the audits of a run count: blocks and rows re-scored with their own and later events
#: altered, blocks scored twice, and forks of the model's process made for the audits.
AUDIT_COUNTS = ("lookahead_blocks", "lookahead_rows", "twice_blocks", "forks")


class _Auditor:
    """Which blocks a pass audits (seeded): ``protocol.audits`` blocks re-scored with their own
    and later events altered, and as many other blocks scored twice."""

    def __init__(self, protocol: Protocol, seed: int, pass_number: int, n_blocks: int) -> None:
        self.rng = np.random.default_rng([seed, pass_number, 0xA0D17])
        k = min(protocol.audits, n_blocks)
        self.lookahead = set(self.rng.choice(n_blocks, k, replace=False).tolist())
        self.twice = set(self.rng.choice(n_blocks, k, replace=False).tolist())


def _altered(block: Interactions, j: int, rng: np.random.Generator, only_label: bool) -> Interactions:
    """``block`` with the label (and unless ``only_label`` the item and features) of events
    ``j`` and later changed; users and times stay, and items stay distinct within the block."""
    label = block.label.copy()
    label[j:] = 1 - label[j:]
    if only_label:
        return replace(block, label=label)
    n = len(block) - j
    taken = block.item if block.n_items - len(block) >= n else block.item[:j]
    free = np.setdiff1d(np.arange(block.n_items, dtype=block.item.dtype), taken)
    item = block.item.copy()
    item[j:] = rng.choice(free, n, replace=False)
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
        finite = np.isfinite(scores)
        if not finite.all():
            fail("score() returned NaN or infinity", ~finite.all(axis=1))
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


def _compare(real: np.ndarray | None, other: np.ndarray | None, rows: int, index: int, why: str) -> None:
    if real is None or other is None:
        return
    if other.shape != real.shape or not np.array_equal(real[:rows], other[:rows]):
        if other.shape == real.shape:
            diff = float(np.max(np.abs(real[:rows].astype(np.float64) - other[:rows])))
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
    spare_cpus: set[int] | None = None,
) -> _Collector:
    """Feed events ``[start, stop)`` of ``data.events`` to ``proc`` block by block, auditing the
    pass when an ``auditor`` is given (its shadow runs on ``spare_cpus``).

    Audits never touch the pass's process, so it cannot tell an audited block from another: a
    shadow, forked from it before the first block, gets the same calls without answering. Before
    an audited block the shadow forks a copy that is asked about the block with its own and later
    events altered; its answer is compared with the pass's answer at the end of the pass.
    """
    out = _Collector()
    want_rank = "rank" in capabilities and protocol.name != "state"
    want_state = "state" in capabilities and protocol.name != "sessions"
    want_gap = "return_time" in capabilities and protocol.name == "sessions"
    events = data.events
    clock = time.perf_counter
    todo = [(max(a, start), min(b, stop)) for a, b in blocks if a < stop and b > start]
    shadow = proc.fork() if auditor is not None else None
    if shadow is not None and spare_cpus:
        shadow.pin(spare_cpus)
    audits: list[tuple[Step, Any, Any, int, int, int]] = []
    for k, (a, b) in enumerate(todo):
        block = events[a:b]
        ranked = data.ranked[a:b]
        score = want_rank and bool(ranked.any())
        ends = ~np.isnan(data.gap[a:b]) if want_gap else None
        n_ends = int(ends.sum()) if ends is not None else 0
        index = data.index[a:b]
        tic = clock()
        audit: tuple[Any, Any, int, int] | None = None
        if shadow is not None:
            assert auditor is not None
            if k in auditor.lookahead and (score or want_state or n_ends):
                j = int(auditor.rng.integers(b - a))
                altered = shadow.fork(wait=False)
                altered.step(_altered(block, j, auditor.rng, False), score=score, state=want_state,
                             ends=ends, answer_later=True)
                relabelled = None
                if want_state:
                    relabelled = shadow.fork(wait=False)
                    relabelled.step(_altered(block, j, auditor.rng, True), score=score, state=True,
                                    answer_later=True)
                out.audit["forks"] += 1 + want_state
                gaps_before = int((np.flatnonzero(ends) < j).sum()) if ends is not None else 0
                audit = (altered, relabelled, j, gaps_before)
            shadow.step(block, score=score, state=want_state, ends=ends, reply=False)
        first_scores = proc.score(block) if score and auditor and k in auditor.twice else None
        got = proc.step(block, score=score, state=want_state, ends=ends)
        out.model_seconds += clock() - tic
        _check_answers(got, block, score, want_state, n_ends, index)
        if first_scores is not None:
            _compare(got.scores, first_scores, b - a, int(index[0]),
                     "score() changed the model's state: scoring the same block twice gave "
                     "different rows, block starting")
            out.audit["twice_blocks"] += 1
        if audit is not None:
            audits.append((got, *audit, int(index[audit[2]])))
        if score:
            assert got.scores is not None
            best, worst = rank_bounds(got.scores[ranked], block.item[ranked], protocol.tie_policy)
            out.best.append(best)
            out.worst.append(worst)
            out.rank_split.append(data.split[a:b][ranked])
        if want_state:
            assert got.state is not None
            out.state.append((block.label, got.state.astype(np.float64), data.split[a:b]))
        if n_ends:
            assert ends is not None and got.gap is not None
            out.gaps.append((data.gap[a:b][ends], got.gap.astype(np.float64), data.split[a:b][ends]))
        out.events += b - a
        if progress is not None:
            progress(b - a)
    if shadow is not None:
        out.audit["forks"] += 1
        _settle(shadow, audits, out)
    return out


def _settle(shadow: Any, audits: list[tuple[Step, Any, Any, int, int, int]], out: _Collector) -> None:
    """Compare the audited answers, once the shadow and its copies have given them."""
    why = "look-ahead: a score row depends on its own or a later event's item, label or features"
    try:
        shadow.sync()
        for got, altered, relabelled, j, gaps_before, event in audits:
            alt = altered.answer()
            _compare(got.scores, alt.scores, j + 1, event, why)
            _compare(got.state, alt.state, j, event,
                     "look-ahead: a state prediction depends on a later event")
            _compare(got.gap, alt.gap, gaps_before, event,
                     "look-ahead: a return time depends on a later event of its block")
            if relabelled is not None:
                alt = relabelled.answer()
                _compare(got.scores, alt.scores, j + 1, event, why)
                _compare(got.state, alt.state, j + 1, event,
                         "look-ahead: a state prediction depends on its own event's label")
            out.audit["lookahead_blocks"] += 1
            out.audit["lookahead_rows"] += j + 1 if got.scores is not None or got.state is not None \
                else gaps_before
    finally:
        for _, altered, relabelled, _, _, _ in audits:
            for clone in (altered, relabelled):
                if clone is not None:
                    clone.close()
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
) -> Evaluation:
    """Fit a model on the protocol's training part and evaluate it on valid and test.

    The model runs in a process of its own (see :mod:`harness.sandbox`): give a
    :class:`ModelRef` (nothing of the model is imported here), an unfitted model object (its
    class must be importable), or a started :class:`ModelProcess` (left running). Every pass is
    audited. ``on_epoch`` is called with each epoch's record (Optuna uses it to prune).
    """
    if isinstance(model, ModelProcess):
        return _evaluate(model, stream, protocol, epochs, seed, progress, on_epoch)
    if isinstance(model, Model):  # before a process is started for it
        check_compatible(type(model), (protocol or Protocol()).name)
    with ModelProcess.start(model, threads=threads) as proc:
        return _evaluate(proc, stream, protocol, epochs, seed, progress, on_epoch)


def _evaluate(
    proc: ModelProcess,
    stream: Interactions | Prepared,
    protocol: Protocol | None,
    epochs: int | None,
    seed: int,
    progress: bool,
    on_epoch: Callable[[dict[str, Any]], None] | None,
) -> Evaluation:
    from harness.progress import RunProgress, number

    protocol = protocol or Protocol()
    meta = proc.meta
    caps = frozenset(meta["capabilities"])
    check_compatible(caps, protocol.name, meta["name"])
    data = stream if isinstance(stream, Prepared) else prepare(stream, protocol)
    notes: list[str] = []
    max_block = protocol.max_block if meta["supports_blocks"] else 1
    blocks = list(iter_blocks(data.events, max_block))
    valid_end = int(np.flatnonzero(data.split == _VALID)[-1]) + 1
    n_eval = len(data.events)
    n_valid_blocks = sum(a < valid_end for a, _ in blocks)
    passes = iter(range(1, 1 << 30))

    def run_pass(probe: ModelProcess, start: int, stop: int, n_blocks: int, desc: str
                 ) -> tuple[_Collector, float]:
        auditor = _Auditor(protocol, seed, next(passes), n_blocks) if protocol.audits else None
        with say.bar(desc, stop - start) as pb, one_core(probe) as spare:
            t0 = time.perf_counter()
            collected = _stream(probe, data, protocol, caps, start, stop, blocks, pb.update, auditor,
                                spare)
            return collected, time.perf_counter() - t0

    if not meta["iterative"] or not (epochs or meta["default_epochs"]):
        n_epochs = 0
    else:
        n_epochs = epochs if epochs is not None else meta["default_epochs"]
    say = RunProgress(meta["name"], seed, n_epochs, enabled=progress)
    tic = time.perf_counter()
    with say.training("fit") as on_progress:
        proc.fit(data.train, seed=seed, on_progress=on_progress)
    setup_seconds = time.perf_counter() - tic
    epoch_records: list[dict[str, Any]] = []
    fit_samples: list[float] = []
    valid_samples: list[float] = []
    best: tuple[float, int, ModelProcess, _Collector] | None = None
    selection = protocol.selection_metric
    if protocol.name == "sessions" and "rank" not in caps:
        selection = "mae"
    sign = -1.0 if selection == "mae" else 1.0

    if n_epochs == 0:
        probe = proc.fork()
        collected, seconds = run_pass(probe, 0, valid_end, n_valid_blocks, "valid")
        valid_samples.append(seconds)
        best = (0.0, 0, probe, collected)
        value = collected.metrics(_VALID, protocol, []).get(selection)
        say.say(f"fit {setup_seconds:.1f} s · valid {selection} {number(value)} · {seconds:.1f} s")
    for epoch in range(1, n_epochs + 1):
        t0 = time.perf_counter()
        with say.training(f"epoch {epoch}/{n_epochs}") as on_progress:
            losses = proc.train_epoch(on_progress)
        fit_samples.append(time.perf_counter() - t0)
        probe = proc.fork()  # the pass runs in a copy: nothing it does reaches training
        collected, seconds = run_pass(probe, 0, valid_end, n_valid_blocks,
                                      f"valid {epoch}/{n_epochs}")
        valid_samples.append(seconds)
        valid_metrics = collected.metrics(_VALID, protocol, [])
        value = valid_metrics.get(selection, math.nan)
        record = {"epoch": epoch, "fit_seconds": fit_samples[-1], "valid_seconds": seconds,
                  "losses": losses, "valid": _plain(valid_metrics)}
        epoch_records.append(record)
        say.epoch(record, selection)
        if best is None or (not math.isnan(value)
                            and (math.isnan(best[0]) or sign * value > sign * best[0])):
            if best is not None:
                best[2].close()
            best = (value, epoch, probe, collected)
        else:
            probe.close()
        if on_epoch is not None:
            on_epoch(record)
        if epoch - best[1] >= protocol.patience:
            notes.append(f"early stop after epoch {epoch}: no better validation {selection} "
                         f"for {protocol.patience} epochs")
            say.say(notes[-1] + f"; testing epoch {best[1]}")
            break
    assert best is not None
    if n_epochs and math.isnan(best[0]):
        notes.append(f"validation {selection} was not available: epoch {best[1]} reported")
    _, best_epoch, probe, collected = best
    rest, test_seconds = run_pass(probe, valid_end, n_eval, len(blocks) - n_valid_blocks, "test")
    collected.extend(rest)
    report = probe.report()
    probe.close()
    eval_seconds = valid_samples[best_epoch - 1 if n_epochs else 0] + test_seconds
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
                    "test_seconds": [test_seconds]},
    }
    audit = {**collected.audit, "audits_per_pass": protocol.audits}
    return Evaluation(
        _plain(metrics), epoch_records, best_epoch if n_epochs else None, timing, notes,
        _plain(report) if report is not None else None, audit=audit, meta=meta,
    )


def replay(model: Model, data: Prepared, protocol: Protocol, max_block: int) -> dict[str, np.ndarray]:
    """Stream all of ``data.events`` through an already fitted ``model`` in this process (read-only
    copies of each block, no audits) and return the raw predictions: ``best``/``worst`` ranks of
    the ranked events, ``state`` probabilities and ``gap`` predictions, in event order. The
    conformance checks compare such replays."""
    blocks = list(iter_blocks(data.events, max_block))
    local = LocalModel(model)
    got = _stream(local, data, protocol, type(model).capabilities, 0, len(data.events), blocks, None)
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
