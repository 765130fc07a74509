"""Hyper-parameter tuning and experiment grids on Optuna studies.

A study lives in an Optuna storage, by default the journal file ``RESULTS/optuna.journal``
(Optuna's recommended storage for several processes on one machine: an append-only log guarded
by a file lock, no server, no SQLite "database is locked" errors). Any Optuna storage URL works
too (``sqlite:///path.db``, ``postgresql://...``, ``mysql://...``), so that workers on several
machines share one study through a database server.

Trial accounting, the same for ``tune`` and ``grid``: a study asks for ``N`` trials in all. A
trial *counts* when it is complete, pruned, failed by its own error, or running. A worker takes
a new trial only while fewer than ``N`` count, and that check and the creation of the trial
happen under a lock that every worker of the study holds in turn: a file lock beside a journal
or SQLite file, a PostgreSQL advisory lock on a server (so workers on several machines never
overshoot either). Only on other servers (MySQL), which have no such lock here, a trial whose
number comes after ``N`` counted ones is told ``FAIL`` at once, marked ``surplus`` and never run.

Workers that die: a trial stopped by Ctrl-C, or left running by a worker of this machine that
is gone (its pid), or by a worker on a database server that stopped sending Optuna's heartbeat
(``heartbeat`` seconds, stale after twice that), is marked ``interrupted``, stops counting, and
is queued again with the same parameters; a live worker takes it. A worker whose share is done
waits while other workers' trials run, so that it can retry one whose worker dies. Running the
same command again resumes an interrupted study.

Every trial writes a run record with ``record["tuning"] = {study, trial, storage, ...}``;
pruned trials have status ``pruned``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import socket
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import HarnessError, UsageError

__all__ = [
    "DEFAULT_STORAGE_FILE",
    "Override",
    "StudyHandle",
    "describe_space",
    "objective_metric",
    "open_storage",
    "parse_override",
    "tune",
    "tune_study_name",
    "tuned_params",
]

DEFAULT_STORAGE_FILE = "optuna.journal"
_METRIC_DIRECTION = {"mae": "minimize"}


# -- storage ---------------------------------------------------------------------------------


#: Seconds between a trial's heartbeats on a database server (a trial is stale after twice that).
DEFAULT_HEARTBEAT = 10
_POLL_SECONDS = 0.5
#: Key of the PostgreSQL advisory lock that serialises the workers of a server ("harn").
_ADVISORY_KEY = 0x6861726E


@dataclass
class StudyHandle:
    """An opened Optuna storage, how to show it, and the lock that serialises its workers: a
    file lock (``lock_path``) or a PostgreSQL advisory lock (``engine``), else none."""

    storage: Any
    display: str
    lock_path: Path | None
    engine: Any = None

    @property
    def locked(self) -> bool:
        """Whether :meth:`lock` really excludes the other workers."""
        return self.lock_path is not None or self.engine is not None

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the workers' lock (a no-op for a server without one, see the module notes)."""
        if self.engine is not None:
            with _advisory_lock(self.engine):
                yield
            return
        if self.lock_path is None:
            yield
            return
        import fcntl

        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _advisory_lock(engine: Any) -> Iterator[None]:
    """PostgreSQL's session advisory lock of the harness, held on a connection of ``engine``."""
    from sqlalchemy import text

    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _ADVISORY_KEY})
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _ADVISORY_KEY})
            conn.commit()


def open_storage(storage: str | None, results: str | Path = "results",
                 heartbeat: int = DEFAULT_HEARTBEAT) -> StudyHandle:
    """Open ``storage``: ``None`` for ``RESULTS/optuna.journal``, a file path (a journal file, or
    SQLite when it ends in ``.db``/``.sqlite``/``.sqlite3``), or an Optuna storage URL
    (``postgresql://user:password@host/db`` needs ``pip install "harness[postgres]"``). Trials on
    a database send a heartbeat every ``heartbeat`` seconds."""
    import optuna
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend

    _quiet_optuna()
    if heartbeat < 1:
        raise UsageError(f"--heartbeat must be at least 1 second, got {heartbeat}")
    beats: dict[str, Any] = {"heartbeat_interval": heartbeat, "grace_period": 2 * heartbeat,
                             "heartbeat_stale_trial_callback": _stale}
    if storage is None:
        storage = str(Path(results) / DEFAULT_STORAGE_FILE)
    if storage.startswith("sqlite:///") or "://" not in storage and storage.endswith(
        (".db", ".sqlite", ".sqlite3")
    ):
        path = Path(storage[len("sqlite:///"):] if storage.startswith("sqlite:///") else storage)
        path.parent.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{path}"
        # A long timeout lets local workers wait for SQLite's write lock instead of failing.
        rdb = RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}}, **beats)
        return StudyHandle(rdb, url, path.parent / (path.name + ".harness-lock"))
    if storage.startswith("redis://"):
        from optuna.storages.journal import JournalRedisBackend

        return StudyHandle(JournalStorage(JournalRedisBackend(storage)), storage, None)
    if "://" in storage:
        shown = _hide_password(storage)
        scheme = storage.split("://", 1)[0]
        if scheme == "postgres":
            raise UsageError(f"--storage {shown}: write the URL as postgresql://user:password@host/"
                             "database (the psycopg 3 driver of `pip install \"harness[postgres]\"`)")
        if scheme == "postgresql" and not _importable("psycopg"):
            raise UsageError(f"--storage {shown}: the PostgreSQL driver is not installed; "
                             'pip install "harness[postgres]"')
        try:
            engine = None
            if scheme.startswith("postgresql"):  # workers started together: create the tables once
                import sqlalchemy

                engine = sqlalchemy.create_engine(storage, pool_pre_ping=True)
            with _advisory_lock(engine) if engine is not None else contextlib.nullcontext():
                rdb = RDBStorage(storage, engine_kwargs={"pool_pre_ping": True}, **beats)
        except (ImportError, ModuleNotFoundError, optuna.exceptions.OptunaError) as exc:
            raise UsageError(f"--storage {shown}: cannot open it ({exc}); "
                             "install the database driver or check the URL") from exc
        except Exception as exc:  # sqlalchemy's errors: a wrong URL or an unreachable server
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise UsageError(f"--storage {shown}: cannot open it "
                             f"({type(exc).__name__}: {first}); check the URL and that the "
                             "server is running") from exc
        return StudyHandle(rdb, shown, None, engine)
    path = Path(storage)
    path.parent.mkdir(parents=True, exist_ok=True)
    backend = JournalFileBackend(str(path))
    return StudyHandle(JournalStorage(backend), str(path), path.parent / (path.name + ".harness-lock"))


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _stale(study: Any, trial: Any) -> None:
    """Optuna's callback for a trial whose worker stopped sending heartbeats: queue it again."""
    _interrupt(study, trial, "its worker stopped sending heartbeats")


def _hide_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" in rest and ":" in rest.split("@", 1)[0]:
        user = rest.split("@", 1)[0].split(":", 1)[0]
        rest = f"{user}:***@{rest.split('@', 1)[1]}"
    return scheme + sep + rest


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # The harness drives trials with ask and tell and records their heartbeats itself (_heartbeat).
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")


def load_or_create(
    handle: StudyHandle, name: str, direction: str, config: dict[str, Any], sampler: Any, pruner: Any
) -> Any:
    """Create study ``name`` or load it; loading checks that it was made by the same command."""
    import optuna

    study = optuna.create_study(storage=handle.storage, study_name=name,
                                direction=direction,  # type: ignore[arg-type]  # "minimize"|"maximize"
                                sampler=sampler, pruner=pruner, load_if_exists=True)
    with handle.lock():
        stored = study.user_attrs.get("harness")
        if stored is None:
            study.set_user_attr("harness", config)
            stored = config
    if stored != json.loads(json.dumps(config)):
        diff = {k: (stored.get(k), config.get(k)) for k in sorted(set(stored) | set(config))
                if stored.get(k) != json.loads(json.dumps(config.get(k)))}
        shown = "; ".join(f"{k}: study has {a!r}, this command {b!r}" for k, (a, b) in diff.items())
        raise UsageError(f"study {name!r} in {handle.display} was made by another command ({shown}); "
                         "repeat that command to resume it, or pass --study NEW_NAME")
    return study


# -- trial accounting ------------------------------------------------------------------------


def _worker_id() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _counts(trial: Any, retried: set[int]) -> bool:
    """Whether a trial uses up one of the study's requested trials (see the module notes);
    ``retried`` holds the numbers of the trials queued again (their retries count instead)."""
    from optuna.trial import TrialState

    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING):
        return True
    return trial.state == TrialState.FAIL and not (
        trial.user_attrs.get("interrupted") or trial.user_attrs.get("surplus")
        or trial.number in retried)


def _retried(trials: list[Any]) -> set[int]:
    return {int(t.user_attrs["retry_of"]) for t in trials if t.user_attrs.get("retry_of") is not None}


def _counted(trials: list[Any]) -> int:
    retried = _retried(trials)
    return sum(_counts(t, retried) for t in trials)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _interrupt(study: Any, trial: Any, reason: str) -> None:
    """Mark a running trial interrupted and queue its parameters again."""
    import optuna
    from optuna.trial import TrialState

    storage = study._storage  # noqa: SLF001 - attributes of a trial another process left running
    with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):  # failed for its heartbeat
        storage.set_trial_user_attr(trial._trial_id, "interrupted", reason)  # noqa: SLF001
    with contextlib.suppress(Exception):  # another worker may have finished it meanwhile
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)  # noqa: SLF001
    system = {k: v for k, v in trial.system_attrs.items() if k in ("grid_id", "search_space")}
    user = {k: v for k, v in trial.user_attrs.items()
            if k not in ("worker", "interrupted", "retry_reason")}
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
        user_attrs={**user, "retry_of": trial.number, "retry_reason": reason},
        system_attrs={**system, "fixed_params": dict(trial.params)},
    ))


def _reap_stale(study: Any, locked: bool = True) -> None:
    """Trials left running by a dead worker of this machine (or by this very process) are
    interrupted: nobody will finish them. Called under the workers' lock, so a running trial
    not yet tagged with its worker was left by one that died between creating and tagging it."""
    from optuna.trial import TrialState

    me = _worker_id()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker")
        if not worker and locked:
            _interrupt(study, trial, "its worker stopped before it started")
            continue
        if not worker or worker.get("host") != me["host"]:
            continue
        if worker.get("pid") == me["pid"] or not _alive(int(worker.get("pid", -1))):
            _interrupt(study, trial, f"worker pid {worker.get('pid')} stopped while it ran")


@contextlib.contextmanager
def _heartbeat(study: Any, trial: Any) -> Iterator[None]:
    """Record the trial's heartbeat on a database server while the block runs (a thread, as
    Optuna's own ``optimize`` does), so that other workers can tell when this one dies."""
    import threading

    storage = study._storage  # noqa: SLF001 - the storage Optuna's heartbeat API works on
    interval = getattr(storage, "get_heartbeat_interval", lambda: None)()
    if interval is None:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            with contextlib.suppress(Exception):  # a lost beat only risks a late retry
                storage.record_heartbeat(trial._trial_id)  # noqa: SLF001
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name="harness-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _drive(
    study: Any,
    handle: StudyHandle,
    n_trials: int,
    make_sampler: Callable[[int], Any],
    run: Callable[[Any], tuple[Any, float | None]],
    timeout: float | None = None,
    log: Callable[[str], None] | None = None,
    max_failures: int = 3,
) -> int:
    """Take trials until ``n_trials`` count in the study (or ``timeout`` seconds passed); run each
    with ``run(trial) -> (TrialState, value)``. Returns how many this worker ran; stops with an
    error when ``max_failures`` trials in a row fail (a broken model or dataset)."""
    import optuna
    from optuna.trial import TrialState

    started = time.monotonic()
    ran = failures = 0
    while timeout is None or time.monotonic() - started < timeout:
        with handle.lock():
            optuna.storages.fail_stale_trials(study)  # heartbeats (database servers only)
            _reap_stale(study, locked=handle.locked)
            trials = study.get_trials(deepcopy=False)
            full = _counted(trials) >= n_trials
            if not full:
                study.sampler = make_sampler(len(trials))
                trial = study.ask()
                trial.set_user_attr("worker", _worker_id())
        if full:
            if not any(t.state == TrialState.RUNNING for t in trials):
                break
            time.sleep(_POLL_SECONDS)  # another worker's trial may yet need a retry
            continue
        if not handle.locked:
            before = [t for t in study.get_trials(deepcopy=False) if t.number < trial.number]
            if _counted(before) >= n_trials:
                trial.set_user_attr("surplus", True)
                study.tell(trial, state=TrialState.FAIL)
                continue
        try:
            with _heartbeat(study, trial):
                state, value = run(trial)
            if state == TrialState.COMPLETE:
                study.tell(trial, value)
            else:
                study.tell(trial, state=state)
        except optuna.exceptions.UpdateFinishedTrialError:
            # Other workers took this trial for dead (no heartbeat within the grace period) and
            # queued it again: its retry counts, this result does not.
            if log is not None:
                log(f"trial {trial.number}: given up by other workers while it ran (no heartbeat "
                    "for twice --heartbeat); its retry counts instead")
            continue
        except KeyboardInterrupt:
            _interrupt(study, study._storage.get_trial(trial._trial_id), "interrupted by Ctrl-C")  # noqa: SLF001
            raise
        except BaseException:
            study.tell(trial, state=TrialState.FAIL)
            raise
        ran += 1
        reason = study._storage.get_trial(trial._trial_id).user_attrs.get("reason")  # noqa: SLF001
        if log is not None:
            shown = f"{value:.4g}" if isinstance(value, float) and math.isfinite(value) else "-"
            log(f"trial {trial.number}: {state.name.lower()} {shown} {json.dumps(trial.params)}"
                + (f" ({reason})" if reason else ""))
        failures = failures + 1 if state == TrialState.FAIL else 0
        if failures >= max_failures:
            raise HarnessError(f"stopped after {failures} trials in a row failed; the last: {reason}")
    return ran


# -- search spaces ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Override:
    """A user's restriction of one search-space parameter: a ``low:high`` range or choices."""

    name: str
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] | None = None

    def __str__(self) -> str:
        if self.choices is not None:
            return f"{self.name}={','.join(json.dumps(c) for c in self.choices)}"
        return f"{self.name}={self.low:g}:{self.high:g}"


def parse_override(text: str) -> Override:
    """``lr=1e-4:1e-2`` (a range) or ``dim=32,64`` (choices, JSON where they parse)."""
    name, sep, raw = text.partition("=")
    name = name.strip()
    if not sep or not name or not raw:
        raise UsageError(f"--space takes KEY=LOW:HIGH or KEY=A,B,C, got {text!r}")
    if ":" in raw and "," not in raw:
        lo, _, hi = raw.partition(":")
        try:
            low, high = float(lo), float(hi)
        except ValueError:
            raise UsageError(f"--space {text}: LOW and HIGH must be numbers, like lr=1e-4:1e-2") from None
        if not low <= high:
            raise UsageError(f"--space {text}: `low <= high` must hold, but got low={low:g}, high={high:g}")
        return Override(name, low=low, high=high)
    choices = []
    for part in raw.split(","):
        try:
            choices.append(json.loads(part))
        except json.JSONDecodeError:
            choices.append(part)
    return Override(name, choices=tuple(choices))


class _SpaceTrial:
    """Hands a model's suggestions to an Optuna trial, with the user's overrides and fixed values
    applied; other attributes pass through."""

    def __init__(self, trial: Any, overrides: dict[str, Override], fixed: dict[str, Any]) -> None:
        self._trial = trial
        self._overrides = overrides
        self._fixed = fixed
        self.seen: dict[str, str] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._trial, name)

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> Any:
        return self._numeric(name, float, low, high, step=step, log=log)

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> Any:
        return self._numeric(name, int, low, high, step=step, log=log)

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        self.seen[name] = "choice of " + ", ".join(map(repr, choices))
        if name in self._fixed:
            return self._fixed[name]
        override = self._overrides.get(name)
        if override is not None:
            if override.choices is not None:
                choices = list(override.choices)
            else:
                low, high = override.low, override.high
                assert low is not None and high is not None  # a range when there are no choices
                choices = [c for c in choices if isinstance(c, (int, float)) and low <= c <= high]
                if not choices:
                    raise UsageError(f"--space {override}: no choice of {name!r} lies in that range")
        return self._trial.suggest_categorical(name, list(choices))

    def _numeric(self, name: str, kind: type, low: Any, high: Any, *, step: Any, log: bool) -> Any:
        self.seen[name] = f"{kind.__name__} in [{low:g}, {high:g}]" + (" (log)" if log else "")
        if name in self._fixed:
            return self._fixed[name]
        override = self._overrides.get(name)
        if override is not None and override.choices is not None:
            return self._trial.suggest_categorical(name, [kind(c) for c in override.choices])
        if override is not None:
            low, high = kind(override.low), kind(override.high)
            if log and low <= 0:
                raise UsageError(f"--space {override}: {name!r} is searched on a log scale, "
                                 "so LOW must be > 0")
        suggest = self._trial.suggest_float if kind is float else self._trial.suggest_int
        if kind is int:
            return suggest(name, low, high, step=step or 1, log=log)
        return suggest(name, low, high, step=step, log=log)


class _Probe:
    """A stand-in trial that answers every suggestion with its lowest value or first choice."""

    number = -1

    def suggest_float(self, name: str, low: float, high: float, **_: Any) -> float:
        return low

    def suggest_int(self, name: str, low: int, high: int, **_: Any) -> int:
        return low

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        return list(choices)[0]

    def set_user_attr(self, key: str, value: Any) -> None:
        pass


def describe_space(model: Any) -> dict[str, str]:
    """The parameters ``model.search_space`` suggests (a model class, or a
    :class:`~harness.sandbox.ModelProcess` that asks its model), each with its range, in order."""
    probe = _SpaceTrial(_Probe(), {}, {})
    model.search_space(probe)
    return probe.seen


# -- one trial -------------------------------------------------------------------------------


def objective_metric(cls: Any, protocol: str, metric: str | None = None) -> tuple[str, str]:
    """The validation metric a study optimises for a model (anything with ``capabilities``)
    under ``protocol``, and its direction."""
    if metric is None:
        caps = set(cls.capabilities)
        metric = {
            "streaming": "mrr" if "rank" in caps else "auc",
            "state": "auc",
            "sessions": "recall@20" if "rank" in caps else "mae",
        }[protocol]
    return metric, _METRIC_DIRECTION.get(metric, "maximize")


def _value(record: dict[str, Any], metric: str) -> float | None:
    value = record.get("metrics", {}).get("valid", {}).get(metric)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


# -- tune ------------------------------------------------------------------------------------


def tune_study_name(model: str, dataset: str, protocol: str) -> str:
    """The default study name of ``harness tune`` (``run --params best`` looks for it)."""
    return f"tune-{model}-{_dataset_slug(dataset)}-{protocol}"


def _dataset_slug(dataset: str) -> str:
    base = Path(dataset).stem if ("/" in dataset or dataset.endswith(".csv")) else dataset
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in base)


def config_digest(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:8]


def tune(
    model: str,
    *,
    dataset: str = "synthetic",
    protocol: dict[str, Any] | None = None,
    trials: int = 20,
    timeout: float | None = None,
    storage: str | None = None,
    study: str | None = None,
    results: str = "results",
    seed: int = 0,
    epochs: int | None = None,
    plugin: str | None = None,
    space: list[Override] | None = None,
    fixed: dict[str, Any] | None = None,
    metric: str | None = None,
    prune: bool = True,
    startup_trials: int = 2,
    heartbeat: int = DEFAULT_HEARTBEAT,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run (or resume) a study of ``model``'s search space until it holds ``trials`` trials.

    The objective is the protocol's validation metric at the model's best epoch; the sampler is
    TPE seeded with ``seed`` (reseeded per trial number, so workers do not repeat each other);
    a median pruner stops a trial whose per-epoch validation curve falls below the median of the
    earlier trials at the same epoch. Returns a summary with the best trial.
    """
    from harness.evaluate import Protocol
    from harness.sandbox import ModelInfo, ModelProcess, ModelRef

    _quiet_optuna()
    if trials < 1:
        raise UsageError(f"--trials must be at least 1, got {trials}")
    protocol = dict(protocol or {"name": "streaming"})
    Protocol(**protocol)
    # The model's search space is asked of its own process: this one never imports its code.
    with ModelProcess.start(ModelRef(model, plugin)) as proc:
        return _tune(proc, ModelInfo(proc.meta), model, dataset, protocol, trials, timeout, storage,
                     study, results, seed, epochs, plugin, space_overrides=space,
                     fixed=fixed, metric=metric, prune=prune, startup_trials=startup_trials,
                     heartbeat=heartbeat, log=log)


def _tune(
    space: Any, cls: Any, model: str, dataset: str, protocol: dict[str, Any], trials: int,
    timeout: float | None, storage: str | None, study: str | None, results: str, seed: int,
    epochs: int | None, plugin: str | None, *, space_overrides: list[Override] | None,
    fixed: dict[str, Any] | None, metric: str | None, prune: bool, startup_trials: int,
    heartbeat: int, log: Callable[[str], None] | None,
) -> dict[str, Any]:
    import optuna

    from harness.evaluate import check_compatible
    from harness.runner import RunSpec, StreamCache, run_one

    check_compatible(cls.capabilities, protocol.get("name", "streaming"), model)
    fixed = dict(fixed or {})
    overrides = {o.name: o for o in space_overrides or []}
    seen = describe_space(space)
    tunable = [name for name in seen if name not in fixed]
    if not tunable:
        why = ("declares no search space" if not seen
               else f"has every parameter of its search space fixed by --param ({', '.join(seen)})")
        raise UsageError(f"model {model!r} {why}: there is nothing to tune; run it with "
                         f"`harness run --models {model}`, or give {cls.__name__} a search_space()")
    unknown = sorted(set(overrides) - set(seen))
    if unknown:
        raise UsageError(f"--space {unknown[0]}: model {model!r} does not search that parameter; "
                         f"its search space has {', '.join(seen)}")
    cls.check_params(_probe_params(space, overrides, fixed), model)  # unknown --param names
    metric, direction = objective_metric(cls, protocol.get("name", "streaming"), metric)
    name = study or tune_study_name(model, dataset, protocol.get("name", "streaming"))
    config = {"kind": "tune", "model": model, "plugin": plugin, "dataset": dataset,
              "protocol": protocol, "epochs": epochs, "seed": seed, "metric": metric}
    handle = open_storage(storage, results, heartbeat)
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=0)
              if prune else optuna.pruners.NopPruner())

    def make_sampler(number: int) -> Any:
        return optuna.samplers.TPESampler(seed=seed * 1_000_003 + number, n_startup_trials=5,
                                          constant_liar=True)

    the_study = load_or_create(handle, name, direction, config, make_sampler(0), pruner)
    cache = StreamCache()

    def run(trial: Any) -> tuple[Any, float | None]:
        from optuna.trial import TrialState

        if overrides or fixed:  # a resumed study may narrow its space; each trial keeps its own
            trial.set_user_attr("space", sorted(str(o) for o in overrides.values()))
            trial.set_user_attr("fixed", fixed)
        suggest = _SpaceTrial(trial, overrides, fixed)
        params = {**space.search_space(suggest), **fixed}
        spec = RunSpec(model=model, dataset=dataset, protocol=protocol, params=params, seed=seed,
                       epochs=epochs, plugin=plugin, results=results,
                       checkpoint=False)  # a trial is pruned on its epochs: it starts over

        def on_epoch(epoch: dict[str, Any]) -> None:
            value = epoch["valid"].get(metric)
            if isinstance(value, (int, float)) and math.isfinite(value):
                trial.report(float(value), epoch["epoch"])
                if trial.should_prune():
                    raise optuna.TrialPruned(
                        f"validation {metric} {value:.4g} at epoch {epoch['epoch']} is worse than "
                        f"the median of earlier trials ({type(pruner).__name__})")

        record = run_one(spec, on_epoch=on_epoch, cache=cache)
        record["tuning"] = {"kind": "tune", "study": name, "trial": trial.number,
                            "storage": handle.display, "metric": metric, "direction": direction}
        if trial.user_attrs.get("retry_of") is not None:
            record["tuning"]["retry_of"] = trial.user_attrs["retry_of"]
        path = _write(record, results)
        trial.set_user_attr("params", record["params"])
        trial.set_user_attr("record", str(path))
        trial.set_user_attr("status", record["status"])
        if record["status"] == "pruned":
            return TrialState.PRUNED, None
        value = _value(record, metric) if record["status"] == "ok" else None
        if value is None:
            trial.set_user_attr("reason", record.get("reason") or f"no validation {metric}")
            return TrialState.FAIL, None
        return TrialState.COMPLETE, value

    ran = _drive(the_study, handle, trials, make_sampler, run, timeout, log)
    return summarize(the_study, handle, ran)


def _probe_params(space: Any, overrides: dict[str, Override], fixed: dict[str, Any]) -> dict[str, Any]:
    return {**space.search_space(_SpaceTrial(_Probe(), overrides, fixed)), **fixed}


def _write(record: dict[str, Any], results: str) -> Path:
    from harness.records import write_record

    return write_record(record, results)


def summarize(study: Any, handle: StudyHandle, ran: int = 0) -> dict[str, Any]:
    """Counts by state and the best trial of a study."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    states = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    out: dict[str, Any] = {
        "study": study.study_name, "storage": handle.display, "ran_here": ran,
        "counted": _counted(trials), "states": {k: v for k, v in states.items() if v},
        "interrupted": sum(t.state == TrialState.FAIL and not _counts(t, _retried(trials))
                           and not t.user_attrs.get("surplus") for t in trials),
    }
    if complete:
        best = study.best_trial
        out["best"] = {"trial": best.number, "value": best.value,
                       "params": best.user_attrs.get("params", best.params),
                       "record": best.user_attrs.get("record")}
    return out


def study_model(study: str, results: str = "results", storage: str | None = None) -> str:
    """The model a ``harness tune`` study tuned (for ``harness run --params-from STUDY``)."""
    import optuna

    _quiet_optuna()
    handle = open_storage(storage, results)
    try:
        loaded = optuna.load_study(study_name=study, storage=handle.storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(handle.storage)]
        raise UsageError(f"--params-from {study}: no such study in {handle.display}; studies "
                         f"there: {', '.join(sorted(names)) or 'none'}") from None
    config = loaded.user_attrs.get("harness") or {}
    if config.get("kind") != "tune":
        raise UsageError(f"--params-from {study}: not a study made by `harness tune`")
    return str(config["model"])


def tuned_params(
    models: list[str],
    *,
    dataset: str,
    protocol: str,
    results: str = "results",
    storage: str | None = None,
    study: str | None = None,
    plugins: dict[str, str] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """The best trial's constructor parameters for each model (``harness run --params best``).

    With ``study`` (``--params-from``), that study's model gets its best parameters. Otherwise
    each model gets those of its default study ``tune-MODEL-DATASET-PROTOCOL``; a model with an
    empty search space keeps its defaults.
    """
    import optuna

    from harness.sandbox import ModelProcess, ModelRef

    _quiet_optuna()
    handle = open_storage(storage, results)
    names = [s.study_name for s in optuna.get_all_study_summaries(handle.storage)]
    wanted: dict[str, str] = {}
    if study is not None:
        if study not in names:
            raise UsageError(f"--params-from {study}: no such study in {handle.display}; "
                             f"studies there: {', '.join(sorted(names)) or 'none'}")
        loaded = optuna.load_study(study_name=study, storage=handle.storage)
        model = (loaded.user_attrs.get("harness") or {}).get("model")
        if model not in models:
            raise UsageError(f"--params-from {study}: that study tuned model {model!r}, which is not "
                             f"among the models to run ({', '.join(models)}); add --models {model}")
        wanted[model] = study
    else:
        for model in models:
            name = tune_study_name(model, dataset, protocol)
            if name in names:
                wanted[model] = name
                continue
            with ModelProcess.start(ModelRef(model, (plugins or {}).get(model))) as proc:
                searched = describe_space(proc)
            if searched:
                raise UsageError(
                    f"--params best: no study {name!r} in {handle.display} for model {model!r}; run "
                    f"`harness tune --model {model} --dataset {dataset} --protocol {protocol}` first "
                    f"(studies there: {', '.join(sorted(names)) or 'none'})")
    out: dict[str, dict[str, Any]] = {}
    for model, name in wanted.items():
        loaded = optuna.load_study(study_name=name, storage=handle.storage)
        try:
            best = loaded.best_trial
        except ValueError:
            raise UsageError(f"study {name!r} has no complete trial yet; run `harness tune` "
                             "until one completes") from None
        out[model] = dict(best.user_attrs.get("params", best.params))
        if log is not None:
            log(f"{model}: parameters of trial {best.number} of study {name!r} "
                f"(validation {best.value:.4g}): {json.dumps(out[model])}")
    return out


def print_summary(summary: dict[str, Any], file: Any = None) -> None:
    file = file or sys.stdout
    states = ", ".join(f"{v} {k}" for k, v in summary["states"].items())
    print(f"study {summary['study']} ({summary['storage']}): {states}", file=file)
    best = summary.get("best")
    if best:
        print(f"best trial {best['trial']}: {best['value']:.6g} with {json.dumps(best['params'])}",
              file=file)

