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
import resource
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import HarnessError, UsageError

if TYPE_CHECKING:
    from harness.api import Model
    from harness.checkpoints import Checkpoint
from harness.records import SCHEMA_VERSION, environment, new_run_id, write_record

__all__ = ["RunSpec", "RunsInterrupted", "StreamCache", "build_model", "resolve_model", "run_many",
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
    checkpoint: bool = True  # save an iterative model's state after every epoch
    resume: bool = False  # continue from the run's checkpoint when there is one


_IDENTITY = ("model", "dataset", "protocol", "params", "seed", "epochs", "plugin")


def finished_runs(specs: list[RunSpec], results: str | Path) -> tuple[list[Path], list[RunSpec]]:
    """The records of ``specs`` that already ended ``ok`` in ``results`` (the latest of each run),
    and the specs still to run."""
    from harness.records import load_records

    done: dict[str, Path] = {}
    for record in load_records(results) if Path(results).is_dir() else []:
        spec = record.get("spec") or {}
        if record["status"] == "ok" and isinstance(spec, dict):
            done[json.dumps([spec.get(k) for k in _IDENTITY], sort_keys=True)] = Path(record["_path"])
    paths, todo = [], []
    for spec in specs:
        key = json.dumps([asdict(spec)[k] for k in _IDENTITY], sort_keys=True)
        if key in done:
            paths.append(done[key])
        else:
            todo.append(spec)
    return paths, todo


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
    from harness.evaluate import Protocol, check_compatible, evaluate, prepare, preset_session_gap

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
            gap = preset_session_gap(spec.protocol.get("preset"), dataset.name) or dataset.session_gap
            protocol = Protocol(**{"session_gap": gap, **spec.protocol})
            record["protocol"] = protocol.to_dict()
            check_compatible(meta["capabilities"], protocol.name, spec.model)
            key = json.dumps([spec.dataset, protocol.to_dict(), data_fraction], sort_keys=True)
            if key not in cache.prepared:
                if data_fraction is not None:
                    stream = stream[: max(1, int(round(data_fraction * len(stream))))]
                cache.prepared[key] = (stream.counts(), prepare(stream, protocol))
            counts, prepared = cache.prepared[key]
            record["dataset"] = {"name": dataset.name, "sha256": dataset.sha256(), **counts,
                                 "kept_by_protocol": prepared.counts()}
            if data_fraction is not None:
                record["dataset"]["prefix_fraction"] = data_fraction
            checkpoint = None
            if spec.checkpoint:
                checkpoint = checkpoint_of(spec, meta["params"], dataset, protocol, data_fraction)
            result = evaluate(proc, prepared, protocol, epochs=spec.epochs, seed=spec.seed,
                              progress=spec.progress, on_epoch=watch, checkpoint=checkpoint,
                              resume=spec.resume)
            if checkpoint is not None:
                checkpoint.remove()  # the run is done: its record says what it found
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
        outcomes=result.outcomes,
        stream_summary=result.stream_summary,
        timing={**result.timing, "peak_rss_mb": _peak_rss_mb(), "wall_seconds": time.time() - started},
    )
    return record


def checkpoint_of(spec: RunSpec, params: dict[str, Any], dataset: Any, protocol: Any,
                  data_fraction: float | None = None) -> Checkpoint:
    """The checkpoint of a run: next to its records, named by what makes it the same run."""
    from harness.checkpoints import Checkpoint, run_key
    from harness.records import run_dir

    key = run_key({"model": spec.model, "plugin": spec.plugin, "params": params,
                   "dataset": dataset.sha256(), "protocol": protocol.to_dict(), "seed": spec.seed,
                   "epochs": spec.epochs, "data_fraction": data_fraction})
    name = f"{spec.model}-seed{spec.seed}-{key}.checkpoint"
    return Checkpoint(run_dir(spec.results, dataset.name, protocol.name) / name, key)


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


def _worker(spec: RunSpec, conn: Any) -> None:
    if spec.threads:  # before torch or a BLAS library is imported in this fresh process
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[name] = str(spec.threads)
    try:
        path = write_record(run_one(spec), spec.results)
        conn.send(str(path))
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group: the parent reports it
        pass
    except BaseException as exc:  # report even a crash in writing
        conn.send(f"error: {type(exc).__name__}: {exc}")


class RunsInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`run_many`: ``done`` holds the records written, ``pending`` the runs
    that did not finish (those with a checkpoint continue from it with ``resume``)."""

    def __init__(self, done: list[Path], pending: list[RunSpec]) -> None:
        super().__init__()
        self.done = done
        self.pending = pending


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`run_many`: ``paths`` holds the records of the runs that finished,
    ``running`` the spec that was stopped (it leaves no record)."""

    def __init__(self, paths: list[Path], running: RunSpec) -> None:
        super().__init__()
        self.paths = paths
        self.running = running


def run_many(specs: list[RunSpec], *, isolate: bool = True) -> list[Path]:
    """Run every spec (each in a fresh process when ``isolate``) and write one record each.

    Returns the record paths in the order of ``specs``; Ctrl-C raises :class:`RunsInterrupted`.
    """
    paths: list[Path] = []
    try:
        for spec in specs:
            paths.append(write_record(run_one(spec), spec.results) if not isolate else _isolated(spec))
    except KeyboardInterrupt:
        raise RunsInterrupted(paths, specs[len(paths):]) from None
    return paths


def _isolated(spec: RunSpec) -> Path:
    """One run in a fresh process; its answer comes through a pipe (no semaphore to leak)."""
    context = multiprocessing.get_context("spawn")
    reader, writer = context.Pipe(duplex=False)
    process = context.Process(target=_worker, args=(spec, writer), daemon=True)
    try:
        process.start()
        writer.close()
        process.join(spec.timeout)
        if process.is_alive():
            process.kill()
            process.join()
            record = _skeleton(spec)
            record.update(status="timeout", reason=f"stopped after the time limit of {spec.timeout:g} s")
            return write_record(record, spec.results)
        message = reader.recv() if reader.poll(10) else f"error: exit status {process.exitcode}"
    except KeyboardInterrupt:
        # The run stops between two writes (a terminal's Ctrl-C reaches it too), or is killed
        # after 10 s.
        if process.is_alive() and process.pid:
            os.kill(process.pid, signal.SIGINT)
            process.join(10)
        if process.is_alive():
            process.kill()
        process.join()
        raise
    except EOFError:
        message = f"error: exit status {process.exitcode}"
    finally:
        reader.close()
    if message.startswith("error: "):
        record = _skeleton(spec)
        record.update(status="failed", reason=f"the worker process died ({message[7:]})")
        return write_record(record, spec.results)
    return Path(message)
