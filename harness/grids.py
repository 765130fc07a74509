"""The papers' experiments as named grids, run as Optuna studies with a grid sampler.

Each grid point x model x seed is one trial of the study and writes one run record, so workers
on one study share the points and an interrupted grid resumes when its command is run again
(the study name is derived from the grid's options). ``harness plot`` draws the figures.

- ``training-fraction`` (JODIE experiment 4): train on the first x of the stream and validate and
  test on the next 10% each, x = 10%..80%.
- ``embedding-size`` (JODIE experiment 5): the dynamic embedding size 32..256.
- ``data-size`` (JODIE experiment 3): the leading 1/16..all of the stream, split 80/10/10, to
  measure how training time per epoch grows with the number of events.
- ``thrnn-alpha`` (THRNN section 5.1): the return-time loss exponent alpha of THRNN.

:func:`run_jobs` makes the (model, seed) runs of one ``harness run --shared`` the points of such
a study, so that the same command on several machines splits them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from harness.errors import UsageError, did_you_mean

__all__ = ["EMBEDDING_PARAMS", "GRIDS", "Grid", "get_grid", "run_grid", "run_jobs"]

#: Constructor parameters that mean "embedding size", in the order they are looked for.
EMBEDDING_PARAMS = ("embedding_size", "embedding_dim", "hidden_size", "dim", "n_factors", "d")


@dataclass(frozen=True)
class Grid:
    """A named experiment: one axis of values and where each value goes (``protocol``,
    ``model`` parameter or ``data`` prefix)."""

    name: str
    description: str
    axis: str
    values: tuple[Any, ...]
    target: str  # "protocol" | "model" | "data"
    protocol: str = "streaming"
    needs_model: str | None = None
    needs_note: str = ""

    def param_for(self, cls: Any, model: str) -> str | None:
        """The constructor parameter a ``model`` grid sets on ``cls`` (``None`` for other grids)."""
        if self.target != "model":
            return None
        if self.axis != "embedding_size":
            if self.axis in cls.param_names():
                return self.axis
            raise UsageError(f"grid {self.name}: model {model!r} has no parameter {self.axis!r} "
                             f"(its parameters: {', '.join(cls.param_names()) or 'none'})")
        for name in EMBEDDING_PARAMS:
            if name in cls.param_names():
                return name
        raise UsageError(
            f"grid {self.name}: model {model!r} has no embedding size parameter (looked for "
            f"{', '.join(EMBEDDING_PARAMS)}; it has {', '.join(cls.param_names()) or 'none'}); "
            "leave it out of --models")

    def apply(
        self, value: Any, cls: Any, model: str, protocol: dict[str, Any], params: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any], float | None]:
        """The protocol, model parameters and data fraction of one grid point."""
        protocol, params = dict(protocol), dict(params)
        fraction = None
        if self.target == "protocol":
            protocol.update(train=float(value), valid=0.1, test=0.1)
        elif self.target == "model":
            key = self.param_for(cls, model)
            assert key is not None  # model grids always name a parameter
            params[key] = value
        else:
            fraction = float(value)
        return protocol, params, fraction


GRIDS: dict[str, Grid] = {
    grid.name: grid
    for grid in (
        Grid("training-fraction",
             "JODIE experiment 4: train on the first x of the stream, validate and test on the "
             "next 10% each", "train_fraction", (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8), "protocol"),
        Grid("embedding-size", "JODIE experiment 5: dynamic embedding size",
             "embedding_size", (32, 64, 128, 256), "model"),
        Grid("data-size",
             "JODIE experiment 3: leading fraction of the stream (split 80/10/10), for the time "
             "per epoch against the number of events", "data_fraction",
             (0.0625, 0.125, 0.25, 0.5, 1.0), "data"),
        Grid("thrnn-alpha", "THRNN section 5.1: exponent alpha of the return-time loss",
             "alpha", (0.3, 0.5, 0.7, 0.9, 1.0), "model", protocol="sessions", needs_model="thrnn",
             needs_note="Install it with `pip install -e plugins/thrnn` (or any plugin that "
                        "registers a model named 'thrnn' with a parameter 'alpha')"),
    )
}


def get_grid(name: str) -> Grid:
    """The grid called ``name``, or an error listing the known ones."""
    if name not in GRIDS:
        raise UsageError(did_you_mean(name, list(GRIDS), "grid"))
    return GRIDS[name]


def run_grid(
    name: str,
    *,
    models: list[str],
    dataset: str = "synthetic",
    seeds: list[int] | None = None,
    values: list[Any] | None = None,
    epochs: int | None = None,
    protocol: dict[str, Any] | None = None,
    params: dict[str, dict[str, Any]] | None = None,
    plugins: dict[str, str] | None = None,
    storage: str | None = None,
    study: str | None = None,
    results: str = "results",
    timeout: float | None = None,
    heartbeat: int = 10,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run (or resume) grid ``name`` for ``models`` x ``seeds`` x the grid's values; every point
    writes a run record with ``record["tuning"]["grid"] = name``. Returns the study summary."""
    import optuna

    from harness.evaluate import Protocol, check_compatible
    from harness.registry import default_registry
    from harness.runner import RunSpec, StreamCache, run_one
    from harness.sandbox import ModelRef, describe_model
    from harness.tuning import (
        _drive,
        _quiet_optuna,
        _write,
        config_digest,
        load_or_create,
        open_storage,
        summarize,
    )

    _quiet_optuna()
    grid = get_grid(name)
    plugins = dict(plugins or {})
    if grid.needs_model and grid.needs_model not in default_registry("models").names() \
            and grid.needs_model not in plugins:
        raise UsageError(f"grid {name}: it needs model {grid.needs_model!r}, which is not installed. "
                         + grid.needs_note)
    if not models:
        models = [grid.needs_model] if grid.needs_model else []
    if not models:
        raise UsageError(f"grid {name}: pass the models to run, e.g. --models jodie,popularity")
    seeds = list(seeds if seeds is not None else [0])
    values = list(values if values is not None else grid.values)
    if not values or not seeds:
        raise UsageError(f"grid {name}: needs at least one value and one seed")
    if grid.target in ("protocol", "data"):
        bad = [v for v in values if not isinstance(v, (int, float)) or not 0 < float(v) <= 1]
        if bad:
            raise UsageError(f"grid {name}: values are fractions in (0, 1], got {bad[0]!r}")
        if grid.target == "protocol" and max(map(float, values)) > 0.8 + 1e-9:
            raise UsageError(f"grid {name}: the training fraction must leave 20% for valid and test, "
                             f"so at most 0.8, got {max(values)}")
    protocol = {"name": grid.protocol, **(protocol or {})}
    params = {m: dict((params or {}).get(m, {})) for m in models}
    classes = {}
    for model in models:  # every name, parameter and capability is checked before any work
        cls = classes[model] = describe_model(ModelRef(model, plugins.get(model), params[model]))
        check_compatible(cls.capabilities, protocol["name"], model)
        for value in values:
            proto, p, _ = grid.apply(value, cls, model, protocol, params[model])
            Protocol(**proto)
            cls.check_params(p, model)
    config = {"kind": "grid", "grid": name, "models": models, "plugins": plugins, "dataset": dataset,
              "seeds": seeds, "values": values, "epochs": epochs, "protocol": protocol,
              "params": params}
    study_name = study or f"grid-{name}-{_slug(dataset)}-{config_digest(config)}"
    space: dict[str, list[Any]] = {"model": models, "seed": seeds, "value": values}
    n_points = math.prod(len(v) for v in space.values())

    def make_sampler(number: int) -> Any:
        # One fixed seed: the grid sampler shuffles its points with it, and every worker and
        # every resumed run must map a grid id to the same point.
        return _GridSampler(space, seed=0)

    handle = open_storage(storage, results, heartbeat)
    the_study = load_or_create(handle, study_name, "maximize", config, make_sampler(0),
                               optuna.pruners.NopPruner())
    cache = StreamCache()

    def run(trial: Any) -> tuple[Any, float | None]:
        from optuna.trial import TrialState

        model = trial.suggest_categorical("model", models)
        seed = trial.suggest_categorical("seed", seeds)
        value = trial.suggest_categorical("value", values)
        proto, p, fraction = grid.apply(value, classes[model], model, protocol, params[model])
        spec = RunSpec(model=model, dataset=dataset, protocol=proto, params=p, seed=seed,
                       epochs=epochs, plugin=plugins.get(model), results=results,
                       resume=True)  # a point retried after its worker died continues
        record = run_one(spec, data_fraction=fraction, cache=cache)
        record["tuning"] = {"kind": "grid", "grid": name, "axis": grid.axis, "value": value,
                            "study": study_name, "trial": trial.number, "storage": handle.display}
        path = _write(record, results)
        trial.set_user_attr("record", str(path))
        trial.set_user_attr("status", record["status"])
        if record["status"] != "ok":
            trial.set_user_attr("reason", record.get("reason", ""))
            return TrialState.FAIL, None
        metric = Protocol(**proto).selection_metric
        got = record["metrics"].get("test", {}).get(metric)
        finite = isinstance(got, (int, float)) and math.isfinite(got)
        return TrialState.COMPLETE, float(got) if finite else 0.0

    if log is not None:
        log(f"grid {name}: {len(values)} values x {len(models)} models x {len(seeds)} seeds = "
            f"{n_points} runs in study {study_name} ({handle.display})")
    ran = _drive(the_study, handle, n_points, make_sampler, run, timeout, log)
    return summarize(the_study, handle, ran)


def _slug(text: str) -> str:
    from harness.tuning import _dataset_slug

    return _dataset_slug(text)


def _grid_sampler_class() -> type:
    import optuna

    class GridSampler(optuna.samplers.GridSampler):
        """Optuna's grid sampler for ask-and-tell: it does not call ``study.stop()`` (which works
        only inside ``optimize``); the harness stops when every point is taken."""

        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            return None

    return GridSampler


def _GridSampler(space: dict[str, list[Any]], seed: int) -> Any:  # noqa: N802 - a class factory
    return _grid_sampler_class()(space, seed=seed)


def run_jobs(
    specs: list[Any],
    *,
    storage: str | None = None,
    study: str | None = None,
    heartbeat: int = 10,
    log: Callable[[str], None] | None = None,
) -> list[Path]:
    """The runs of one ``harness run`` (``RunSpec`` objects) as the points of a grid study on
    shared storage: every worker started with the same command takes the next job nobody has
    taken, each job runs once (a job whose worker dies is retried, from its checkpoint when the
    results directory is shared). Returns the records of the study's jobs that are in this
    worker's results directory."""
    import optuna

    from harness.runner import run_many
    from harness.tuning import _drive, _quiet_optuna, config_digest, load_or_create, open_storage

    _quiet_optuna()
    results = specs[0].results
    jobs = {f"{s.model} seed {s.seed}": replace(s, resume=True) for s in specs}
    labels = list(jobs)
    config = {"kind": "run", "jobs": labels, "dataset": specs[0].dataset,
              "protocol": specs[0].protocol, "epochs": specs[0].epochs,
              "params": {s.model: s.params for s in specs}, "plugins": {s.model: s.plugin for s in specs}}
    name = study or f"run-{_slug(specs[0].dataset)}-{config_digest(config)}"
    handle = open_storage(storage, results, heartbeat)
    the_study = load_or_create(handle, name, "maximize", config, _GridSampler({"job": labels}, 0),
                               optuna.pruners.NopPruner())

    def run(trial: Any) -> tuple[Any, float | None]:
        from optuna.trial import TrialState

        label = trial.suggest_categorical("job", labels)
        [path] = run_many([jobs[label]])
        record = json.loads(path.read_text())
        trial.set_user_attr("record", str(path))
        trial.set_user_attr("status", record["status"])
        if record["status"] != "ok":
            trial.set_user_attr("reason", record.get("reason", ""))
            return TrialState.FAIL, None
        return TrialState.COMPLETE, 0.0

    if log is not None:
        log(f"{len(labels)} runs as the jobs of study {name} ({handle.display}): the same command "
            "started elsewhere on this storage shares them")
    _drive(the_study, handle, len(labels), lambda number: _GridSampler({"job": labels}, 0), run,
           log=log, max_failures=len(labels) + 1)
    paths = [Path(t.user_attrs["record"]) for t in the_study.get_trials(deepcopy=False)
             if t.user_attrs.get("record")]
    return [p for p in paths if p.exists()]
