"""harness tune and harness grid: trial accounting, resume, parallel workers, pruning, best params."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from harness.api import Model
from harness.cli import main
from harness.records import load_records


class Tilted(Model):
    """Popularity scaled by ``quality - decay * (epoch - 1)``: negative quality ranks popular
    items last (a bad region of the search space), and ``decay`` makes later epochs worse."""

    capabilities: ClassVar[frozenset[str]] = frozenset({"rank"})
    supports_blocks: ClassVar[bool] = True
    iterative: ClassVar[bool] = True
    default_epochs: ClassVar[int] = 3

    def __init__(self, *, quality: float = 1.0, decay: float = 0.0, pause: float = 0.0) -> None:
        self.quality = quality
        self.decay = decay
        self.pause = pause

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        return {"quality": trial.suggest_float("quality", -1.0, 1.0),
                "decay": trial.suggest_float("decay", 0.0, 0.5)}

    def fit(self, train, *, seed=0):
        # Tests set TILTED_CTRL_C=COUNTER_FILE:N to press Ctrl-C during the N-th fit of a test:
        # SIGINT to the evaluator's process, which started this model's process.
        plan = os.environ.get("TILTED_CTRL_C")
        if plan:
            counter, n = plan.rsplit(":", 1)
            fits = int(Path(counter).read_text()) + 1 if Path(counter).exists() else 1
            Path(counter).write_text(str(fits))
            if fits == int(n):
                os.kill(os.getppid(), signal.SIGINT)
                time.sleep(60)
        self.counts_ = np.bincount(train.item, minlength=train.n_items).astype(float)
        self.epoch_ = 0

    def train_epoch(self):
        self.epoch_ += 1
        time.sleep(self.pause)
        return {"loss": 1.0 / self.epoch_}

    def score(self, block):
        scores = np.tile(self.counts_, (len(block), 1))
        for j in range(1, len(block)):
            scores[j:, block.item[j - 1]] += 1
        return (self.quality - self.decay * (self.epoch_ - 1)) * scores

    def observe(self, block):
        np.add.at(self.counts_, block.item, 1)


# -- helpers ---------------------------------------------------------------------------------

TESTS = Path(__file__).resolve().parent
PLUGIN = "test_tuning:Tilted"
STUDY = "tune-tilted-synthetic-streaming"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), *filter(None, [env.get("PYTHONPATH")])])
    return env


def _tune_args(results: Path, trials: int, *extra: str) -> list[str]:
    return ["tune", "--model", "tilted", "--plugin", PLUGIN, "--trials", str(trials),
            "--results", str(results), "--epochs", "2", "--quiet", *extra]


def _study(results: Path, name: str = STUDY):
    import optuna

    from harness.tuning import open_storage

    return optuna.load_study(study_name=name, storage=open_storage(None, results).storage)


def _trial_records(results: Path) -> list[dict[str, Any]]:
    return [r for r in load_records(results) if r.get("tuning")]


def _ctrl_c_at(monkeypatch, tmp_path: Path, n: int) -> None:
    """Press Ctrl-C during the n-th fit of the toy model in this test."""
    monkeypatch.setenv("TILTED_CTRL_C", f"{tmp_path / 'fits'}:{n}")


# -- tune ------------------------------------------------------------------------------------


def test_tune_writes_one_record_per_trial_and_prunes_the_bad_region(tmp_path, capsys):
    assert main(_tune_args(tmp_path, 6)) == 0
    study = _study(tmp_path)
    states = [t.state.name for t in study.trials]
    assert len(states) == 6 and "PRUNED" in states
    records = _trial_records(tmp_path)
    assert sorted(r["tuning"]["trial"] for r in records) == list(range(6))
    for record in records:
        trial = study.trials[record["tuning"]["trial"]]
        assert record["tuning"]["study"] == STUDY
        assert record["params"] == {**trial.params, "pause": 0.0}
        if trial.state.name == "PRUNED":
            assert record["status"] == "pruned" and record["reason"].startswith("pruned at epoch 1")
            # pruned because its first epoch fell below the median of the earlier trials
            first = record["epochs"][0]["valid"]["mrr"]
            earlier = [t.intermediate_values[1] for t in study.trials[: trial.number]
                       if t.state.name == "COMPLETE"]
            assert first < float(np.median(earlier))
        else:
            assert record["status"] == "ok"
            assert trial.value == max(e["valid"]["mrr"] for e in record["epochs"])
    assert "best trial" in capsys.readouterr().out


def test_run_params_best_uses_the_best_trial(tmp_path, capsys):
    assert main(_tune_args(tmp_path, 4, "--no-prune")) == 0
    ok = [r for r in _trial_records(tmp_path) if r["status"] == "ok"]
    best = max(ok, key=lambda r: (r["metrics"]["valid"]["mrr"], -r["tuning"]["trial"]))
    capsys.readouterr()
    code = main(["run", "--models", "tilted", "--plugin", PLUGIN, "--params", "best", "--epochs", "2",
                 "--results", str(tmp_path), "--in-process", "--quiet"])
    assert code == 0
    assert f"trial {best['tuning']['trial']} of study" in capsys.readouterr().err
    plain = [r for r in load_records(tmp_path) if not r.get("tuning")]
    assert len(plain) == 1 and plain[0]["params"] == best["params"]
    # --params-from names the study; --param still overrides a tuned value
    code = main(["run", "--params-from", STUDY, "--plugin", PLUGIN, "--param", "tilted.decay=0.0",
                 "--epochs", "2", "--results", str(tmp_path), "--in-process", "--quiet"])
    assert code == 0
    (latest,) = [r for r in load_records(tmp_path)
                 if not r.get("tuning") and r["run_id"] != plain[0]["run_id"]]
    assert latest["params"] == {**best["params"], "decay": 0.0}


def test_resume_adds_only_the_missing_trials(tmp_path):
    assert main(_tune_args(tmp_path, 2)) == 0
    assert main(_tune_args(tmp_path, 4)) == 0
    assert len(_study(tmp_path).trials) == 4
    assert main(_tune_args(tmp_path, 4)) == 0  # nothing left to do
    assert len(_study(tmp_path).trials) == 4 and len(_trial_records(tmp_path)) == 4


def test_ctrl_c_marks_the_trial_interrupted_and_a_rerun_retries_it(tmp_path, monkeypatch):
    _ctrl_c_at(monkeypatch, tmp_path, 2)  # the second trial is stopped by Ctrl-C
    assert main(_tune_args(tmp_path, 3)) == 130
    monkeypatch.delenv("TILTED_CTRL_C")
    trials = _study(tmp_path).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "WAITING"]
    assert trials[1].user_attrs["interrupted"] == "interrupted by Ctrl-C"
    assert trials[2].params == trials[1].params  # queued again with the same parameters
    assert main(_tune_args(tmp_path, 3)) == 0
    trials = _study(tmp_path).trials
    assert [t.state.name for t in trials].count("FAIL") == 1
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials) == 3
    assert trials[2].user_attrs["retry_of"] == 1 and trials[2].params == trials[1].params


def test_a_killed_worker_is_resumed(tmp_path):
    args = [sys.executable, "-m", "harness.cli", *_tune_args(tmp_path, 3, "--param", "pause=0.4")]
    proc = subprocess.Popen(args, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.2)
        if (tmp_path / "optuna.journal").exists():
            trials = _study(tmp_path).trials
            states = [t.state.name for t in trials]
            if states.count("COMPLETE") + states.count("PRUNED") >= 1 and any(
                    t.state.name == "RUNNING" and "worker" in t.user_attrs and len(t.params) == 2
                    for t in trials):  # killed in its run, after the sampler chose its parameters
                break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    running = [t for t in _study(tmp_path).trials if t.state.name == "RUNNING"]
    assert len(running) == 1
    assert main(_tune_args(tmp_path, 3, "--param", "pause=0.4")) == 0
    trials = _study(tmp_path).trials
    killed = trials[running[0].number]
    assert killed.state.name == "FAIL" and "stopped while it ran" in killed.user_attrs["interrupted"]
    retry = [t for t in trials if t.user_attrs.get("retry_of") == killed.number]
    assert len(retry) == 1 and retry[0].params == killed.params
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials) == 3


def test_two_workers_share_one_study_without_losing_or_repeating_trials(tmp_path):
    args = [sys.executable, "-m", "harness.cli", *_tune_args(tmp_path, 8, "--param", "pause=0.02")]
    procs = [subprocess.Popen(args, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    trials = _study(tmp_path).trials
    assert len(trials) == 8 and all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    assert sorted(r["tuning"]["trial"] for r in _trial_records(tmp_path)) == list(range(8))
    assert len({t.user_attrs["worker"]["pid"] for t in trials}) == 2  # both did some of the work


def test_tune_errors_are_one_line(tmp_path, capsys):
    assert main(["tune", "--model", "popularity", "--results", str(tmp_path)]) == 2
    assert "declares no search space: there is nothing to tune" in capsys.readouterr().err
    assert main(_tune_args(tmp_path, 2, "--space", "qualty=0:1")) == 2
    assert "does not search that parameter; its search space has quality, decay" in capsys.readouterr().err
    assert main(_tune_args(tmp_path, 2, "--space", "quality=1:0")) == 2
    assert "`low <= high` must hold" in capsys.readouterr().err
    assert main(_tune_args(tmp_path, 1)) == 0
    assert main(_tune_args(tmp_path, 2, "--seed", "1")) == 2
    assert "was made by another command (seed: study has 0, this command 1)" in capsys.readouterr().err
    assert main(["run", "--models", "tilted", "--plugin", PLUGIN, "--params-from", "nope",
                 "--results", str(tmp_path), "--quiet"]) == 2
    assert f"no such study in {tmp_path}" in capsys.readouterr().err


def test_space_override_narrows_and_fixes_parameters(tmp_path):
    assert main(_tune_args(tmp_path, 3, "--space", "quality=0.5:0.6", "--param", "decay=0.25")) == 0
    for trial in _study(tmp_path).trials:
        assert 0.5 <= trial.params["quality"] <= 0.6 and "decay" not in trial.params
        assert trial.user_attrs["params"]["decay"] == 0.25


# -- grid ------------------------------------------------------------------------------------


def _grid_args(results: Path, *extra: str) -> list[str]:
    return ["grid", "training-fraction", "--models", "popularity,tilted", "--plugin", PLUGIN,
            "--values", "0.2,0.5", "--seeds", "0,1", "--epochs", "1", "--results", str(results),
            "--quiet", *extra]


def test_grid_runs_every_point_once_and_resumes(tmp_path, monkeypatch):
    _ctrl_c_at(monkeypatch, tmp_path, 2)  # Ctrl-C during the second run of the toy model
    assert main(_grid_args(tmp_path)) == 130
    monkeypatch.delenv("TILTED_CTRL_C")
    done = len(_trial_records(tmp_path))
    assert 0 < done < 8
    assert main(_grid_args(tmp_path)) == 0
    records = _trial_records(tmp_path)
    points = sorted((r["model"], r["tuning"]["value"], r["seed"]) for r in records)
    assert points == sorted((m, v, s) for m in ("popularity", "tilted") for v in (0.2, 0.5) for s in (0, 1))
    for record in records:
        assert record["status"] == "ok" and record["protocol"]["train"] == record["tuning"]["value"]
        assert (record["protocol"]["valid"], record["protocol"]["test"]) == (0.1, 0.1)
    assert main(_grid_args(tmp_path)) == 0  # complete: a rerun adds nothing
    assert len(_trial_records(tmp_path)) == 8


def test_grid_training_fraction_matches_a_plain_run(tmp_path):
    """A grid point is the same evaluation as `harness run --split`."""
    assert main(["grid", "training-fraction", "--models", "popularity", "--values", "0.3",
                 "--results", str(tmp_path), "--quiet"]) == 0
    assert main(["run", "--models", "popularity", "--split", "0.3,0.1,0.1", "--results",
                 str(tmp_path / "plain"), "--in-process", "--quiet"]) == 0
    (grid,) = _trial_records(tmp_path)
    (plain,) = load_records(tmp_path / "plain")
    assert grid["metrics"] == plain["metrics"]


def test_data_size_grid_uses_stream_prefixes(tmp_path):
    assert main(["grid", "data-size", "--models", "popularity", "--values", "0.25,1",
                 "--results", str(tmp_path), "--quiet"]) == 0
    records = sorted(_trial_records(tmp_path), key=lambda r: r["tuning"]["value"])
    full = records[1]["dataset"]["events"]
    assert records[0]["dataset"]["events"] == round(0.25 * full)
    assert records[0]["timing"]["train_events"] == int(0.8 * round(0.25 * full))


def test_thrnn_alpha_grid_under_the_thrnn_preset(tmp_path):
    assert main(["grid", "thrnn-alpha", "--plugin", "toy_models:Thrnn", "--preset", "thrnn",
                 "--values", "0.5,1", "--results", str(tmp_path), "--quiet"]) == 0
    records = sorted(_trial_records(tmp_path), key=lambda r: r["tuning"]["value"])
    assert [r["params"]["alpha"] for r in records] == [0.5, 1.0]
    assert all(r["protocol"]["preset"] == "thrnn" and r["protocol"]["name"] == "sessions"
               for r in records)
    maes = [r["metrics"]["test"]["mae"] for r in records]
    assert maes[0] != maes[1]


def test_grid_errors(tmp_path, capsys):
    assert main(["grid", "embedding-size", "--models", "popularity", "--results", str(tmp_path)]) == 2
    assert "has no embedding size parameter" in capsys.readouterr().err
    assert main(["grid", "thrnn-alpha", "--models", "popularity", "--results", str(tmp_path)]) == 2
    assert "model 'popularity' has no parameter 'alpha'" in capsys.readouterr().err
    assert main(["grid", "training-fractoin", "--models", "popularity"]) == 2
    assert "did you mean 'training-fraction'" in capsys.readouterr().err
    assert main(["grid", "training-fraction", "--models", "popularity", "--values", "0.9",
                 "--results", str(tmp_path)]) == 2
    assert "at most 0.8" in capsys.readouterr().err
