"""The ``harness tune``, ``harness grid`` and ``harness plot`` commands.

Only argument parsing lives at module level (no optuna, numpy or matplotlib import), so that
``harness --help`` stays fast; the handlers import what they need.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from harness._argtypes import csv_list as _csv
from harness._argtypes import ints as _ints
from harness._argtypes import json_values as _values
from harness._argtypes import key_value as _key_value
from harness._argtypes import model_param as _model_param
from harness._argtypes import split as _split

__all__ = ["add_commands"]

_GRID_HELP = {
    "training-fraction": "JODIE exp. 4: train on the first 10%..80%, valid/test the next 10% each",
    "embedding-size": "JODIE exp. 5: embedding size 32..256",
    "data-size": "JODIE exp. 3: time per epoch on leading 1/16..all of the stream",
    "thrnn-alpha": "THRNN 5.1: return-time loss exponent alpha (needs a 'thrnn' model)",
}
_PLOT_KINDS = ("training-fraction", "embedding-size", "epoch-time", "runtime", "return-time")


def _storage_help() -> str:
    return ("Optuna storage: a journal file (default RESULTS/optuna.journal), a SQLite file "
            "(*.db), or a URL such as postgresql://user:pass@host/db shared by workers on "
            'several machines (pip install "harness[postgres]")')


def _add_heartbeat(p: Any) -> None:
    p.add_argument("--heartbeat", type=int, default=10, metavar="S",
                   help="on a database server, seconds between a trial's heartbeats; a trial "
                   "silent for twice that is retried by another worker (default 10)")


def add_commands(sub: Any) -> None:
    """Add ``tune``, ``grid`` and ``plot`` to the ``harness`` sub-command parser."""
    p = sub.add_parser(
        "tune", help="tune a model's hyper-parameters with Optuna (resumable, parallel workers)",
        description="An Optuna study over the model's search space: TPE sampler (seeded), "
        "objective the protocol's validation metric, median pruning on the per-epoch validation "
        "curve. Every trial writes a run record. Run the same command again to resume, or in "
        "several terminals to share the work; then `harness run --models M --params best`.")
    p.add_argument("--model", required=True)
    p.add_argument("--dataset", default="synthetic", help="registered name or path to a JODIE CSV")
    p.add_argument("--protocol", default="streaming", choices=["streaming", "state", "sessions"])
    p.add_argument("--trials", type=int, default=20,
                   help="trials the study holds in all, over every worker and run (default 20)")
    p.add_argument("--timeout", type=float, help="start no new trial after this many seconds")
    p.add_argument("--storage", help=_storage_help())
    p.add_argument("--study", help="study name (default tune-MODEL-DATASET-PROTOCOL)")
    p.add_argument("--results", default="results", help="directory for run records (default results/)")
    p.add_argument("--epochs", type=int, help="training epochs per trial (default: the model's own)")
    p.add_argument("--seed", type=int, default=0, help="seed of the model and of the sampler")
    p.add_argument("--plugin", metavar="MODULE:CLASS", help="a model class no distribution registers")
    p.add_argument("--space", action="append", default=[], metavar="KEY=LOW:HIGH|KEY=A,B",
                   help="narrow one parameter of the search space to a range or to choices")
    p.add_argument("--param", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="fix a constructor parameter (JSON value when it parses)")
    p.add_argument("--metric", help="validation metric to optimise (default: the protocol's: "
                   "mrr, auc, recall@20; mae for return-time-only models, minimised)")
    p.add_argument("--no-prune", action="store_true", help="never prune a trial")
    p.add_argument("--startup-trials", type=int, default=2,
                   help="trials that finish before the pruner may stop one (default 2)")
    p.add_argument("--tie-policy", default="average", choices=["average", "optimistic", "pessimistic"])
    p.add_argument("--split", type=_split, metavar="TRAIN,VALID,TEST", help="split fractions")
    p.add_argument("--patience", type=int, default=5, help="early-stopping patience in epochs")
    p.add_argument("--quiet", action="store_true", help="no line per trial")
    _add_heartbeat(p)
    p.set_defaults(handler=cmd_tune)

    p = sub.add_parser(
        "grid", help="run one of the papers' experiment grids (resumable, parallel workers)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Grids (each point x model x seed is one run record):\n"
        + "\n".join(f"  {k:<18} {v}" for k, v in _GRID_HELP.items())
        + "\n\nRun the same command again to resume, or in several terminals to share the work; "
        "then `harness plot`.")
    p.add_argument("grid", metavar="GRID", help=", ".join(_GRID_HELP))
    p.add_argument("--models", type=_csv, default=[], help="comma-separated models")
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--seeds", type=_ints, default=[0], help="comma-separated seeds (default 0)")
    p.add_argument("--values", type=_values, help="replace the grid's values, comma-separated")
    p.add_argument("--epochs", type=int, help="training epochs (default: each model's own)")
    p.add_argument("--param", type=_model_param, action="append", default=[], metavar="MODEL.KEY=VALUE")
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE:CLASS")
    p.add_argument("--tie-policy", default="average", choices=["average", "optimistic", "pessimistic"])
    p.add_argument("--preset", choices=["thrnn"],
                   help="a paper's protocol settings for a sessions grid (as for `harness run`)")
    p.add_argument("--storage", help=_storage_help())
    p.add_argument("--study", help="study name (default grid-GRID-DATASET-<hash of the options>)")
    p.add_argument("--results", default="results")
    p.add_argument("--timeout", type=float, help="start no new run after this many seconds")
    p.add_argument("--quiet", action="store_true")
    _add_heartbeat(p)
    p.set_defaults(handler=cmd_grid)

    p = sub.add_parser("plot", help="figures (PNG and PDF) from the run records")
    p.add_argument("kinds", nargs="*", metavar="KIND",
                   help=f"any of {', '.join(_PLOT_KINDS)} (default: every one the records allow)")
    p.add_argument("--results", default="results")
    p.add_argument("--figures", help="output directory (default RESULTS/figures)")
    p.add_argument("--dataset", help="only this dataset")
    p.set_defaults(handler=cmd_plot)


def _protocol(args: argparse.Namespace) -> dict[str, Any]:
    protocol: dict[str, Any] = {"name": args.protocol, "tie_policy": args.tie_policy,
                                "patience": args.patience}
    if args.split:
        protocol.update(zip(("train", "valid", "test"), args.split))
    return protocol


def _log(quiet: bool):
    return None if quiet else (lambda line: print(line, file=sys.stderr, flush=True))


def cmd_tune(args: argparse.Namespace) -> int:
    from harness.tuning import parse_override, print_summary, tune

    summary = tune(
        args.model, dataset=args.dataset, protocol=_protocol(args), trials=args.trials,
        timeout=args.timeout, storage=args.storage, study=args.study, results=args.results,
        seed=args.seed, epochs=args.epochs, plugin=args.plugin,
        space=[parse_override(s) for s in args.space], fixed=dict(args.param), metric=args.metric,
        prune=not args.no_prune, startup_trials=args.startup_trials, heartbeat=args.heartbeat,
        log=_log(args.quiet),
    )
    print_summary(summary)
    if summary.get("best"):
        extra = "" if args.study is None else f" --params-from {summary['study']}"
        best = "" if extra else " --params best"
        print(f"rerun with: harness run --models {args.model} --dataset {args.dataset} "
              f"--protocol {args.protocol}{best}{extra}"
              + (f" --plugin {args.plugin}" if args.plugin else "")
              + (f" --storage {args.storage}" if args.storage else "")
              + (f" --results {args.results}" if args.results != "results" else ""))
    return 0 if summary.get("best") else 1


def cmd_grid(args: argparse.Namespace) -> int:
    from harness.errors import UsageError
    from harness.grids import run_grid

    plugins = {target.rpartition(":")[2].lower(): target for target in args.plugin}
    models = list(args.models) + [p for p in plugins if p not in args.models]
    params: dict[str, dict[str, Any]] = {m: {} for m in models}
    for model, key, value in args.param:
        if model not in params:
            raise UsageError(f"--param {model}.{key}: {model!r} is not among the models {models}")
        params[model][key] = value
    summary = run_grid(
        args.grid, models=models, dataset=args.dataset, seeds=args.seeds, values=args.values,
        epochs=args.epochs, params=params,
        protocol={"tie_policy": args.tie_policy, **({"preset": args.preset} if args.preset else {})},
        plugins=plugins, storage=args.storage, study=args.study, results=args.results,
        timeout=args.timeout, heartbeat=args.heartbeat, log=_log(args.quiet),
    )
    states = ", ".join(f"{v} {k}" for k, v in summary["states"].items())
    print(f"study {summary['study']} ({summary['storage']}): {states}")
    failed = summary["states"].get("fail", 0) - summary["interrupted"]
    kind = {"data-size": "runtime"}.get(args.grid, args.grid)
    if kind in _PLOT_KINDS:
        print(f"plot with: harness plot {kind} --results {args.results}")
    return 1 if failed else 0


def cmd_plot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from harness.errors import UsageError
    from harness.plots import KINDS, plot_all
    from harness.records import load_records

    unknown = [k for k in args.kinds if k not in KINDS]
    if unknown:
        from harness.errors import did_you_mean

        raise UsageError(did_you_mean(unknown[0], list(KINDS), "figure kind"))
    records = load_records(args.results)
    out = Path(args.figures) if args.figures else Path(args.results) / "figures"
    paths = plot_all(records, out, kinds=args.kinds or None, dataset=args.dataset)
    for path in paths:
        print(path)
    return 0
