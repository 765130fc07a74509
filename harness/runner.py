"""Runs (model, dataset, protocol, seed) jobs, each in its own process, and writes run records.

Workers receive names and parameters and resolve plugins themselves (registries filled in the
parent are not inherited by spawned processes). One failing or hanging model does not stop the
others: its record says ``failed`` or ``timeout``.
"""

from __future__ import annotations

import inspect
import json
import multiprocessing
import os
import queue as queue_module
import resource
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import HarnessError, UsageError

if TYPE_CHECKING:
    from harness.api import Model
from harness.records import SCHEMA_VERSION, environment, new_run_id, write_record

__all__ = ["Interrupted", "RunSpec", "StreamCache", "build_model", "resolve_model", "run_many",
           "run_one"]


@dataclass
class RunSpec:
    """One run: what to evaluate, on what, how. Everything here goes into the run record."""

    model: str
    dataset: str
    protocol: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    epochs: int | None = None
    plugin: str | None = None  # "package.module:Class" for a model no distribution registers
    results: str = "results"
    timeout: float | None = None
    progress: bool = False
    threads: int | None = 1  # CPU threads per run: small per-batch kernels are slower with more


def resolve_model(name: str, plugin: str | None = None) -> type[Model]:
    """The model class for a registered name, or for ``plugin`` (``package.module:Class``)."""
    from harness.api import Model
    from harness.registry import default_registry, load_object

    if plugin:
        try:
            cls = load_object(plugin)
        except (ImportError, AttributeError) as exc:
            raise UsageError(f"--plugin {plugin}: cannot import it ({exc}); check the module path "
                             "and that its directory is on PYTHONPATH") from exc
    else:
        cls = default_registry("models").get(name)
    if not (isinstance(cls, type) and issubclass(cls, Model)):
        raise UsageError(f"model {name!r} ({plugin or 'entry point'}) is not a harness.api.Model "
                         f"subclass: got {cls!r}")
    return cls


def check_param_names(known: list[str], params: dict[str, Any], name: str) -> None:
    """Reject parameters the constructor does not take, naming the closest and the known ones."""
    unknown = sorted(set(params) - set(known))
    if unknown:
        from harness.errors import did_you_mean

        raise UsageError(f"model {name!r}: " + did_you_mean(unknown[0], known, "parameter"))


def build_model(cls: type[Model], params: dict[str, Any], name: str) -> Model:
    """Instantiate with keyword parameters, rejecting unknown ones with the list of known ones."""
    check_param_names(cls.param_names(), params, name)
    return cls(**params)


def changed_params(cls: type[Model], params: dict[str, Any]) -> dict[str, Any]:
    """Parameters that differ from the constructor's defaults (used to label leaderboard rows)."""
    defaults = {p.name: p.default for p in inspect.signature(cls).parameters.values()}
    return {k: v for k, v in params.items() if defaults.get(k, inspect.Parameter.empty) != v}


@dataclass
class StreamCache:
    """Datasets and prepared splits kept across the runs of one process (tuning trials, grids)."""

    datasets: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    prepared: dict[str, tuple[dict[str, int], Any]] = field(default_factory=dict)

    def dataset(self, spec: str, progress: bool = False) -> tuple[Any, Any]:
        if spec not in self.datasets:
            from harness.data import open_dataset

            dataset = open_dataset(spec, progress=progress)
            self.datasets[spec] = (dataset, dataset.load())
        return self.datasets[spec]


class _Stopped(Exception):
    """Raised when the ``on_epoch`` callback stops a run (an Optuna trial being pruned)."""


def run_one(
    spec: RunSpec,
    *,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    data_fraction: float | None = None,
    cache: StreamCache | None = None,
) -> dict[str, Any]:
    """Evaluate one run in this process and return its record (not written).

    ``on_epoch`` sees every epoch's record; if it raises, the run stops and the record's status
    is ``pruned``. ``data_fraction`` keeps only that leading share of the stream (runtime grids).
    """
    from harness.evaluate import Protocol, check_compatible, evaluate, prepare

    cache = cache or StreamCache()
    started = time.time()
    record: dict[str, Any] = _skeleton(spec)
    epochs: list[dict[str, Any]] = []

    def watch(epoch: dict[str, Any]) -> None:
        epochs.append(epoch)
        if on_epoch is not None:
            try:
                on_epoch(epoch)
            except Exception as exc:
                raise _Stopped(str(exc)) from exc

    try:
        from harness.sandbox import ModelError, ModelProcess, ModelRef

        # The model is imported only in its own process, which never sees the evaluation events.
        proc = ModelProcess.start(ModelRef(spec.model, spec.plugin, spec.params), threads=spec.threads)
        with proc:
            meta = proc.meta
            record["params"] = meta["params"]
            record["params_changed"] = meta["params_changed"]
            record["plugin"] = meta["class"]
            if "device" in meta:  # torch models: the device the run computes on, the GPU's name
                record["environment"]["device"] = meta["device"]
            dataset, stream = cache.dataset(spec.dataset, spec.progress)
            protocol = Protocol(**{"session_gap": dataset.session_gap, **spec.protocol})
            record["protocol"] = protocol.to_dict()
            check_compatible(meta["capabilities"], protocol.name, spec.model)
            key = json.dumps([spec.dataset, protocol.to_dict(), data_fraction], sort_keys=True)
            if key not in cache.prepared:
                if data_fraction is not None:
                    stream = stream[: max(1, int(round(data_fraction * len(stream))))]
                cache.prepared[key] = (stream.counts(), prepare(stream, protocol))
            counts, prepared = cache.prepared[key]
            record["dataset"] = {"name": dataset.name, "sha256": dataset.sha256(), **counts}
            if data_fraction is not None:
                record["dataset"]["prefix_fraction"] = data_fraction
            result = evaluate(proc, prepared, protocol, epochs=spec.epochs, seed=spec.seed,
                              progress=spec.progress, on_epoch=watch)
    except _Stopped as exc:
        last = epochs[-1]["epoch"] if epochs else 0
        return {**record, "status": "pruned", "epochs": epochs,
                "reason": f"pruned at epoch {last}" + (f": {exc}" if str(exc) else ""),
                "timing": {"wall_seconds": time.time() - started,
                           "samples": {"epoch_fit_seconds": [e["fit_seconds"] for e in epochs]}}}
    except ModelError as exc:
        failed = {**record, "status": "failed", "reason": str(exc), "epochs": epochs}
        return {**failed, "traceback": exc.traceback} if exc.traceback else failed
    except HarnessError as exc:
        return {**record, "status": "failed", "reason": str(exc), "epochs": epochs}
    except Exception as exc:  # a bug must become a failed record, not a crash
        return {**record, "status": "failed", "reason": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(), "epochs": epochs}
    record.update(
        status="ok",
        metrics=result.metrics,
        epochs=result.epochs,
        best_epoch=result.best_epoch,
        notes=result.notes,
        model_report=result.model_report,
        audit=result.audit,
        timing={**result.timing, "peak_rss_mb": _peak_rss_mb(), "wall_seconds": time.time() - started},
    )
    return record


def _skeleton(spec: RunSpec) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": new_run_id(),
        "status": "failed",
        "model": spec.model,
        "params": spec.params,
        "dataset": {"name": spec.dataset},
        "protocol": {"name": spec.protocol.get("name", "streaming"), **spec.protocol},
        "seed": spec.seed,
        "epochs_requested": spec.epochs,
        "metrics": {},
        "epochs": [],
        "timing": {},
        "environment": environment(),
        "spec": asdict(spec),
    }


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def _worker(spec: RunSpec, queue: Any) -> None:
    # Ctrl-C is the parent's to handle; it ends this process with SIGTERM, which exits cleanly
    # (the model's processes and tqdm's semaphore are released, nothing is left behind)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if spec.threads:  # before torch or a BLAS library is imported in this fresh process
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[name] = str(spec.threads)
    try:
        path = write_record(run_one(spec), spec.results)
        queue.put(str(path))
    except BaseException as exc:  # report even a crash in writing
        queue.put(f"error: {type(exc).__name__}: {exc}")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`run_many`: ``paths`` holds the records of the runs that finished,
    ``running`` the spec that was stopped (it leaves no record)."""

    def __init__(self, paths: list[Path], running: RunSpec) -> None:
        super().__init__()
        self.paths = paths
        self.running = running


def run_many(specs: list[RunSpec], *, isolate: bool = True) -> list[Path]:
    """Run every spec (each in a fresh process when ``isolate``) and write one record each.

    Returns the record paths in the order of ``specs``. Ctrl-C stops the running run's process
    and raises :class:`Interrupted`.
    """
    paths: list[Path] = []
    for spec in specs:
        try:
            paths.append(_run_isolated(spec) if isolate else write_record(run_one(spec), spec.results))
        except KeyboardInterrupt:
            raise Interrupted(paths, spec) from None
    return paths


def _run_isolated(spec: RunSpec) -> Path:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_worker, args=(spec, queue), daemon=True)
    process.start()
    try:
        process.join(spec.timeout)
        if process.is_alive():
            process.kill()
            process.join()
            record = _skeleton(spec)
            record.update(status="timeout", reason=f"stopped after the time limit of {spec.timeout:g} s")
            return write_record(record, spec.results)
        try:
            message = queue.get(timeout=10)
        except queue_module.Empty:
            message = f"error: exit status {process.exitcode}"
    finally:  # also on Ctrl-C: the worker (and with it the model's process) ends here
        if process.is_alive():
            process.terminate()
            process.join(10)
        if process.is_alive():
            process.kill()
            process.join()
        queue.close()
        queue.join_thread()
    if message.startswith("error: "):
        record = _skeleton(spec)
        record.update(status="failed", reason=f"the worker process died ({message[7:]})")
        return write_record(record, spec.results)
    return Path(message)
