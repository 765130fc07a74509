"""The model's own process: ``python -m harness._host FD`` serves one model over socket ``FD``.

Started by :class:`harness.sandbox.ModelProcess`. It imports the model, keeps it, and answers the
evaluator's requests one at a time; ``fork`` makes a copy of this process that serves a new
channel (a validation or test pass, or an audit). It holds the training events and the blocks it
has been asked about, nothing else. Everything here runs beside the model's code, so nothing here
is trusted: the evaluator checks every answer on its own side.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import pickle
import sys
import time
import traceback
from collections.abc import Iterator
from multiprocessing.reduction import recv_handle
from typing import Any

import numpy as np

from harness._wire import Channel, receive, send
from harness.errors import HarnessError
from harness.interactions import Interactions
from harness.sandbox import _COLUMNS, _die_with_parent, answer_block, model_meta, pick_rows, plain_array


class _Host:
    def __init__(self) -> None:
        self.model: Any = None
        self.meta: dict[str, Any] = {}
        self.children: set[int] = set()
        self.pending_error: dict[str, Any] | None = None
        self.conn: Channel | None = None
        #: The answer segment the evaluator shares with this process (this process only).
        self.segment: np.ndarray | None = None

    # -- requests ---------------------------------------------------------------------------------

    def load(self, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
        from harness.runner import build_model, resolve_model

        if header.get("pickled"):
            self.model = pickle.loads(arrays["model"].tobytes())
            cls = type(self.model)
        else:
            cls = resolve_model(header["name"], header.get("plugin"))
            self.model = build_model(cls, dict(header.get("params") or {}), header["name"])
        self.meta = model_meta(cls, self.model, header["name"])
        if "device" in self.meta["params"]:
            self.meta["device"] = _device_info(self.meta["params"]["device"])
        return {"meta": self.meta}

    def fit(self, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
        if header.get("stream_summary") is not None:
            self.model.use_stream_summary(dict(header["stream_summary"]))
        with self._progress():
            self.model.fit(_block(header, arrays), seed=int(header["seed"]))
        return {}

    def train_epoch(self, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
        with self._progress():
            return {"losses": dict(self.model.train_epoch() or {})}

    @contextlib.contextmanager
    def _progress(self) -> Iterator[None]:
        """While the block runs, :func:`harness.api.progress` sends its counts to the evaluator
        (frames before the reply, at most five a second, and the last count)."""
        import harness.api

        assert self.conn is not None
        conn, last = self.conn, [0.0]

        def send_count(done: int, total: int | None, unit: str) -> None:
            now = time.monotonic()
            if now - last[0] >= 0.2 or done == total:
                last[0] = now
                send(conn, {"progress": done, "total": total, "unit": unit})

        harness.api._progress_hook = send_count
        try:
            yield
        finally:
            harness.api._progress_hook = None

    def sync(self, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
        return {}

    def checkpoint(self, header: dict[str, Any], arrays: dict[str, np.ndarray]):
        """The model and the global random states, pickled (the evaluator stores the bytes)."""
        state = pickle.dumps({"model": self.model, "random": _random_states()}, protocol=5)
        return {}, {"state": np.frombuffer(state, np.int8)}

    def restore(self, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
        """Continue from a :meth:`checkpoint`: its model replaces this one, its random states
        replace the global ones."""
        state = pickle.loads(arrays["state"].tobytes())
        self.model = state["model"]
        _set_random_states(state["random"])
        return {}

    def poll(self, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
        assert self.conn is not None
        self.conn.spin = min(max(float(header["seconds"]), 0.0), 0.05)
        return {}

    def space(self, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
        assert self.conn is not None
        return {"params": type(self.model).search_space(_TrialProxy(self.conn))}

    def report(self, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
        report = getattr(self.model, "fit_report", None)
        return {"report": report if isinstance(report, dict) else None}

    def score(self, header: dict[str, Any], arrays: dict[str, np.ndarray]):
        scores = plain_array(self.model.score(_block(header, arrays)), "score", False)
        return {}, {"scores": pick_rows(scores, _rows(header))}

    def step(self, header: dict[str, Any], arrays: dict[str, np.ndarray]):
        block = _block(header, arrays)
        return {}, answer_block(self.model, block, score=bool(header.get("score")),
                                state=bool(header.get("state")), ends=arrays.get("ends"), fresh=False,
                                rows=_rows(header))

    # -- serving ----------------------------------------------------------------------------------

    def serve(self, conn: Channel) -> None:
        """Answer requests until ``exit`` or until the evaluator closes the channel."""
        self.conn = conn
        while True:
            self._reap()
            try:
                header, arrays = receive(conn)
            except (EOFError, OSError):
                return
            op = header.get("op")
            if op == "exit":
                return
            if op == "fork":
                self._fork(conn)
                continue
            if op == "segment":
                self._map_segment(conn)
                continue
            reply = header.get("reply", True)
            if self.pending_error is not None and reply:
                try:
                    send(conn, self.pending_error)
                except OSError:
                    return
                self.pending_error = None
                continue
            try:
                handler = getattr(self, str(op))
                result = handler(header, arrays)
                fields, out = result if isinstance(result, tuple) else (result, {})
                message: dict[str, Any] = {"ok": True, **fields}
            except BaseException as exc:  # the model's errors go back as answers
                message, out = _error(exc), {}
            if reply:
                try:
                    send(conn, message, out, self.segment)
                except OSError:  # the evaluator has gone (Ctrl-C): nobody is left to answer
                    return
            elif not message["ok"]:
                self.pending_error = message

    def _map_segment(self, conn: Channel) -> None:
        """Write large answers from now on to the memory segment whose descriptor follows."""
        fd = recv_handle(conn)
        try:
            self.segment = np.frombuffer(mmap.mmap(fd, os.fstat(fd).st_size), np.uint8)
        except (OSError, ValueError):
            pass  # answers keep going over the socket
        finally:
            os.close(fd)

    def _fork(self, conn: Channel) -> None:
        fd = recv_handle(conn)
        pid = os.fork()
        if pid == 0:
            conn.close()
            self.children.clear()
            self.segment = None  # its parent's answers go there
            _die_with_parent()
            _one_thread_after_fork()
            _reuse_freed_memory()
            try:
                self.serve(Channel.from_fd(fd))
            finally:
                os._exit(0)
        os.close(fd)
        self.children.add(pid)
        send(conn, {"ok": True, "pid": pid})

    def _reap(self) -> None:
        for pid in list(self.children):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                self.children.discard(pid)


class _TrialProxy:
    """Stands in for an Optuna trial in ``search_space``: each suggestion is asked of the
    evaluator's side, which holds the real trial."""

    def __init__(self, conn: Channel) -> None:
        self._conn = conn

    def _ask(self, kind: str, name: str, *args: Any, **kwargs: Any) -> Any:
        send(self._conn, {"suggest": kind, "name": name, "args": list(args), "kwargs": kwargs})
        return receive(self._conn)[0]["value"]

    def suggest_float(self, name: str, low: float, high: float, **kwargs: Any) -> Any:
        return self._ask("float", name, low, high, **kwargs)

    def suggest_int(self, name: str, low: int, high: int, **kwargs: Any) -> Any:
        return self._ask("int", name, low, high, **kwargs)

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        return self._ask("categorical", name, list(choices))


def _rows(header: dict[str, Any]) -> list[int] | None:
    """The rows an audit asks for (non-negative ints), if any."""
    rows = header.get("rows")
    if isinstance(rows, list) and all(type(r) is int and r >= 0 for r in rows):
        return rows
    return None


def _block(header: dict[str, Any], arrays: dict[str, np.ndarray]) -> Interactions:
    """The received columns as a stream (the arrays are already owned and read-only)."""
    n = len(arrays["user"])
    columns: dict[str, Any] = {name: arrays.get(name) for name in _COLUMNS}
    if columns["features"] is None:
        features = np.zeros((n, 0), np.float32)
        features.flags.writeable = False
        columns["features"] = features
    return Interactions(**columns, n_users=int(header["n_users"]), n_items=int(header["n_items"]),
                        name="block")


def _device_info(device: Any) -> dict[str, Any]:
    """The device a ``device`` parameter resolves to here, with the GPU's name."""
    from harness.api import resolve_device

    used = resolve_device(str(device))
    gpu = None
    if used.type == "cuda":
        import torch

        gpu = torch.cuda.get_device_name(used)
    return {"requested": str(device), "used": str(used), "gpu": gpu}


def _error(exc: BaseException) -> dict[str, Any]:
    kind = "usage" if isinstance(exc, HarnessError) and not _is_model_error(exc) else "model"
    message = str(exc) if kind == "usage" else f"{type(exc).__name__}: {exc}"
    return {"ok": False, "kind": kind, "message": message, "traceback": traceback.format_exc()}


def _is_model_error(exc: BaseException) -> bool:
    from harness.sandbox import ModelError

    return isinstance(exc, ModelError)


def _random_states() -> dict[str, Any]:
    import random

    states: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state()}
    torch = sys.modules.get("torch")
    if torch is not None:
        states["torch"] = torch.get_rng_state()
    return states


def _set_random_states(states: dict[str, Any]) -> None:
    import random

    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    if "torch" in states:
        import torch

        torch.set_rng_state(states["torch"])


def _one_thread_after_fork() -> None:
    """OpenMP thread pools do not survive a fork: a fork computes on one torch thread."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() > 1:
        torch.set_num_threads(1)


def _reuse_freed_memory() -> None:
    """A fork serves one pass and ends: let it keep freed memory for its next allocations.
    glibc's default gives every block over 32 MB a fresh mapping and returns it on free, so a
    94k-item score product pays a page fault per 4 KiB on every call (a third of its time)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.mallopt(-4, 0)  # M_MMAP_MAX: large blocks from the heap (mmap only as a fallback)
        libc.mallopt(-1, 2**31 - 1)  # M_TRIM_THRESHOLD: keep freed memory at the heap's top
    except Exception:  # not glibc: nothing to tune
        pass


def main() -> None:
    fd = int(sys.argv[1])
    sys.argv = sys.argv[:1]  # nothing about the run (a dataset path) stays visible
    _die_with_parent()
    _Host().serve(Channel.from_fd(fd))


if __name__ == "__main__":
    main()
