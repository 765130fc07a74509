"""The command line as a user meets it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main
from harness.records import load_records

ROOT = Path(__file__).resolve().parents[1]


def harness(*args: str, cwd=None, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=600)


def test_help_does_not_import_torch_or_numpy():
    code = ("import sys; from harness.cli import build_parser; build_parser().format_help(); "
            "print(sorted(m for m in ('torch', 'numpy', 'optuna') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_list_shows_plugins_without_importing_them():
    code = ("import sys; from harness.cli import main; main(['list']); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "popularity" in out.stdout and "synthetic" in out.stdout and "mrr" in out.stdout
    assert out.stdout.strip().endswith("False")


def test_misspelt_model_gets_a_suggestion(capsys):
    assert main(["run", "--models", "populrity", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'popularity'" in err and "Traceback" not in err


def test_unknown_parameter_is_a_usage_error(capsys):
    assert main(["run", "--models", "popularity", "--param", "popularity.alpah=1", "--quiet"]) == 2
    assert "unknown parameter 'alpah'" in capsys.readouterr().err


def test_incompatible_protocol_fails_before_running(capsys, tmp_path):
    code = main(["run", "--models", "hawkes", "--protocol", "streaming", "--results", str(tmp_path)])
    assert code == 2
    assert "use --protocol sessions" in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.json"))


def test_run_writes_records_and_a_leaderboard(tmp_path, capsys):
    code = main(["run", "--models", "popularity,recency,frequency", "--seeds", "0,1",
                 "--results", str(tmp_path), "--in-process", "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    assert "| model" in out and "recency" in out and "±" in out
    records = load_records(tmp_path)
    assert len(records) == 6 and {r["status"] for r in records} == {"ok"}
    record = records[0]
    for key in ("schema_version", "run_id", "status", "model", "params", "dataset", "protocol",
                "seed", "metrics", "epochs", "timing", "environment"):
        assert key in record
    assert record["protocol"]["tie_policy"] == "average"
    assert {"mrr", "recall@10", "mrr@10", "recall@1"} <= set(record["metrics"]["test"])
    assert record["dataset"]["sha256"] and record["dataset"]["events"] > 0
    assert record["timing"]["peak_rss_mb"] > 0 and record["timing"]["events_per_second"] > 0
    assert main(["leaderboard", "--results", str(tmp_path), "--format", "latex"]) == 0
    assert "\\textbf" in capsys.readouterr().out


def test_a_failing_model_does_not_stop_the_others(tmp_path, capsys):
    plugin = "toy_models:Peeking"  # importable from tests/, which pytest puts on sys.path
    broken = tmp_path / "broken.py"
    broken.write_text("from toy_models import Counts\n"
                      "class Broken(Counts):\n"
                      "    def score(self, block):\n"
                      "        raise RuntimeError('boom')\n")
    sys.path.insert(0, str(tmp_path))
    try:
        code = main(["run", "--models", "popularity", "--plugin", "broken:Broken", "--plugin", plugin,
                     "--results", str(tmp_path / "r"), "--in-process", "--quiet"])
    finally:
        sys.path.remove(str(tmp_path))
    assert code == 1
    statuses = {r["model"]: r["status"] for r in load_records(tmp_path / "r")}
    assert statuses == {"popularity": "ok", "broken": "failed", "peeking": "failed"}
    err = capsys.readouterr().err
    assert "RuntimeError: boom" in err
    assert "peeking seed 0: failed: look-ahead" in err


def test_records_are_written_atomically_and_old_versions_refused(tmp_path):
    from harness.errors import HarnessError
    from harness.records import write_json_atomic

    path = write_json_atomic(tmp_path / "a" / "r.json", {"schema_version": 0})
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]
    with pytest.raises(HarnessError, match="schema_version 0"):
        load_records(tmp_path)
    path.write_text(json.dumps({"schema_version": 1}))
    with pytest.raises(HarnessError, match="lacks keys"):
        load_records(tmp_path)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_records_respect_the_umask(tmp_path, umask):
    from harness.records import write_json_atomic

    old = os.umask(umask)
    try:
        path = write_json_atomic(tmp_path / "r.json", {"schema_version": 1})
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_timeout_is_recorded_as_such(tmp_path):
    from harness.runner import RunSpec, run_many

    slow = tmp_path / "slow_model.py"
    slow.write_text("import time\nfrom toy_models import Counts\n"
                    "class Slow(Counts):\n"
                    "    def fit(self, train, *, seed=0):\n"
                    "        time.sleep(60)\n")
    sys.path.insert(0, str(tmp_path))  # spawned workers start with the parent's sys.path
    try:
        [path] = run_many([RunSpec(model="slow", dataset="synthetic", plugin="slow_model:Slow",
                                   results=str(tmp_path / "r"), timeout=8)])
    finally:
        sys.path.remove(str(tmp_path))
    record = json.loads(Path(path).read_text())
    assert record["status"] == "timeout" and "8 s" in record["reason"]


def test_validate_runs_the_conformance_suite(capsys):
    assert main(["validate", "--model", "popularity"]) == 0
    out = capsys.readouterr().out
    assert "PASS  no_lookahead" in out and "PASS  block_equals_single" in out
    assert "9 passed, 0 failed" in out and "PASS  audited_run" in out


def test_validate_fails_a_peeking_model(capsys):
    assert main(["validate", "--model", "peeking", "--plugin", "toy_models:Peeking"]) == 1
    assert "FAIL  no_lookahead" in capsys.readouterr().out


def test_a_malformed_file_is_one_line_exit_2_and_no_record(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,item_id,timestamp,state_label\n1,2,3.0,0\n1,2,abc,0\n")
    code = main(["run", "--models", "popularity", "--dataset", str(bad), "--results",
                 str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert f"{bad}:3: timestamp 'abc' is not a number" in err
    assert not (tmp_path / "r").exists()


def test_preset_thrnn_runs_the_sessions_protocol_and_is_recorded(tmp_path, capsys):
    code = main(["run", "--models", "recency,hawkes", "--preset", "thrnn", "--results",
                 str(tmp_path), "--in-process", "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    assert "MAE THRNN (h)" in out and "MAE end-to-start (h)" in out
    records = load_records(tmp_path)
    assert {Path(r["_path"]).parent.name for r in records} == {"sessions"}
    for record in records:
        protocol = record["protocol"]
        assert (protocol["preset"], protocol["valid"], protocol["min_user_sessions"]) == \
            ("thrnn", 0.0, 3)
        assert protocol["session_gap"] == 1800.0 and record["dataset"]["kept_by_protocol"]
    hawkes = next(r for r in records if r["model"] == "hawkes")
    assert hawkes["metrics"]["test"]["mae_thrnn"] > 0 and hawkes["model_report"]["refit"] == "sliding"
    assert main(["run", "--models", "recency", "--preset", "thrnn", "--protocol", "state",
                 "--results", str(tmp_path), "--quiet"]) == 2
    assert "leave out --protocol" in capsys.readouterr().err
    assert main(["run", "--models", "recency", "--preset", "thrnn", "--refit", "--results",
                 str(tmp_path), "--quiet"]) == 2
    assert "needs a validation part" in capsys.readouterr().err


def _small_csv(path: Path, n: int = 600) -> Path:
    import numpy as np

    rng = np.random.default_rng(0)
    rows = [f"{u},{i},{t:.1f},{int(y)},0.5" for u, i, t, y in zip(
        rng.integers(0, 30, n), rng.integers(0, 20, n), np.sort(rng.random(n) * 1e5),
        rng.random(n) < 0.1)]
    path.write_text("user_id,item_id,timestamp,state_label,f1\n" + "\n".join(rows) + "\n")
    return path


def test_the_jodie_preset_runs_the_authors_protocol_and_records_it(tmp_path, capsys):
    from harness.evaluate import stream_summary

    data = _small_csv(tmp_path / "small.csv")
    results = tmp_path / "results"
    assert main(["run", "--preset", "jodie", "--models", "jodie,popularity", "--epochs", "1",
                 "--dataset", str(data), "--results", str(results), "--in-process", "--quiet",
                 "--param", "jodie.embedding_size=8", "--param", "jodie.windows=20"]) == 0
    records = {r["model"]: r for r in load_records(results)}
    jodie, popularity = records["jodie"], records["popularity"]
    for rec in (jodie, popularity):
        assert rec["protocol"]["preset"] == "jodie" and rec["protocol"]["stream_summary"] is True
        assert rec["protocol"]["tie_policy"] == "optimistic"
    assert {k: jodie["params"][k] for k in ("online_updates", "dt_statistics", "window_span")} == {
        "online_updates": True, "dt_statistics": "stream", "window_span": "stream"}
    assert jodie["model_report"]["dt_statistics"] == "stream"
    from harness.data import open_dataset

    assert jodie["stream_summary"] == stream_summary(open_dataset(str(data)).load())
    expected_span = (jodie["stream_summary"]["t_end"] - jodie["stream_summary"]["t_start"]) / 20
    assert jodie["model_report"]["window_span_seconds"] == pytest.approx(expected_span)
    # flags override the preset; without it nothing of the whole stream is handed over
    assert main(["run", "--preset", "jodie", "--tie-policy", "average", "--models", "popularity",
                 "--dataset", str(data), "--results", str(tmp_path / "r2"), "--in-process",
                 "--quiet"]) == 0
    assert load_records(tmp_path / "r2")[0]["protocol"]["tie_policy"] == "average"
    assert main(["run", "--models", "popularity", "--dataset", str(data), "--results",
                 str(tmp_path / "r3"), "--in-process", "--quiet"]) == 0
    honest = load_records(tmp_path / "r3")[0]
    assert honest["stream_summary"] is None and honest["protocol"]["stream_summary"] is False


def test_an_unknown_preset_gets_a_suggestion(capsys):
    assert main(["run", "--preset", "jodi", "--models", "popularity", "--quiet"]) == 2
    assert "unknown preset 'jodi'; did you mean 'jodie'?" in capsys.readouterr().err


def test_only_the_harness_own_warnings_read_as_the_harness():
    from harness.cli import _one_line_warning
    from harness.data import DataOrderWarning

    ours = _one_line_warning("events were sorted", DataOrderWarning, "/x/harness/data/jodie.py", 9)
    assert ours == "harness: warning: events were sorted\n"
    theirs = _one_line_warning("`x` is deprecated", DeprecationWarning, "/site/scipy/stats.py", 12)
    assert not theirs.startswith("harness") and theirs == (
        "/site/scipy/stats.py:12: DeprecationWarning: `x` is deprecated\n")
