"""Leaderboards as a reader meets them: one table per dataset content, units, alignment."""

from __future__ import annotations

import pytest

from harness.cli import main
from harness.leaderboard import leaderboard
from harness.records import load_records


@pytest.fixture(scope="module")
def csv(tmp_path_factory):
    from harness.data import write_jodie_csv
    from harness.testing import realistic_stream

    path = tmp_path_factory.mktemp("data") / "events.csv"
    write_jodie_csv(realistic_stream(n_events=3000), path)
    return path


def test_one_file_reached_by_two_paths_is_one_table_with_one_name(tmp_path, csv, monkeypatch):
    monkeypatch.chdir(csv.parent)
    results = tmp_path / "r"
    for spec, model in ((str(csv), "popularity"), ("./events.csv", "recency")):
        assert main(["run", "--models", model, "--dataset", spec, "--results", str(results),
                     "--in-process", "--quiet"]) == 0
    records = load_records(results)
    assert {r["dataset"]["name"] for r in records} == {str(csv), "./events.csv"}
    table = leaderboard(records)
    assert table.count("protocol streaming") == 1
    assert "| popularity" in table and "| recency" in table
    assert leaderboard(records, dataset="events") == table  # either name selects the one table
    assert leaderboard(records, dataset=records[0]["dataset"]["sha256"]) == table


def test_units_in_headers_and_numbers_right_aligned_in_latex():
    record = {
        "run_id": "1", "model": "hawkes", "seed": 0, "status": "ok", "params": {},
        "dataset": {"name": "lastfm", "sha256": "ab"}, "audit": {"audits_per_pass": 16},
        "protocol": {"name": "sessions", "tie_policy": "average"},
        "metrics": {"test": {"mae": 12.5}},
        "timing": {"samples": {"epoch_fit_seconds": []}, "eval_seconds": 3.0},
    }
    table = leaderboard([record, {**record, "model": "other", "run_id": "2"}], fmt="latex")
    assert "MAE end-to-start (h)" in table
    assert "\\begin{tabular}{lrrrl}" in table  # model, mae, eval s, seeds, status
    github = leaderboard([record], fmt="github")
    assert "MAE end-to-start (h) |" in github
