"""Runs that are killed: no ok record and no corrupt file is left, and ``--resume`` continues
from the last epoch's checkpoint to exactly the metrics of a run that was never stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from test_tuning import Tilted

from harness.checkpoints import Checkpoint
from harness.cli import main
from harness.errors import HarnessError
from harness.records import load_records


@pytest.fixture(scope="module")
def small_csv(tmp_path_factory) -> Path:
    from harness.data.jodie import write_jodie_csv
    from harness.data.synthetic import SyntheticDataset

    path = tmp_path_factory.mktemp("data") / "small.csv"
    write_jodie_csv(SyntheticDataset(n_users=20, n_items=15, n_events=600, n_features=2).load(), path)
    return path


def _args(results: Path, csv: Path, model: str, *extra: str) -> list[str]:
    params = {"jodie": ["--param", "jodie.embedding_size=8"], "gru4rec": []}[model]
    return ["run", "--models", model, "--dataset", str(csv), "--epochs", "4", "--patience", "10",
            "--results", str(results), "--quiet", *params, *extra]


def _files(results: Path) -> list[Path]:
    return sorted(p for p in results.rglob("*") if p.is_file())


@pytest.mark.parametrize("model", ["jodie", "gru4rec"])
def test_a_run_killed_after_an_epoch_resumes_to_the_same_metrics(tmp_path, small_csv, model):
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    command = [sys.executable, "-m", "harness.cli", *_args(killed, small_csv, model)]
    proc = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not list(killed.rglob("*.checkpoint")) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the machine dies: the command and everything it started
    proc.wait()
    [checkpoint] = list(killed.rglob("*.checkpoint"))
    assert not list(killed.rglob("*.json"))  # no record, so no ok record
    saved = Checkpoint(checkpoint, checkpoint.stem.rsplit("-", 1)[1]).load()
    assert saved is not None
    epoch = len(saved[0]["epochs"])
    assert 1 <= epoch < 4  # killed after epoch `epoch`, before the end

    assert main(_args(killed, small_csv, model, "--resume")) == 0
    assert main(_args(whole, small_csv, model)) == 0
    [resumed], [baseline] = load_records(killed), load_records(whole)
    assert resumed["status"] == baseline["status"] == "ok"
    assert any(n.startswith(f"resumed after epoch {epoch} ") for n in resumed["notes"])
    assert resumed["metrics"] == baseline["metrics"]  # exactly: every digit
    assert [e["losses"] for e in resumed["epochs"]] == [e["losses"] for e in baseline["epochs"]]
    assert [e["valid"] for e in resumed["epochs"]] == [e["valid"] for e in baseline["epochs"]]
    assert resumed["best_epoch"] == baseline["best_epoch"] and resumed["audit"] == baseline["audit"]
    assert not list(killed.rglob("*.checkpoint"))  # a finished run leaves its record only


def test_ctrl_c_names_finished_runs_and_resume_skips_them(tmp_path, small_csv):
    command = [sys.executable, "-m", "harness.cli",
               *_args(tmp_path, small_csv, "gru4rec", "--seeds", "0,1,2")]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (
            list(tmp_path.rglob("*.json")) and list(tmp_path.rglob("*.checkpoint"))):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "harness: interrupted; finished: gru4rec seed 0; not finished: gru4rec seed 1, gru4rec " \
           "seed 2; the same command with --resume" in err
    assert "leaked" not in err and "Traceback" not in err
    [first] = load_records(tmp_path)
    assert main(_args(tmp_path, small_csv, "gru4rec", "--seeds", "0,1,2", "--resume")) == 0
    records = load_records(tmp_path)
    assert sorted(r["seed"] for r in records) == [0, 1, 2]  # seed 0 was not run again
    assert [r["run_id"] for r in records if r["seed"] == 0] == [first["run_id"]]
    assert any(n.startswith("resumed after epoch") for r in records if r["seed"] == 1
               for n in r["notes"])


def test_a_checkpoint_of_another_run_or_a_broken_file_is_refused(tmp_path):
    path = tmp_path / "m-seed0-abc.checkpoint"
    Checkpoint(path, "abc").save({"best_epoch": 1, "best_value": 0.5, "epochs": []},
                                 {"current": np.zeros(3, np.int8)})
    header, arrays = Checkpoint(path, "abc").load() or ({}, {})
    assert header["best_epoch"] == 1 and arrays["current"].tolist() == [0, 0, 0]
    with pytest.raises(HarnessError, match="a checkpoint of another run"):
        Checkpoint(path, "xyz").load()
    path.write_bytes(b"\x05\x00\x00\x00{bad")
    with pytest.raises(HarnessError, match="not a readable checkpoint .*delete it to start the run over"):
        Checkpoint(path, "abc").load()
    assert Checkpoint(tmp_path / "none.checkpoint", "abc").load() is None
    assert [p.name for p in _files(tmp_path)] == [path.name]  # no temporary file left behind


class Unpicklable(Tilted):
    """Trains like Tilted but holds a lock after fit, so its state cannot be pickled."""

    def fit(self, train, *, seed=0):
        super().fit(train, seed=seed)
        self.lock_ = threading.Lock()


def test_a_model_that_does_not_pickle_runs_without_checkpoints(tmp_path, small_csv):
    args = ["run", "--models", "unpicklable", "--plugin", "test_resume:Unpicklable", "--dataset",
            str(small_csv), "--epochs", "2", "--results", str(tmp_path), "--quiet"]
    assert main(args) == 0
    [record] = load_records(tmp_path)
    assert record["status"] == "ok" and not list(tmp_path.rglob("*.checkpoint"))
    assert any(n.startswith("no checkpoints: the model's state could not be saved (TypeError: cannot "
                            "pickle '_thread.lock' object)") for n in record["notes"])


def test_no_checkpoints_saves_none(tmp_path, small_csv):
    args = ["run", "--models", "tilted", "--plugin", "test_tuning:Tilted", "--dataset", str(small_csv),
            "--epochs", "2", "--results", str(tmp_path), "--quiet"]
    assert main([*args, "--no-checkpoints"]) == 0
    assert main(args) == 0
    saved = sorted(len(r["timing"]["samples"]["checkpoint_seconds"]) for r in load_records(tmp_path))
    assert saved == [0, 2]  # with checkpoints: one per epoch
