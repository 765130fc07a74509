"""The ``harness`` command. The only module that reads ``sys.argv``; heavy imports are deferred
into the sub-command handlers so that ``harness --help`` and ``harness list`` stay fast."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from harness._argtypes import csv_list as _csv
from harness._argtypes import ints as _seeds
from harness._argtypes import model_param as _param
from harness._argtypes import split as _split
from harness.errors import HarnessError, UsageError

DEFAULT_MODELS = ("popularity", "recency", "frequency", "jodie")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harness",
        description="Benchmark models of temporal user-item interactions on one trustworthy protocol.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("list", help="list installed models, datasets and metrics")
    p.add_argument("kind", nargs="?", choices=["models", "datasets", "metrics"])
    p.add_argument("--check", action="store_true", help="import every plugin to find broken ones")

    p = sub.add_parser("run", help="train and evaluate models on a dataset, write run records")
    p.add_argument("--models", type=_csv, help=f"comma-separated (default: {','.join(DEFAULT_MODELS)})")
    p.add_argument("--dataset", default="synthetic", help="registered name or path to a JODIE CSV")
    p.add_argument("--protocol", default="streaming", choices=["streaming", "state", "sessions"])
    p.add_argument("--refit", action="store_true",
                   help="choose the epoch count on validation, then train a fresh model on "
                   "train + valid for that many epochs and test it")
    p.add_argument("--epochs", type=int, help="training epochs (default: each model's own)")
    p.add_argument("--seeds", type=_seeds, default=[0], help="comma-separated seeds (default 0)")
    p.add_argument("--param", type=_param, action="append", default=[], metavar="MODEL.KEY=VALUE",
                   help="set a model parameter (value parsed as JSON when it can be)")
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE:CLASS",
                   help="run a model class that no distribution registers")
    p.add_argument("--tie-policy", choices=["average", "optimistic", "pessimistic"],
                   help="how ties of the true item rank (default average; a --preset may set it)")
    p.add_argument("--preset", metavar="NAME",
                   help="a paper's evaluation settings: jodie (its authors' protocol: optimistic "
                   "ties, online updates, whole-stream time statistics) or thrnn (the sessions "
                   "protocol as the THRNN authors run it: 80/20 per user, no validation, their "
                   "filters and MAE); flags override it")
    p.add_argument("--split", type=_split, metavar="TRAIN,VALID,TEST", help="split fractions")
    p.add_argument("--patience", type=int, default=5, help="early-stopping patience in epochs")
    p.add_argument("--audits", type=int, default=16, metavar="N",
                   help="look-ahead audits per pass (default 16; 0 leaves the run unaudited)")
    p.add_argument("--session-gap", type=float, help="seconds of inactivity that end a session")
    p.add_argument("--results", default="results", help="directory for run records (default results/)")
    p.add_argument("--timeout", type=float, help="seconds allowed per run")
    p.add_argument("--format", default="github", choices=["github", "latex", "plain"])
    p.add_argument("--in-process", action="store_true",
                   help="evaluate in this process (models still run in their own)")
    p.add_argument("--quiet", action="store_true", help="no progress bars and no per-epoch lines")
    p.add_argument("--device", help="torch models: auto (a GPU when torch sees one, the default), "
                   "cpu, cuda or cuda:N")
    p.add_argument("--params", choices=["best"],
                   help="best: each model's parameters from the best trial of its `harness tune` "
                   "study tune-MODEL-DATASET-PROTOCOL (--param still overrides)")
    p.add_argument("--params-from", metavar="STUDY",
                   help="the parameters of the best trial of this `harness tune` study")
    p.add_argument("--storage", help="Optuna storage of the studies (default RESULTS/optuna.journal)")
    p.add_argument("--shared", action="store_true",
                   help="make the runs jobs of a study on --storage: the same command started on "
                   "several machines (or terminals) splits them, each run once")
    p.add_argument("--heartbeat", type=int, default=10, metavar="S",
                   help="with --shared on a database server: seconds between heartbeats (default 10)")
    p.add_argument("--no-checkpoints", action="store_true",
                   help="save no checkpoint after each epoch (faster; a killed run starts over)")
    p.add_argument("--resume", action="store_true",
                   help="skip the runs that already have an ok record in RESULTS and continue the "
                   "others from their last epoch's checkpoint (after Ctrl-C or a kill)")

    p = sub.add_parser("leaderboard", help="tables from the run records")
    p.add_argument("--dataset")
    p.add_argument("--protocol", choices=["streaming", "state", "sessions"])
    p.add_argument("--format", default="github", choices=["github", "latex", "plain"])
    p.add_argument("--results", action="append", metavar="DIR",
                   help="directory of run records (default results/); repeat it to merge the "
                   "records of several directories, such as those of several machines")

    p = sub.add_parser("validate", help="run the conformance suite on a model")
    p.add_argument("--model", required=True)
    p.add_argument("--plugin", help="MODULE:CLASS of a model no distribution registers")
    p.add_argument("--param", type=_param, action="append", default=[], metavar="MODEL.KEY=VALUE")

    try:
        from harness.data.cli import add_commands
    except ImportError:  # the datasets commands are optional in a partial install
        pass
    else:
        add_commands(sub)
    try:
        from harness.tuning_cli import add_commands as add_tuning_commands
    except ImportError:
        pass
    else:
        add_tuning_commands(sub)
    return parser


def cmd_list(args: argparse.Namespace) -> int:
    from harness.registry import GROUPS, default_registry, plugin_status

    for kind in [args.kind] if args.kind else list(GROUPS):
        print(f"{kind}:")
        registry = default_registry(kind)
        for entry in registry.entries():
            status = plugin_status(entry, import_it=args.check)
            print(f"  {entry.name:<20} {status:<10} {entry.target}  ({entry.distribution})")
        if kind == "datasets":
            try:
                from harness.data import manifest_names
            except ImportError:
                continue
            for name in manifest_names():
                if name not in registry:
                    print(f"  {name:<20} {'manifest':<10} datasets/{name}  (harness datasets info {name})")
    return 0


def _model_params(args: argparse.Namespace, models: list[str]) -> dict[str, dict[str, Any]]:
    params: dict[str, dict[str, Any]] = {m: {} for m in models}
    for model, key, value in args.param:
        if model not in params:
            raise UsageError(f"--param {model}.{key}: {model!r} is not among the models {models}")
        params[model][key] = value
    return params


def cmd_run(args: argparse.Namespace) -> int:
    from harness.evaluate import Protocol, check_compatible
    from harness.records import load_records
    from harness.registry import default_registry
    from harness.runner import RunsInterrupted, RunSpec, finished_runs, run_many
    from harness.sandbox import ModelRef, describe_model

    plugins = {target.rpartition(":")[2].lower(): target for target in args.plugin}
    if plugins and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # --plugin modules may live in the working directory
    if args.params_from and args.models is None:
        from harness.tuning import study_model

        args.models = [study_model(args.params_from, args.results, args.storage)]
    if args.models is None:
        installed = default_registry("models").names()
        models = [m for m in DEFAULT_MODELS if m in installed] + list(plugins)
    else:
        models = list(args.models) + [p for p in plugins if p not in args.models]
    if not models:
        raise UsageError("no models to run: install a model plugin or pass --models / --plugin")
    from harness.presets import Preset, get_preset

    preset = get_preset(args.preset) if args.preset else Preset("")
    settings = {k: v for k, v in preset.protocol.items() if k != "name"}  # Protocol checks the name
    protocol: dict[str, Any] = {"name": args.protocol, "tie_policy": "average", **settings,
                                "patience": args.patience, "audits": args.audits}
    if args.preset:
        protocol["preset"] = args.preset
    if args.refit:
        protocol["refit"] = True
    if args.tie_policy:
        protocol["tie_policy"] = args.tie_policy
    if args.split:
        protocol.update(zip(("train", "valid", "test"), args.split))
    if args.session_gap:
        protocol["session_gap"] = args.session_gap
    protocol["name"] = protocol_name = Protocol(**protocol).name  # validate first; a preset sets it
    params = _model_params(args, models)
    params = {name: {**preset.params.get(name, {}), **params[name]} for name in models}
    if args.params or args.params_from:
        from harness.tuning import tuned_params

        tuned = tuned_params(models, dataset=args.dataset, protocol=protocol_name,
                             results=args.results, storage=args.storage, study=args.params_from,
                             plugins=plugins, log=lambda line: print(line, file=sys.stderr))
        params = {name: {**tuned.get(name, {}), **params[name]} for name in models}
    if args.device not in (None, "auto", "cpu"):
        from harness.api import resolve_device

        resolve_device(args.device)  # no GPU: one line now, not a failed run per model
    for name in models:  # unknown names, parameters and capabilities fail before anything runs
        info = describe_model(ModelRef(name, plugins.get(name), params[name]))  # in its own process
        check_compatible(info.capabilities, protocol_name, name)
        if args.device and "device" in info.param_names():
            params[name].setdefault("device", args.device)  # --param MODEL.device=... wins
    from harness.data import open_dataset

    # a bad name or a malformed file fails here, before any run; workers then load from the cache
    open_dataset(args.dataset, progress=not args.quiet).load()
    specs = [
        RunSpec(model=name, dataset=args.dataset, protocol=protocol, params=params[name], seed=seed,
                epochs=args.epochs, plugin=plugins.get(name), results=args.results,
                timeout=args.timeout, progress=not args.quiet, resume=args.resume,
                checkpoint=not args.no_checkpoints)
        for name in models for seed in args.seeds
    ]
    if args.shared:
        from harness.grids import run_jobs

        try:
            paths = run_jobs(specs, storage=args.storage, heartbeat=args.heartbeat,
                             log=None if args.quiet else lambda line: print(line, file=sys.stderr))
        except KeyboardInterrupt:
            print("harness: interrupted; the run this worker had started is queued again: the same "
                  "command continues it (from its checkpoint)", file=sys.stderr)
            return 130
        return _report(load_records(args.results), {str(p) for p in paths}, args)
    finished: list[Path] = []
    if args.resume:
        finished, specs = finished_runs(specs, args.results)
        for path in finished:
            print(f"harness: {path} is done (--resume)", file=sys.stderr)
    try:
        paths = finished + run_many(specs, isolate=not args.in_process)
    except RunsInterrupted as stop:
        shown = lambda done: ", ".join(f"{s.model} seed {s.seed}" for s in done) or "none"  # noqa: E731
        print(f"harness: interrupted; finished: {shown(specs[:len(stop.done)])}; not finished: "
              f"{shown(stop.pending)}; the same command with --resume skips the finished runs and "
              "continues the others from their last epoch", file=sys.stderr)
        return 130
    return _report(load_records(args.results), {str(p) for p in paths}, args)


def _report(records: list[dict[str, Any]], paths: set[str], args: argparse.Namespace) -> int:
    """Print the leaderboard of the runs at ``paths``; 1 when one of them did not succeed."""
    from harness.leaderboard import leaderboard

    records = [r for r in records if r["_path"] in paths]
    for record in records:
        if record["status"] != "ok":
            print(f"harness: {record['model']} (seed {record['seed']}) {record['status']}: "
                  f"{record.get('reason', '')}", file=sys.stderr)
    print(leaderboard(records, fmt=args.format))
    print("\n" + _finished(records, paths, args.results), file=sys.stderr)
    return 0 if all(r["status"] == "ok" for r in records) else 1


def _finished(records: list[dict[str, Any]], paths: Iterable[Any], results: str) -> str:
    """``2 run records in results/:`` and one line per finished run."""
    mine = [r for r in records if r["_path"] in {str(p) for p in paths}]
    return "\n".join([f"{_plural(len(mine), 'run record')} in {results}/" + (":" if mine else ""),
                      *(f"  {_summary(r)}" for r in mine)])


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _summary(record: dict[str, Any]) -> str:
    """``jodie seed 0: ok, 12 epochs (best 7), 95.3 s`` or the status and its reason."""
    head = f"{record['model']} seed {record['seed']}: {record['status']}"
    if record["status"] != "ok":
        return f"{head}: {record.get('reason', '')}"
    epochs = len(record.get("epochs") or [])
    done = f", {_plural(epochs, 'epoch')} (best {record.get('best_epoch')})" if epochs else ""
    wall = record.get("timing", {}).get("wall_seconds")
    return head + done + (f", {wall:.1f} s" if wall is not None else "")


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from harness.leaderboard import leaderboard
    from harness.records import load_records

    records = [r for results in args.results or ["results"] for r in load_records(results)]
    print(leaderboard(records, dataset=args.dataset, protocol=args.protocol, fmt=args.format))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from harness.runner import build_model, resolve_model
    from harness.testing import CHECKS, applicable_checks, run_check

    cls = resolve_model(args.model, args.plugin)
    params = {key: value for model, key, value in args.param if model == args.model}
    model = build_model(cls, params, args.model)
    results = {}
    for name in applicable_checks(model):
        results[name] = reason = run_check(model, name)
        print(f"FAIL  {name}: {reason}" if reason else f"PASS  {name}", flush=True)
    failed = sum(reason is not None for reason in results.values())
    skipped = sorted(set(CHECKS) - set(results))
    print(f"{len(results) - failed} passed, {failed} failed"
          + (f", {len(skipped)} skipped" if skipped else ""))
    return 1 if failed or not results else 0


COMMANDS = {"list": cmd_list, "run": cmd_run, "leaderboard": cmd_leaderboard, "validate": cmd_validate}


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """The harness's own warnings as ``harness: warning: ...``; a library's (a deprecation in
    scipy) keeps its origin, so that nobody takes it for the harness's."""
    if category.__module__.split(".")[0] == "harness":
        return f"harness: warning: {message}\n"
    return f"{filename}:{lineno}: {category.__name__}: {message}\n"


def main(argv: list[str] | None = None) -> int:
    import warnings

    warnings.formatwarning = _one_line_warning
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    handler = COMMANDS.get(args.command) or args.handler
    try:
        return handler(args)
    except HarnessError as exc:
        print(f"harness: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("harness: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `harness ... | head`: the reader has gone, which is no error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
