"""Progress a user sees: the model's own batch counts, one line per epoch, the early stop."""

from __future__ import annotations

import pytest
from toy_models import Miscounting, Scripted

from harness.api import progress
from harness.cli import main
from harness.sandbox import ModelError, ModelProcess
from harness.testing import realistic_stream


def test_progress_outside_a_run_yields_the_items_and_nothing_else():
    assert list(progress(range(5))) == [0, 1, 2, 3, 4]
    assert list(progress(iter("ab"), unit="window")) == ["a", "b"]


def test_the_models_counts_reach_the_evaluator_over_the_channel():
    train = realistic_stream(n_events=2000)
    counts: list[tuple] = []
    with ModelProcess.start(Scripted()) as proc:
        proc.fit(train, on_progress=lambda *c: counts.append(("fit", *c)))
        assert counts == []  # Scripted counts nothing in fit
        losses = proc.train_epoch(lambda *c: counts.append(c))
    assert losses == {"loss": 1.0}
    assert counts[0] == (0, 4, "batch") and counts[-1] == (4, 4, "batch")
    assert [c[0] for c in counts] == sorted(c[0] for c in counts)


def test_a_malformed_count_fails_the_run():
    with ModelProcess.start(Miscounting()) as proc:
        proc.fit(realistic_stream(n_events=2000))
        with pytest.raises(ModelError, match="malformed progress count"):
            proc.train_epoch()


def test_a_run_prints_one_line_per_epoch_the_early_stop_and_what_finished(tmp_path, capsys):
    code = main(["run", "--plugin", "toy_models:Scripted", "--models", "scripted", "--epochs", "7",
                 "--patience", "2", "--results", str(tmp_path), "--in-process"])
    assert code == 0
    err = capsys.readouterr().err.splitlines()
    epochs = [line for line in err if line.startswith("scripted seed 0 · epoch ")]
    assert [line.split(" · ")[1] for line in epochs] == ["epoch 1/7", "epoch 2/7", "epoch 3/7",
                                                         "epoch 4/7"]
    assert all("loss " in line and "valid mrr " in line and line.endswith(")") for line in epochs)
    assert "scripted seed 0 · early stop after epoch 4: no better validation mrr for 2 epochs; " \
           "testing epoch 2" in err
    assert any(line.startswith("scripted seed 0 · test mrr ") for line in err)
    assert "  scripted seed 0: ok, 4 epochs (best 2)" in "\n".join(err)
    assert "1 run record in" in "\n".join(err)


def test_quiet_says_nothing_during_the_run(tmp_path, capsys):
    assert main(["run", "--plugin", "toy_models:Scripted", "--models", "scripted", "--epochs", "2",
                 "--results", str(tmp_path), "--in-process", "--quiet"]) == 0
    assert "epoch 1/2" not in capsys.readouterr().err


def test_on_a_terminal_the_bar_counts_the_models_batches(tmp_path):
    """The same run on a pseudo-terminal: tqdm bars named by model, seed and epoch, counting the
    batches the model's process reports."""
    import fcntl
    import os
    import pty
    import struct
    import sys
    import termios
    from pathlib import Path

    tests = Path(__file__).resolve().parent
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(tests), os.environ.get("PYTHONPATH", "")])}
    pid, fd = pty.fork()
    if pid == 0:  # the child: the command line on the terminal
        os.execve(sys.executable, [sys.executable, "-m", "harness.cli", "run", "--plugin",
                                   "toy_models:Scripted", "--models", "scripted", "--epochs", "2",
                                   "--param", "scripted.pause=0.4", "--results", str(tmp_path),
                                   "--in-process"], env)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    out = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    _, status = os.waitpid(pid, 0)
    text = out.decode(errors="replace")
    assert os.WEXITSTATUS(status) == 0, text[-2000:]
    assert "scripted seed 0 epoch 1/2" in text and "/4 [" in text and "batch/s" in text
    assert "scripted seed 0 valid 1/2" in text and "ev" in text
