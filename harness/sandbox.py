"""Models run in a process of their own that never holds an event before it is asked about it.

The evaluator's process holds the stream and the truth; it never imports a model's code when the
model is given by name. :meth:`ModelProcess.start` starts a fresh interpreter (``harness._host``)
that imports the model, gets the training events for ``fit``, and afterwards only the blocks the
evaluator asks it to predict, one at a time. A pass over validation or test events runs in a fork
of that process (:meth:`ModelProcess.fork`), so whatever a pass does, module globals included, is
gone when training resumes. Every array crossing the boundary is a read-only copy that owns its
memory; replies are JSON and raw arrays, never pickles.

:class:`LocalModel` offers the same calls on a model object in this process (the conformance
checks use it; it is not isolated).
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import io
import mmap
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from harness._wire import DTYPES, Channel, Scratch, WireError, frame, framed, receive
from harness.errors import HarnessError, UsageError
from harness.interactions import Interactions

__all__ = [
    "LocalModel", "ModelError", "ModelInfo", "ModelProcess", "ModelRef", "Step", "block_arrays",
    "describe_model", "placement", "readonly",
]

#: ``on_progress(done, total, unit)``: a model's count of its batches (see harness.api.progress).
OnProgress = Callable[[int, "int | None", str], None]
_COLUMNS = ("user", "item", "t", "label", "features", "session", "visit")


class ModelError(HarnessError):
    """A model's code failed, or its process broke the protocol; the run is ``failed``."""

    def __init__(self, message: str, traceback: str | None = None) -> None:
        super().__init__(message)
        self.traceback = traceback


@dataclass(frozen=True)
class ModelRef:
    """A model named as the command line names it: resolved inside the model's process only."""

    name: str
    plugin: str | None = None
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Step:
    """What a model returned for one block: scores before the block, states and gaps after."""

    scores: np.ndarray | None = None
    state: np.ndarray | None = None
    gap: np.ndarray | None = None


def block_arrays(block: Interactions) -> dict[str, np.ndarray]:
    """The columns of a block, as the wire sends them."""
    out = {name: getattr(block, name) for name in _COLUMNS}
    return {k: v for k, v in out.items() if v is not None and (k != "features" or v.shape[1])}


def readonly(stream: Interactions) -> Interactions:
    """A copy of ``stream`` whose arrays own their memory and cannot be written."""

    def own(array: np.ndarray | None) -> np.ndarray | None:
        if array is None:
            return None
        out = np.array(array, copy=True)
        out.flags.writeable = False
        return out

    columns: dict[str, Any] = {name: own(getattr(stream, name)) for name in _COLUMNS}
    return replace(stream, **columns)


def model_meta(cls: Any, model: Any, name: str) -> dict[str, Any]:
    """What the evaluator needs to know of a model, as JSON values."""
    from harness.runner import changed_params

    params = model.get_params()
    return {
        "name": name,
        "class": f"{cls.__module__}:{cls.__qualname__}",
        "param_names": cls.param_names(),
        "capabilities": sorted(cls.capabilities),
        "supports_blocks": bool(cls.supports_blocks),
        "independent_users": bool(getattr(cls, "independent_users", False)),
        "iterative": bool(cls.iterative),
        "default_epochs": int(cls.default_epochs),
        "params": params,
        "params_changed": changed_params(cls, params),
    }


def plain_array(value: Any, what: str, fresh: bool = True) -> np.ndarray:
    """A model's answer as an array of a dtype the wire carries (a copy unless ``fresh`` is
    false: the model's process writes the answer out at once)."""
    array = np.array(value, copy=True) if fresh else np.asarray(value)
    if array.dtype.name not in DTYPES:
        if array.dtype.kind not in "fiub":
            raise TypeError(f"{what}() returned an array of dtype {array.dtype}, not numbers")
        array = array.astype(np.float64)
    return array


def answer_block(model: Any, block: Interactions, *, score: bool, state: bool,
                 ends: np.ndarray | None, fresh: bool = True, rows: list[int] | None = None
                 ) -> dict[str, np.ndarray]:
    """One step of a pass: the scores (copied before the model observes the block), then
    ``observe``, then the states and the return times of the users whose visits end at ``ends``;
    with ``rows``, only those rows of scores and states (all an audit compares)."""
    out: dict[str, np.ndarray] = {}
    if score:
        out["scores"] = pick_rows(plain_array(model.score(block), "score", fresh), rows)
    model.observe(block)
    if state:
        out["state"] = pick_rows(plain_array(model.predict_state(block), "predict_state", fresh), rows)
    if ends is not None:
        out["gap"] = plain_array(model.predict_return_time(block.user[ends], block.t[ends]),
                                 "predict_return_time", fresh)
    return out


def pick_rows(array: np.ndarray, rows: list[int] | None) -> np.ndarray:
    """``array[rows]`` (all of it without ``rows``, or when it has no rows to pick: the
    evaluator reports the shape)."""
    if rows is None or not array.ndim or (rows and max(rows) >= len(array)):
        return array
    return array[rows]


class LocalModel:
    """A model object in this process, behind the calls of :class:`ModelProcess` (not isolated:
    for conformance checks on small streams). Blocks are handed over as read-only copies."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.meta = model_meta(type(model), model, type(model).__name__)
        self._later: list[Step] = []

    def step(self, block: Interactions, *, score: bool, state: bool = False,
             ends: np.ndarray | None = None, reply: bool = True, answer_later: bool = False,
             rows: list[int] | None = None, after_answer: bool = False) -> Step:
        got = answer_block(self.model, readonly(block), score=score, state=state,
                           ends=ends if ends is not None and ends.any() else None, rows=rows)
        step = Step(got.get("scores"), got.get("state"), got.get("gap"))
        if answer_later:
            self._later.append(step)
            return Step()
        return step

    def answer(self, *, reuse: bool = False) -> Step:
        return self._later.pop(0)

    def share_answers(self, nbytes: int) -> None:
        pass

    def score(self, block: Interactions, *, rows: list[int] | None = None) -> np.ndarray:
        return pick_rows(np.array(self.model.score(readonly(block)), copy=True), rows)

    def fork(self) -> LocalModel:
        return LocalModel(copy.deepcopy(self.model))

    def pin(self, cpus: set[int], *, poll: float = 0.0) -> None:
        pass

    def idle(self, cpus: set[int]) -> None:
        pass

    poll = 0.0

    def close(self) -> None:
        pass


#: How long a pass's process polls for its next block, and the evaluator for an answer after
#: the time it is due.
PASS_POLL_SECONDS = 0.005
ANSWER_POLL_SECONDS = 0.0002


class AnswerPacer:
    """When a pass's answers come, learned as they come: the evaluator sleeps until shortly
    before an answer is due and polls from then on.

    Polling for every answer would keep the evaluator's core from halting (on a virtual machine,
    waking a halted CPU costs about 100 µs, a tenth of a JODIE block), but it would also keep
    the audit shadow, which runs at idle priority on that core, from ever running. So the pacer
    tracks, for each kind of block (its rows, and what is asked of it), a low quantile
    (:data:`QUANTILE`) of the time from sending a block to its answer, and the evaluator naps
    until :data:`NAP_MARGIN` before that (timer slack set to 1 ns for the pass, see
    :func:`placement`). An answer that was already there when a nap ended lowers the estimate at
    once. Times are ``time.perf_counter`` seconds."""

    #: How long before an answer's usual earliest time a nap ends (a nap ends about 40 µs late on
    #: this project's machine kind), and the shortest nap worth taking.
    NAP_MARGIN = 0.00012
    NAP_MIN = 0.0002
    QUANTILE = 0.1
    STEP = 0.02  # of the estimate, per answer

    def __init__(self, poll: float) -> None:
        self.poll = poll
        self.due: dict[tuple[int, bool, bool], float] = {}
        self._sent: tuple[tuple[int, bool, bool], float] | None = None

    def sent(self, kind: tuple[int, bool, bool], at: float) -> None:
        """A block of this kind went out at ``at``."""
        self._sent = (kind, at)

    def nap(self, now: float) -> float:
        """Seconds to sleep before polling for the answer to the block last sent (0: none)."""
        if self._sent is None or (due := self.due.get(self._sent[0])) is None:
            return 0.0
        nap = self._sent[1] + due - self.NAP_MARGIN - now
        return nap if nap >= self.NAP_MIN else 0.0

    def spin(self) -> float:
        """Seconds to poll before sleeping in the read: past the estimate by a quarter of it."""
        due = self.due.get(self._sent[0]) if self._sent is not None else None
        return self.poll + (due or 0.0) / 4

    def came(self, seen: float | None, now: float) -> None:
        """The answer to the block last sent has been read: it was seen arriving at ``seen``,
        or was there at once (``seen == 0.0``), or came while the reader slept (None)."""
        if self._sent is None:
            return
        (kind, at), self._sent = self._sent, None
        due = self.due.get(kind)
        took = (now if seen is None else seen) - at
        if due is None:
            self.due[kind] = max(took, 0.0) if seen != 0.0 else 0.0
        elif seen == 0.0:  # there before the nap ended: the estimate is too late
            self.due[kind] = due * (1 - 5 * self.STEP)
        elif took < due:
            self.due[kind] = due * (1 - self.STEP * (1 - self.QUANTILE))
        else:
            self.due[kind] = due * (1 + self.STEP * self.QUANTILE)


@contextlib.contextmanager
def placement(proc: Any) -> Iterator[set[int]]:
    """Give the pass ``proc`` a core of its own while the block lasts, the evaluator (this
    process) the first core, and both poll for each other instead of sleeping.

    A pass is a ping-pong between the two: on a virtual machine waking a sleeping CPU costs up
    to 100 µs, more than a small model's whole answer, so the pass polls for its next block and
    this process naps until an answer is due and polls for it from then on (see
    :class:`AnswerPacer`). Yields the cores for an audit's shadow, which runs at idle priority
    (:meth:`ModelProcess.idle`) on whatever time the two leave: this process's naps."""
    try:
        cpus = os.sched_getaffinity(0)
    except AttributeError:
        yield set()
        return
    if len(cpus) < 2:
        yield cpus
        return
    os.sched_setaffinity(0, {min(cpus)})
    proc.pin({sorted(cpus)[1]}, poll=PASS_POLL_SECONDS)
    proc.poll = ANSWER_POLL_SECONDS
    slack = _timer_slack(1)  # naps end on time (see AnswerPacer)
    try:
        yield cpus
    finally:
        proc.poll = 0.0
        os.sched_setaffinity(0, cpus)
        if slack:
            _timer_slack(slack)


def _timer_slack(nanoseconds: int) -> int:
    """Set how late this thread's timers may fire (Linux's ``PR_SET_TIMERSLACK``, 50 µs by
    default); returns the previous setting, 0 where it cannot be set."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
        before = prctl(30, 0, 0, 0, 0)  # PR_GET_TIMERSLACK
        if before <= 0 or prctl(29, nanoseconds, 0, 0, 0) != 0:  # PR_SET_TIMERSLACK
            return 0
        return int(before)
    except (OSError, AttributeError):
        return 0


def _die_with_parent() -> None:
    """Ask Linux to kill this process when its parent dies (a no-op elsewhere)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class ModelProcess:
    """A model in a process of its own (see the module docstring).

    Start one with :meth:`start`; every method sends one request and waits for the answer.
    Errors of the model's code come back as :class:`ModelError` (or :class:`UsageError` for the
    model's own usage errors); a process that dies or breaks the format, as :class:`ModelError`.
    """

    def __init__(self, conn: Channel, meta: dict[str, Any], group: int, max_bytes: int) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._conn = conn
        self.meta = meta
        self._group = group
        self._max_bytes = max_bytes
        self._unacknowledged = 0
        self._outbox: list[bytearray] = []  # requests that need no answer, written in batches
        # written in order, not yet sent: frames, and descriptors to hand over (then closed here)
        self._queue: deque[memoryview | socket.socket | io.FileIO] = deque()
        self._pacer: AnswerPacer | None = None
        self._next: tuple[bytearray, tuple[int, bool, bool]] | None = None  # see step()
        self._segment: mmap.mmap | None = None
        self._scratch = Scratch()
        self.pid: int | None = None  # as the model's process reports it (forks only)

    # -- life cycle ------------------------------------------------------------------------------

    @classmethod
    def start(cls, model: Any, *, threads: int | None = None, max_bytes: int = 1 << 31) -> ModelProcess:
        """Start a fresh process for ``model``: a :class:`ModelRef` (resolved over there) or an
        unfitted model object (pickled; its class must be importable by a fresh interpreter)."""
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p or os.getcwd() for p in sys.path)
        env.setdefault("PYTHONHASHSEED", "0")
        if threads:
            for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
                env[name] = str(threads)
        process = subprocess.Popen(
            [sys.executable, "-m", "harness._host", str(theirs.fileno())],
            pass_fds=[theirs.fileno()], env=env, start_new_session=True, stdin=subprocess.DEVNULL,
        )
        theirs.close()
        self = cls(Channel(ours), {}, process.pid, max_bytes)
        self._process = process
        header: dict[str, Any]
        if isinstance(model, ModelRef):
            header = {"op": "load", "name": model.name, "plugin": model.plugin, "params": model.params}
            arrays = None
        else:
            header = {"op": "load", "name": type(model).__name__, "pickled": True}
            arrays = {"model": np.frombuffer(_pickle_model(model), np.int8)}
        try:
            self.meta = self._call(header, arrays)[0]["meta"]
        except BaseException:
            self.shutdown()
            raise
        return self

    def fork(self, *, wait: bool = True) -> ModelProcess:
        """A copy of this process in its state after the requests sent so far (a new process;
        this one is unchanged; it does not share this one's answer segment). Without ``wait``
        the copy is made when this process gets to the request; :meth:`sync` collects the
        acknowledgement."""
        ours, theirs = socket.socketpair()
        self._hand_over({"op": "fork"}, theirs, wait=wait)
        child = ModelProcess(Channel(ours), self.meta, self._group, self._max_bytes)
        self._unacknowledged += 1
        if wait:
            acks = [self._answer()[0] for _ in range(self._unacknowledged)]
            self._unacknowledged = 0
            child.pid = acks[-1].get("pid") if isinstance(acks[-1].get("pid"), int) else None
        return child

    def pin(self, cpus: set[int], *, poll: float = 0.0) -> None:
        """Run this process on ``cpus`` (its forks inherit it), polling ``poll`` seconds for each
        next request instead of sleeping (Linux; elsewhere, or for a process that is not one of
        the model's, only ``poll`` is set)."""
        try:
            if self.pid and os.getpgid(self.pid) == self._group:
                os.sched_setaffinity(self.pid, cpus)
        except (AttributeError, OSError):
            pass
        self._send({"op": "poll", "seconds": poll, "reply": False}, later=True)

    def share_answers(self, nbytes: int) -> None:
        """From now on, this process writes its answers' large arrays (``SHARED_MIN`` bytes or
        more, up to ``nbytes`` in all) to a memory segment that this side maps read-only, instead
        of sending them over the socket: a block's scores over 94,284 items cross in one copy
        each way instead of a socket's copies into fresh memory. The segment cannot be resized
        (sealed), so the model's process cannot make reading it fail. Linux only; elsewhere
        nothing changes."""
        if self._segment is not None or nbytes <= 0 or not hasattr(os, "memfd_create"):
            return
        fd = os.memfd_create("harness-answers", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        handle = io.FileIO(fd, "r+")  # closed here once handed over
        try:
            os.ftruncate(fd, nbytes)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
            self._segment = mmap.mmap(fd, nbytes, mmap.MAP_SHARED, mmap.PROT_READ)
        except (OSError, AttributeError):
            handle.close()
            return
        self._hand_over({"op": "segment", "reply": False}, handle, wait=False)

    def _hand_over(self, header: dict[str, Any], handle: socket.socket | io.FileIO, *, wait: bool) -> None:
        """Send a request followed by a file descriptor the process takes with it."""
        self._outbox.append(frame(header))
        self._queue.append(memoryview(framed(self._outbox)))
        self._outbox = []
        self._queue.append(handle)
        self._flush(wait=wait)

    def idle(self, cpus: set[int]) -> None:
        """Run this process (and its forks) on ``cpus`` only when nothing else wants them
        (Linux's ``SCHED_IDLE``; elsewhere only the next point holds), sleeping between
        requests."""
        try:
            if self.pid and os.getpgid(self.pid) == self._group:
                if cpus:
                    os.sched_setaffinity(self.pid, cpus)
                os.sched_setscheduler(self.pid, os.SCHED_IDLE, os.sched_param(0))
        except (AttributeError, OSError):
            pass
        self._send({"op": "poll", "seconds": 0.0, "reply": False}, later=True)

    @property
    def poll(self) -> float:
        """Seconds this side polls for an answer after the time it is due (see
        :class:`AnswerPacer`) before sleeping in the read; 0 (the default): it sleeps at once."""
        return self._pacer.poll if self._pacer is not None else 0.0

    @poll.setter
    def poll(self, seconds: float) -> None:
        self._pacer = AnswerPacer(seconds) if seconds > 0 else None
        self._conn.spin = max(seconds, 0.0)

    def sync(self) -> None:
        """Wait until this process has handled every request sent so far (raising the error of
        one that failed without a reply)."""
        for _ in range(self._unacknowledged):
            self._answer()
        self._unacknowledged = 0
        self._call({"op": "sync"})

    def release(self) -> None:
        """Ask this process to end once it has answered the requests sent so far (their answers
        can still be read); ending early frees the memory it shares with its parent."""
        self._send({"op": "exit"}, later=True)
        self._flush(wait=False)

    def close(self) -> None:
        """End this process (a fork ends on its own when its channel closes)."""
        try:
            self._send({"op": "exit"})
        except (OSError, ModelError):
            pass
        self._conn.close()
        if self._segment is not None:
            self._segment.close()
            self._segment = None

    def shutdown(self) -> None:
        """End the model's process and every fork of it."""
        self.close()
        try:
            os.killpg(self._group, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        process = self._process
        if process is not None:
            process.wait()

    def __enter__(self) -> ModelProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    # -- the model's calls -----------------------------------------------------------------------

    def fit(self, train: Interactions, *, seed: int = 0, stream_summary: dict[str, Any] | None = None,
            on_progress: OnProgress | None = None) -> None:
        """Fit on ``train``; a ``stream_summary`` (aggregates only) goes to the model's
        ``use_stream_summary`` first; ``on_progress(done, total, unit)`` gets the counts the model
        reports through :func:`harness.api.progress`."""
        header = {"op": "fit", "seed": int(seed), **_sizes(train)}
        if stream_summary is not None:
            header["stream_summary"] = stream_summary
        self._send(header, block_arrays(train))
        self._answer(on_progress)

    def train_epoch(self, on_progress: OnProgress | None = None) -> dict[str, float]:
        """One epoch; its losses as numbers. ``on_progress`` as for :meth:`fit`."""
        self._send({"op": "train_epoch"})
        losses = self._answer(on_progress)[0].get("losses") or {}
        if not isinstance(losses, dict):
            raise ModelError(f"train_epoch() must return a dict of losses, got {losses!r}")
        try:
            return {str(k): float(v) for k, v in losses.items()}
        except (TypeError, ValueError):
            raise ModelError(f"train_epoch() must return numbers as losses, got {losses!r}") from None

    def checkpoint(self) -> np.ndarray:
        """The model's state (model object and global random states), pickled by its process:
        opaque bytes that only :meth:`restore` reads, in a model process."""
        _, got = self._call({"op": "checkpoint"})
        if "state" not in got or got["state"].dtype != np.int8:
            raise ModelError("the model process answered a checkpoint request without its state")
        return got["state"]

    def restore(self, state: np.ndarray) -> None:
        """Replace the model and the global random states by those of a :meth:`checkpoint`."""
        self._call({"op": "restore"}, {"state": state})

    def step(self, block: Interactions, *, score: bool, state: bool = False,
             ends: np.ndarray | None = None, reply: bool = True, answer_later: bool = False,
             rows: list[int] | None = None, after_answer: bool = False) -> Step:
        """Score the block (if ``score``), then observe it, then predict states and the return
        times of the users whose visits end at ``ends``. Without ``reply`` nothing comes back
        (an error surfaces at the next :meth:`sync`); with ``answer_later`` the answer waits for
        :meth:`answer`; with ``rows``, only those rows of scores and states come back. With
        ``after_answer`` (and ``answer_later``) the request goes out the moment the next
        :meth:`answer` has read the answer awaited now, before handing it back: a pass's next
        block then waits for nothing but the answer before it."""
        header = {"op": "step", "score": score, "state": state, "reply": reply, **_sizes(block),
                  **_rows_field(rows)}
        arrays = block_arrays(block)
        if ends is not None and ends.any():
            arrays["ends"] = ends
        if reply and not answer_later:
            self._send(header, arrays)
            return self.answer()
        if after_answer and answer_later:
            self._next = (frame(header, arrays), (len(block), score, state))
            return Step()
        self._send(header, arrays, later=True)
        if answer_later:
            self._flush(wait=False)
            if self._pacer is not None:
                self._pacer.sent((len(block), score, state), time.perf_counter())
        return Step()

    def answer(self, *, reuse: bool = False) -> Step:
        """The answer to a step sent with ``answer_later``. With ``reuse``, arrays that came
        through the answer segment are in memory this object reuses: valid until the next
        ``answer(reuse=True)``."""
        _, got = self._answer(reuse=reuse)
        return Step(got.get("scores"), got.get("state"), got.get("gap"))

    def score(self, block: Interactions, *, rows: list[int] | None = None) -> np.ndarray:
        """Scores of the block (only ``rows`` of them, when given) without observing it."""
        _, got = self._call({"op": "score", **_sizes(block), **_rows_field(rows)}, block_arrays(block))
        if "scores" not in got:
            raise ModelError("the model process answered a score request without scores")
        return got["scores"]

    def search_space(self, trial: Any) -> dict[str, Any]:
        """The model's ``search_space(trial)``, run in its process: each suggestion it asks for
        is answered here by ``trial`` (an Optuna trial or a stand-in)."""
        self._send({"op": "space"})
        while True:
            header, _ = self._receive()
            kind = header.get("suggest")
            if kind is None:
                params = self._check(header).get("params")
                if not isinstance(params, dict):
                    raise ModelError(f"search_space() must return a dict, got {params!r}")
                return params
            method = {"float": "suggest_float", "int": "suggest_int",
                      "categorical": "suggest_categorical"}.get(kind)
            if method is None:
                raise ModelError(f"the model process asked for an unknown suggestion {kind!r}")
            value = getattr(trial, method)(header["name"], *header.get("args", []),
                                           **header.get("kwargs", {}))
            self._send({"value": value})

    def report(self) -> dict[str, Any] | None:
        """The model's ``fit_report`` attribute, when it has one."""
        report = self._call({"op": "report"})[0].get("report")
        return report if isinstance(report, dict) else None

    # -- transport -------------------------------------------------------------------------------

    def _send(self, header: dict[str, Any], arrays: dict[str, np.ndarray] | None = None,
              later: bool = False) -> None:
        """Send a request. One that needs no answer (``later``) may wait in the outbox, which
        goes out with the next request that does, or when it holds 64, as far as the socket
        takes it at once: a process that lags behind never holds up this one."""
        if self._next is not None:
            raise RuntimeError("a step waits to follow the answer awaited now: read that first")
        self._outbox.append(frame(header, arrays))
        if not later or len(self._outbox) >= 64:
            self._flush(wait=not later)

    def _flush(self, *, wait: bool) -> None:
        """Write the outbox and whatever earlier writes left queued, in order; without
        ``wait`` only as much as the socket takes now (the rest goes with a later flush)."""
        if self._outbox:
            self._queue.append(memoryview(framed(self._outbox)))
            self._outbox = []
        queue = self._queue
        try:
            while queue:
                item = queue[0]
                if not isinstance(item, memoryview):
                    if not self._conn.send_fd(item.fileno(), wait=wait):
                        return
                    item.close()
                else:
                    sent = self._conn.send_some(item, wait=wait)
                    if sent < len(item):
                        queue[0] = item[sent:]
                        return
                queue.popleft()
        except OSError as exc:
            raise ModelError(f"the model process has gone ({exc})") from None

    def _receive(self, reuse: bool = False) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        if self._queue or self._outbox:
            self._flush(wait=True)
        try:  # answers: never a model's
            return receive(self._conn, self._max_bytes, own=False, segment=self._segment,
                           into=self._scratch if reuse else None)
        except (EOFError, OSError):
            raise ModelError(f"the model process died{self._exit_note()}") from None
        except WireError as exc:
            raise ModelError(f"the model process broke the message format: {exc}") from None

    def _answer(self, on_progress: OnProgress | None = None, reuse: bool = False
                ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        pacer = self._pacer
        if pacer is not None:
            nap = pacer.nap(time.perf_counter())
            if nap:
                time.sleep(nap)
            self._conn.spin = pacer.spin()
        while True:
            header, arrays = self._receive(reuse)
            if "progress" not in header or "ok" in header:
                break
            done, total, unit = header["progress"], header.get("total"), header.get("unit")
            if not (_count(done) and (total is None or _count(total)) and isinstance(unit, str)
                    and len(unit) <= 20):
                raise ModelError(f"the model process sent a malformed progress count {header!r}")
            if on_progress is not None:
                on_progress(done, total, unit)
        if pacer is not None:
            pacer.came(self._conn.seen, time.perf_counter())
        if self._next is not None:
            request, kind = self._next
            self._next = None
            self._queue.append(memoryview(request))
            self._flush(wait=False)
            if pacer is not None:
                pacer.sent(kind, time.perf_counter())
        return self._check(header), arrays

    def _check(self, header: dict[str, Any]) -> dict[str, Any]:
        """The header of a successful answer; an error answer raised as the error it reports."""
        if header.get("ok") is True:
            return header
        message = str(header.get("message", "no reason given"))
        if header.get("kind") == "usage":
            raise UsageError(message)
        raise ModelError(message, header.get("traceback"))

    def _call(self, header: dict[str, Any], arrays: dict[str, np.ndarray] | None = None
              ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        self._send(header, arrays)
        return self._answer()

    def _exit_note(self) -> str:
        process = self._process
        if process is None or process.poll() is None:
            return ""
        code = process.returncode
        return f" (killed by signal {-code})" if code < 0 else f" (exit status {code})"


class ModelInfo:
    """A model class as the command line needs it (name, capabilities, parameter names), asked of
    the model's own process so that the asking process never imports the model's code."""

    def __init__(self, meta: dict[str, Any]) -> None:
        self.meta = meta
        self.__name__ = meta["class"].rpartition(":")[2]
        self.capabilities = frozenset(meta["capabilities"])

    def param_names(self) -> list[str]:
        return list(self.meta["param_names"])

    def check_params(self, params: dict[str, Any], name: str) -> None:
        """Reject unknown parameter names as the constructor would, with the known ones."""
        from harness.runner import check_param_names

        check_param_names(self.param_names(), params, name)


def describe_model(ref: ModelRef) -> ModelInfo:
    """Load ``ref`` in a model process (which checks its name and parameters) and describe it."""
    with ModelProcess.start(ref) as proc:
        return ModelInfo(proc.meta)


def _count(value: Any) -> bool:
    return type(value) is int and value >= 0


def _sizes(stream: Interactions) -> dict[str, int]:
    return {"n_users": int(stream.n_users), "n_items": int(stream.n_items)}


def _rows_field(rows: list[int] | None) -> dict[str, list[int]]:
    """The header field that asks for only some rows of an answer (none: all of them)."""
    return {} if rows is None else {"rows": [int(r) for r in rows]}


def _pickle_model(model: Any) -> bytes:
    module = type(model).__module__
    if module == "__main__":
        raise UsageError(
            f"{type(model).__name__} is defined in __main__, which the model's own process cannot "
            "import; define it in a module (a file on the Python path) and import it from there"
        )
    try:
        return pickle.dumps(model)
    except Exception as exc:
        raise UsageError(f"cannot hand {type(model).__name__} to its own process: {exc}") from None
