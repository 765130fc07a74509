"""Shared study storage: PostgreSQL against the journal file, dead workers, parallel workers.

    python benchmarks/bench_storage.py [--trials 200] [--workers 1,2,4] [--json out.json]

Cases (a private PostgreSQL server on 127.0.0.1 is started, see harness.testing.postgres):

* ``overhead``: the storage's cost of one trial as ``harness tune`` drives it (lock, reaping,
  ask with a TPE sampler over two floats, attributes, heartbeat thread on a server, tell), with
  an objective that does nothing; seconds per trial for the journal file and for PostgreSQL.
* ``retry``: seconds from a worker's death to the start of its trial's retry by a live worker
  that waits for it (started ``--settle`` seconds before, so that its start-up is not counted):
  a worker of this machine killed with SIGKILL (noticed by its pid, journal file and
  PostgreSQL), and a worker on another machine whose heartbeat stops (PostgreSQL,
  ``--heartbeat 1``: stale 2 s after its last heartbeat).
* ``throughput``: a grid of fast models (``training-fraction`` for popularity, recency and
  frequency, 4 values x 2 seeds = 24 runs on a 3,000-event synthetic file) run by 1, 2 and 4
  ``harness grid`` workers on one study (journal file and PostgreSQL); runs per minute.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TOY = "test_tuning:Tilted"  # the tests' toy model: popularity scaled by a searched quality


def _env() -> dict[str, str]:
    path = os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path}


def overhead(storage: str, trials: int) -> float:
    """Seconds per trial of the storage alone (the objective does nothing)."""
    import optuna
    from optuna.trial import TrialState

    from harness.tuning import _drive, load_or_create, open_storage

    handle = open_storage(storage, heartbeat=10)

    def sampler(number: int) -> Any:
        return optuna.samplers.TPESampler(seed=number, n_startup_trials=5, constant_liar=True)

    study = load_or_create(handle, f"overhead-{trials}", "maximize", {"kind": "bench"}, sampler(0),
                           optuna.pruners.NopPruner())

    def run(trial: Any) -> tuple[Any, float | None]:
        x = trial.suggest_float("x", 0.0, 1.0)
        y = trial.suggest_float("y", 1e-4, 1.0, log=True)
        trial.set_user_attr("record", "none")
        return TrialState.COMPLETE, x * y

    started = time.perf_counter()
    _drive(study, handle, trials, sampler, run)
    return (time.perf_counter() - started) / trials


def _tune(storage: str, results: Path, trials: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "harness.cli", "tune", "--model", "tilted", "--plugin", TOY,
            "--trials", str(trials), "--epochs", "2", "--no-prune", "--results", str(results),
            "--storage", storage, "--quiet", *extra]


def _trials(storage: str) -> list[Any]:
    import optuna

    from harness.tuning import open_storage

    try:
        return optuna.load_study(study_name="tune-tilted-synthetic-streaming",
                                 storage=open_storage(storage).storage).trials
    except KeyError:
        return []


def retry_after_kill(storage: str, results: Path, settle: float) -> float:
    """A worker of this machine is killed mid-trial while another waits for it (started
    ``settle`` seconds before the kill, so that its start-up is not counted)."""
    victim = subprocess.Popen(_tune(storage, results, 1, "--param", "pause=60", "--heartbeat", "1"),
                              env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not any(t.state.name == "RUNNING" and len(t.params) == 2 for t in _trials(storage)):
        time.sleep(0.05)
    survivor = subprocess.Popen(_tune(storage, results, 1, "--heartbeat", "1"),
                                env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(settle)  # the survivor starts, finds the study full and waits
    killed = time.time()
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    survivor.wait()
    [retry] = [t for t in _trials(storage) if t.user_attrs.get("retry_of") is not None]
    return retry.datetime_start.timestamp() - killed


def retry_after_silence(storage: str, results: Path, settle: float) -> float:
    """A worker on another machine stops sending heartbeats (PostgreSQL, heartbeat 1 s): this
    process beats for it while the waiting worker starts, then stops."""
    import threading

    import optuna

    from harness.tuning import open_storage

    assert subprocess.run(_tune(storage, results, 1), env=_env()).returncode == 0
    study = optuna.load_study(study_name="tune-tilted-synthetic-streaming",
                              storage=open_storage(storage, heartbeat=1).storage)
    lost = study.ask({"quality": optuna.distributions.FloatDistribution(-1.0, 1.0),
                      "decay": optuna.distributions.FloatDistribution(0.0, 0.5)})
    lost.set_user_attr("worker", {"host": "another-machine", "pid": 1})
    stop, last = threading.Event(), [0.0]

    def beat() -> None:
        while not stop.is_set():
            study._storage.record_heartbeat(lost._trial_id)
            last[0] = time.time()
            stop.wait(0.5)

    beating = threading.Thread(target=beat)
    beating.start()
    survivor = subprocess.Popen(_tune(storage, results, 2, "--heartbeat", "1"), env=_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(settle)
    stop.set()
    beating.join()
    assert survivor.wait() == 0
    [retry] = [t for t in _trials(storage) if t.user_attrs.get("retry_of") is not None]
    return retry.datetime_start.timestamp() - last[0]


def throughput(storage: str, results: Path, csv: Path, workers: int) -> dict[str, float]:
    command = [sys.executable, "-m", "harness.cli", "grid", "training-fraction",
               "--models", "popularity,recency,frequency", "--values", "0.2,0.4,0.6,0.8",
               "--seeds", "0,1", "--dataset", str(csv), "--results", str(results),
               "--storage", storage, "--quiet"]
    started = time.perf_counter()
    procs = [subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for _ in range(workers)]
    for proc in procs:
        _, err = proc.communicate()
        assert proc.returncode == 0, err
    wall = time.perf_counter() - started
    runs = len(list(results.rglob("*.json")))
    assert runs == 24, runs
    return {"wall_seconds": wall, "runs": runs, "runs_per_minute": 60 * runs / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--settle", type=float, default=30.0,
                        help="seconds a waiting worker gets to start before the death (retry)")
    parser.add_argument("--skip", default="", help="comma-separated cases to skip")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from harness.data.jodie import write_jodie_csv
    from harness.data.synthetic import SyntheticDataset
    from harness.testing.postgres import start_postgres

    server = start_postgres()
    databases = iter(range(1000))
    tmp = Path(tempfile.mkdtemp(prefix="harness-bench-storage-"))
    stores = {"journal": lambda: str(tmp / f"j{next(databases)}" / "optuna.journal"),
              "postgres": lambda: server.create_database(f"bench_{next(databases)}")}
    out: dict[str, Any] = {"machine": platform.platform(), "cpus": os.cpu_count(),
                           "load_before": os.getloadavg()}
    skip = set(filter(None, args.skip.split(",")))
    try:
        if "overhead" not in skip:
            out["overhead_seconds_per_trial"] = {k: overhead(new(), args.trials) for k, new in stores.items()}
            print("overhead s/trial", out["overhead_seconds_per_trial"], flush=True)
        if "retry" not in skip:
            out["retry_seconds"] = {
                f"{k}, killed worker of this machine": retry_after_kill(new(), tmp / f"r{k}", args.settle)
                for k, new in stores.items()}
            out["retry_seconds"]["postgres, silent worker elsewhere (heartbeat 1 s)"] = \
                retry_after_silence(stores["postgres"](), tmp / "rs", args.settle)
            print("retry s", out["retry_seconds"], flush=True)
        if "throughput" not in skip:
            csv = tmp / "grid.csv"
            write_jodie_csv(SyntheticDataset(n_users=100, n_items=50, n_events=3000).load(), csv)
            out["throughput"] = {}
            for kind, new in stores.items():
                for n in map(int, args.workers.split(",")):
                    got = throughput(new(), tmp / f"t{kind}{n}", csv, n)
                    out["throughput"][f"{kind}, {n} workers"] = got
                    print(kind, n, "workers", got, flush=True)
    finally:
        server.stop()
    out["load_after"] = os.getloadavg()
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
