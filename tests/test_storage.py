"""Shared studies on PostgreSQL and workers that die: the trial accounting of tune and grid
holds with several workers on a real server, and a trial whose worker is killed is retried."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_tuning import PLUGIN, STUDY, _env, _trial_records, _tune_args

from harness.cli import main
from harness.records import load_records


def _study(storage: str, name: str = STUDY):
    import optuna

    from harness.tuning import open_storage

    return optuna.load_study(study_name=name, storage=open_storage(storage).storage)


def _workers(args: list[str], n: int) -> list[subprocess.Popen[str]]:
    command = [sys.executable, "-m", "harness.cli", *args]
    return [subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for _ in range(n)]


def _finish(procs: list[subprocess.Popen[str]]) -> list[tuple[str, str]]:
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * len(procs), "\n".join(e for _, e in outs)
    return outs


def test_a_missing_driver_names_the_extra(tmp_path, capsys, monkeypatch):
    import harness.tuning

    monkeypatch.setattr(harness.tuning, "_importable", lambda module: False)
    url = "postgresql://me:secret@dbhost/harness"
    assert main(_tune_args(tmp_path, 1, "--storage", url)) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "harness: error: --storage postgresql://me:***@dbhost/harness: the PostgreSQL driver is "
        'not installed; pip install "harness[postgres]"']
    assert main(_tune_args(tmp_path, 1, "--storage", "postgres://me@dbhost/harness")) == 2
    assert "write the URL as postgresql://user:password@host/database" in capsys.readouterr().err


def test_an_unreachable_server_is_one_line(tmp_path, capsys, postgres_server):
    url = f"postgresql://harness@127.0.0.1:{postgres_server.port}/no_such_database"
    assert main(_tune_args(tmp_path, 1, "--storage", url)) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no_such_database" in err
    assert "check the URL and that the server is running" in err


def test_three_tune_workers_share_one_study_on_postgres(tmp_path, pg_url):
    procs = _workers(_tune_args(tmp_path, 6, "--param", "pause=0.02", "--storage", pg_url), 3)
    _finish(procs)
    trials = _study(pg_url).trials
    # exactly N trials: none lost, none repeated, no surplus trial (the advisory lock)
    assert len(trials) == 6 and all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    assert sorted(r["tuning"]["trial"] for r in _trial_records(tmp_path)) == list(range(6))
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 6
    assert len({t.user_attrs["worker"]["pid"] for t in trials}) >= 2


def test_a_grid_with_two_workers_runs_every_point_once_on_postgres(tmp_path, pg_url):
    args = ["grid", "training-fraction", "--models", "popularity,tilted", "--plugin", PLUGIN,
            "--values", "0.2,0.5", "--seeds", "0,1", "--epochs", "1", "--results", str(tmp_path),
            "--quiet", "--storage", pg_url]
    _finish(_workers(args, 2))
    records = _trial_records(tmp_path)
    points = sorted((r["model"], r["tuning"]["value"], r["seed"]) for r in records)
    assert points == sorted((m, v, s) for m in ("popularity", "tilted") for v in (0.2, 0.5) for s in (0, 1))
    assert all(r["status"] == "ok" for r in records)


@pytest.fixture(params=["journal", "postgres"])
def storage(request, tmp_path) -> str:
    if request.param == "journal":
        return str(tmp_path / "optuna.journal")
    return request.getfixturevalue("pg_url")


def test_a_worker_killed_mid_trial_is_retried_by_a_live_worker(tmp_path, storage):
    """SIGKILL one of two workers while it runs a trial: the other notices (its pid is gone, or
    its heartbeat stops on a server), marks the trial failed and runs it again with the same
    parameters; the study ends with N complete trials."""
    args = _tune_args(tmp_path, 4, "--param", "pause=0.5", "--no-prune", "--storage", storage,
                      "--heartbeat", "1")
    victim, survivor = _workers(args, 2)
    deadline = time.monotonic() + 120
    killed_trial = None
    while killed_trial is None and time.monotonic() < deadline:
        time.sleep(0.1)
        try:
            trials = _study(storage).trials
        except KeyError:  # the study is not created yet
            continue
        for trial in trials:
            mine = trial.user_attrs.get("worker", {}).get("pid") == victim.pid
            if trial.state.name == "RUNNING" and mine and len(trial.params) == 2:  # in its run
                killed_trial = trial
    assert killed_trial is not None, "the victim never ran a trial"
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    _finish([survivor])
    trials = _study(storage).trials
    killed = trials[killed_trial.number]
    assert killed.state.name == "FAIL"
    retries = [t for t in trials if t.user_attrs.get("retry_of") == killed.number]
    assert len(retries) == 1 and retries[0].params == killed.params
    assert retries[0].user_attrs["retry_reason"] in (
        f"worker pid {victim.pid} stopped while it ran", "its worker stopped sending heartbeats")
    assert retries[0].state.name == "COMPLETE"
    assert retries[0].user_attrs["worker"]["pid"] == survivor.pid
    assert sum(t.state.name == "COMPLETE" for t in trials) == 4
    assert len(trials) == 5  # the four and the killed one


def test_a_silent_worker_on_another_machine_is_noticed_by_its_heartbeat(tmp_path, pg_url):
    """A trial left running by a worker elsewhere (its pid cannot be checked from here) whose
    heartbeat stopped is failed after the grace period and retried with its parameters."""
    import optuna

    from harness.tuning import open_storage

    assert main(_tune_args(tmp_path, 1, "--storage", pg_url, "--no-prune")) == 0
    study = optuna.load_study(study_name=STUDY, storage=open_storage(pg_url, heartbeat=1).storage)
    lost = study.ask({"quality": optuna.distributions.FloatDistribution(-1.0, 1.0),
                      "decay": optuna.distributions.FloatDistribution(0.0, 0.5)})
    lost.set_user_attr("worker", {"host": "another-machine", "pid": 1})
    study._storage.record_heartbeat(lost._trial_id)  # its last sign of life
    started = time.monotonic()
    assert main(_tune_args(tmp_path, 2, "--storage", pg_url, "--no-prune", "--heartbeat", "1")) == 0
    assert time.monotonic() - started >= 2.0  # it waited for the grace period (2 heartbeats)
    trials = _study(pg_url).trials
    assert trials[lost.number].state.name == "FAIL"
    retry = [t for t in trials if t.user_attrs.get("retry_of") == lost.number]
    assert retry[0].user_attrs["retry_reason"] == "its worker stopped sending heartbeats"
    assert len(retry) == 1 and retry[0].params == lost.params and retry[0].state.name == "COMPLETE"


def test_pruned_and_surplus_free_resume_on_postgres(tmp_path, pg_url):
    """Run the same command again with a larger N: it adds only the missing trials."""
    assert main(_tune_args(tmp_path, 2, "--storage", pg_url)) == 0
    assert main(_tune_args(tmp_path, 3, "--storage", pg_url)) == 0
    assert len(_study(pg_url).trials) == 3
    assert Path(tmp_path).is_dir() and len(_trial_records(tmp_path)) == 3


# -- the README's "On several machines" ------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
#: The README's commands, scaled down for a test: a small file instead of Wikipedia, fewer
#: trials, epochs and seeds. Everything else runs as written.
_SCALE = (("--dataset wikipedia", "--dataset {csv}"), ("--trials 100", "--trials 3"),
          ("--epochs 20", "--epochs 1"), ("--seeds 0,1,2", "--seeds 0,1"))


def _readme_commands() -> list[str]:
    import re

    readme = (ROOT / "README.md").read_text()
    section = readme.split("## On several machines", 1)[1].split("\n## ", 1)[0]
    [block] = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    return [line.strip() for line in block.strip().splitlines()]


def test_the_readme_commands_for_several_machines_work_as_written(tmp_path, postgres_server):
    import tomllib

    from harness.data.jodie import write_jodie_csv
    from harness.data.synthetic import SyntheticDataset

    csv = tmp_path / "small.csv"
    write_jodie_csv(SyntheticDataset(n_users=20, n_items=15, n_events=600, n_features=2).load(), csv)
    pip, export, *commands = _readme_commands()
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert pip == 'pip install "harness[postgres]"' and any("psycopg" in d for d in extras["postgres"])
    assert export.startswith("export DB=postgresql://")
    url = postgres_server.create_database("readme")
    machines = [tmp_path / "machine-a", tmp_path / "machine-b"]
    for machine in machines:
        machine.mkdir()
    *workers, merge = commands
    for command in workers:  # every command on both "machines" at once, as the README says
        for old, new in _SCALE:
            command = command.replace(old, new.format(csv=csv))
        argv = [sys.executable, "-m", "harness.cli", *command.replace("$DB", url).split()[1:]]
        procs = [subprocess.Popen(argv, cwd=m, env=_env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for m in machines]
        _finish(procs)
    records = [r for m in machines for r in load_records(m / "results")]
    runs = sorted((r["model"], r["seed"]) for r in records if not r.get("tuning"))
    assert runs == sorted((m, s) for m in ("jodie", "gru4rec", "popularity") for s in (0, 1))
    tuned = [r for r in records if r.get("tuning", {}).get("kind") == "tune"]
    grid = [r for r in records if r.get("tuning", {}).get("kind") == "grid"]
    assert sorted(r["tuning"]["trial"] for r in tuned) == [0, 1, 2]
    assert sorted(r["tuning"]["value"] for r in grid) == [32, 64, 128, 256]
    assert all(r["status"] in ("ok", "pruned") for r in records)
    board = subprocess.run([sys.executable, "-m", "harness.cli", *merge.split()[1:]], cwd=tmp_path,
                           env=_env(), capture_output=True, text=True)
    assert board.returncode == 0, board.stderr
    gru4rec = next(line for line in board.stdout.splitlines() if line.startswith("| gru4rec (epochs=1) "))
    assert re.search(r"\|\s+2\s+\| ok", gru4rec), gru4rec  # the seeds of both machines in one row
