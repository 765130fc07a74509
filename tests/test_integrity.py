"""Evaluation integrity: no model sees an event before it is asked to predict it (issue 10).

Each way in has a dishonest model in ``dishonest_models``; each is failed by ``harness run`` with
a one-line reason (or, where the harness takes the cheat's means away, gets exactly the numbers
of the honest model it is built on), and by ``harness validate``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from dishonest_models import SEEN, Drifting, Impatient, Probe, _largest_time_in_process

from harness.cli import main
from harness.data import open_dataset
from harness.evaluate import AuditFailure, Protocol, evaluate, iter_blocks, prepare
from harness.interactions import Interactions
from harness.records import load_records

WIKIPEDIA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wikipedia.csv"
needs_wikipedia = pytest.mark.skipif(not WIKIPEDIA.exists(), reason=f"{WIKIPEDIA} is not there")


def _run(tmp_path: Path, plugin: str, *extra: str) -> dict:
    """``harness run`` of one dishonest model on the real Wikipedia stream; its record."""
    out = tmp_path / "results"
    main(["run", "--plugin", f"dishonest_models:{plugin}", "--models", plugin.lower(), "--dataset",
          str(WIKIPEDIA), "--results", str(out), "--in-process", "--quiet", *extra])
    (record,) = load_records(out)
    return record


def _honest(tmp_path: Path, *extra: str) -> dict:
    return _run(tmp_path / "honest", "Counts", *extra)


def _validate(plugin: str, capsys) -> tuple[int, str]:
    code = main(["validate", "--plugin", f"dishonest_models:{plugin}", "--model", plugin.lower()])
    return code, capsys.readouterr().out


@needs_wikipedia
@pytest.mark.parametrize("plugin", ["GcSnoop", "StackSnoop", "ArgvSnoop", "BaseWalker", "Chameleon"])
def test_a_model_that_reads_the_event_it_predicts_fails_the_run(tmp_path, monkeypatch, plugin):
    # the command line as a user would type it (ArgvSnoop looks for the path there)
    monkeypatch.setattr(sys, "argv", ["harness", "run", "--dataset", str(WIKIPEDIA)])
    record = _run(tmp_path, plugin)
    assert record["status"] == "failed"
    assert record["reason"].startswith("look-ahead: a score row depends on its own or a later event")
    assert " at event " in record["reason"] and "\n" not in record["reason"]


@needs_wikipedia
def test_a_model_that_overwrites_the_truth_fails_and_a_sneaky_one_changes_nothing(tmp_path):
    record = _run(tmp_path, "Overwriter")
    assert record["status"] == "failed" and "read-only" in record["reason"]
    # past the read-only flag it overwrites its own copy, which its observe() then learns from:
    # the audit's shadow, which never scores, learns the truth instead and answers differently
    sneaky = _run(tmp_path / "s", "SneakyOverwriter")
    assert sneaky["status"] == "failed"
    assert "(or score() changed the model's state) at event " in sneaky["reason"]
    # unaudited, its ranks come from the evaluator's truth (had the overwrite reached it, every
    # guess would rank first: MRR 1.0)
    unaudited = _run(tmp_path / "u", "SneakyOverwriter", "--audits", "0")
    assert unaudited["status"] == "ok"
    assert unaudited["metrics"]["test"]["mrr"] < 0.2 and unaudited["metrics"]["test"]["recall@1"] < 0.2


@needs_wikipedia
def test_module_globals_do_not_survive_a_validation_pass(tmp_path):
    record = _run(tmp_path, "Rememberer", "--epochs", "3")
    honest = _honest(tmp_path)
    assert record["status"] == "ok"
    # in-process deep copies let epoch 2 answer from epoch 1's pass (validation MRR 1.0)
    curve = [e["valid"]["mrr"] for e in record["epochs"]]
    assert curve == [honest["metrics"]["valid"]["mrr"]] * 3
    # test continues the best pass, so what it remembers there is the past: a valid event can
    # share a user and a timestamp with a test event (a tiny, honest difference)
    assert record["metrics"]["test"]["mrr"] == pytest.approx(honest["metrics"]["test"]["mrr"], rel=1e-6)


@needs_wikipedia
@pytest.mark.parametrize("plugin, reason", [("NaNScores", "score() returned NaN or infinity at event "),
                                            ("WrongShape", "score() returned shape (")])
def test_nan_and_wrong_shapes_fail_the_run(tmp_path, plugin, reason):
    record = _run(tmp_path, plugin)
    assert record["status"] == "failed" and record["reason"].startswith(reason)


@needs_wikipedia
def test_honest_runs_record_their_audits(tmp_path):
    record = _honest(tmp_path)
    audit = record["audit"]
    assert record["status"] == "ok"
    assert audit["lookahead_blocks"] == audit["twice_blocks"] == 2 * 16  # valid and test passes
    assert audit["lookahead_rows"] >= audit["lookahead_blocks"] and audit["forks"] > 2


@pytest.mark.parametrize("plugin, check", [
    ("GcSnoop", "audited_run"), ("StackSnoop", "audited_run"), ("BaseWalker", "no_lookahead"),
    ("ArgvSnoop", "audited_run"), ("Chameleon", "audited_run"), ("Overwriter", "predictions_shape"),
    ("Rememberer", "passes_leave_nothing"), ("NaNScores", "predictions_shape"),
    ("WrongShape", "predictions_shape"), ("FalselyIndependent", "independent_users"),
])
def test_validate_fails_every_dishonest_model_with_one_line_per_check(plugin, check, capsys):
    SEEN.clear()
    code, out = _validate(plugin, capsys)
    assert code == 1 and "Traceback" not in out
    lines = out.strip().splitlines()
    assert any(line.startswith(f"FAIL  {check}: ") for line in lines), out
    assert all(line.startswith(("PASS  ", "FAIL  ")) for line in lines[:-1])
    import dishonest_models

    from harness.testing import applicable_checks

    assert len(lines) - 1 == len(applicable_checks(getattr(dishonest_models, plugin)()))
    assert lines[-1].split(", ")[1].endswith("failed")  # then "N skipped" where checks do not apply


def test_validate_passes_the_honest_model(capsys):
    code, out = _validate("Counts", capsys)
    assert code == 0 and "FAIL" not in out and "PASS  audited_run" in out


def test_the_model_process_holds_only_what_it_was_asked_about():
    stream = open_dataset(str(WIKIPEDIA) if WIKIPEDIA.exists() else "synthetic").load()
    protocol = Protocol("streaming")
    data = prepare(stream, protocol)
    # control: this process holds the whole stream, so a snooping model here would find the future
    assert _largest_time_in_process() >= float(stream.t[-1])
    report = evaluate(Probe(), data, protocol).model_report
    assert report is not None and report["blocks"] > 1000 and report["walks"] > 40
    assert report["fit_max_t"] == report["train_max_t"] < float(data.events.t[0])
    assert report["beyond_block"] <= 0  # nothing later than the block being asked about
    assert report["views"] == 0 and report["writeable"] == 0
    assert not any(str(WIKIPEDIA) in arg or arg.endswith(".csv") for arg in report["argv"])


def test_audits_compare_every_row_of_small_blocks_and_a_seeded_sample_with_the_altered_row_of_wide_ones():
    from harness.evaluate import AUDIT_ROWS, _Auditor

    auditor = _Auditor(Protocol(audits=4), 0, 1, 100)
    assert auditor.rows(5) == [0, 1, 2, 3, 4] and auditor.rows(AUDIT_ROWS, also=3) == list(range(AUDIT_ROWS))
    for _ in range(20):
        rows = auditor.rows(900, also=899)
        assert len(rows) == len(set(rows)) == AUDIT_ROWS and rows == sorted(rows) and rows[-1] == 899
    first, second = (_Auditor(Protocol(audits=4), 0, 1, 100) for _ in range(2))
    assert first.rows(900) == second.rows(900)  # seeded by the run's seed and the pass


def test_scores_are_refused_exactly_when_a_row_holds_nan_or_infinity():
    from harness.evaluate import _check_answers
    from harness.sandbox import Step
    from harness.testing import realistic_stream

    block = realistic_stream(n_events=6000)[:4]
    huge = np.full((4, block.n_items), np.finfo(np.float32).max, dtype=np.float32)
    _check_answers(Step(scores=huge), block, True, False, 0, np.arange(10, 14))  # sums overflow
    for bad in (np.inf, -np.inf, np.nan):
        scores = np.zeros((4, block.n_items), dtype=np.float32)
        scores[2, 5] = bad
        with pytest.raises(AuditFailure, match="^score\\(\\) returned NaN or infinity at event 12$"):
            _check_answers(Step(scores=scores), block, True, False, 0, np.arange(10, 14))


def test_a_score_that_changes_the_state_fails_the_twice_audit():
    from harness.testing import realistic_stream

    with pytest.raises(AuditFailure, match="scoring the same block twice gave different rows"):
        evaluate(Drifting(), realistic_stream(n_events=6000), Protocol(audits=4))


def test_the_leaderboard_flags_unaudited_runs_and_never_bolds_them(tmp_path, capsys):
    from harness.leaderboard import leaderboard

    for model, audits in (("popularity", "0"), ("frequency", "16")):
        assert main(["run", "--models", model, "--audits", audits, "--results", str(tmp_path),
                     "--in-process", "--quiet"]) == 0
    records = load_records(tmp_path)
    assert {r["model"]: r["audit"]["lookahead_blocks"] > 0 for r in records} == {
        "popularity": False, "frequency": True}
    assert {r["model"]: r["audit"]["audits_per_pass"] for r in records} == {
        "popularity": 0, "frequency": 16}
    table = leaderboard(records)
    (popularity,) = [line for line in table.splitlines() if line.startswith("| popularity")]
    (frequency,) = [line for line in table.splitlines() if line.startswith("| frequency")]
    assert "ok (unaudited)" in popularity and "**" not in popularity
    assert "**" in frequency and "unaudited" not in frequency


def test_isolation_and_audits_change_no_number():
    from toy_models import Counts

    from harness.evaluate import replay
    from harness.metrics import mrr, recall
    from harness.testing import realistic_stream

    protocol = Protocol("streaming")
    data = prepare(realistic_stream(n_events=6000), protocol)
    model = Counts(prior=1.0)
    model.fit(data.train)
    ranks = replay(model, data, protocol, max_block=protocol.max_block)  # in this process
    test = data.split[data.ranked] == 2
    best, worst = ranks["best"][test], ranks["worst"][test]
    got = evaluate(Counts(prior=1.0), data, protocol).metrics["test"]
    assert got["mrr"] == mrr(best, worst) and got["recall@10"] == recall(best, worst, 10)


def test_answers_through_the_shared_segment_change_no_number():
    """Over 140,000 items a block's scores pass 1 MiB and go through the answer segment, into
    memory the evaluator reuses from block to block; audited, the numbers are exact."""
    from toy_models import Counts

    from harness.evaluate import replay
    from harness.metrics import mrr
    from harness.testing import realistic_stream

    small = realistic_stream(n_events=6000)[:3000]
    rng = np.random.default_rng(0)
    stream = Interactions.from_arrays(small.user, small.item * 140 + rng.integers(0, 140, len(small)),
                                      small.t, small.label, n_items=140_000)
    protocol = Protocol("streaming", max_block=8)
    data = prepare(stream, protocol)
    model = Counts(prior=1.0)
    model.fit(data.train)
    ranks = replay(model, data, protocol, max_block=8)
    test = data.split[data.ranked] == 2
    result = evaluate(Counts(prior=1.0), data, protocol)
    assert result.metrics["test"]["mrr"] == mrr(ranks["best"][test], ranks["worst"][test])
    assert result.audit["lookahead_blocks"] == 2 * 16


def test_a_return_time_that_reads_later_events_of_its_block_fails_the_run():
    import dishonest_models

    from harness.testing import realistic_stream

    with pytest.raises(AuditFailure, match="a return time depends on a later event of its block"):
        evaluate(dishonest_models.GapSnoop(), realistic_stream(),
                 Protocol("sessions", session_gap=3600.0, audits=64))


def test_the_next_block_goes_only_after_the_answer_whatever_the_model_sends_first():
    # the evaluator sends block k + 1 the moment it has read the answer to block k: a frame the
    # model sends before its answer (here a progress count) must not count as that answer
    stream = open_dataset("synthetic").load()
    protocol = Protocol("streaming")
    report = evaluate(Impatient(), prepare(stream, protocol), protocol).model_report
    assert report is not None and report["asked"] >= 20
    assert report["early"] == 0


def test_a_stopped_process_never_holds_up_the_evaluator_and_gets_every_request_in_order():
    import os
    import signal
    import threading

    from toy_models import Counts

    from harness.interactions import Interactions
    from harness.sandbox import ModelProcess

    rng = np.random.default_rng(0)
    train = Interactions.from_arrays(rng.integers(0, 50, 500), rng.integers(0, 40, 500),
                                     np.arange(500.0), n_users=50, n_items=40)
    block = Interactions.from_arrays([1, 2, 3], [5, 6, 5], [600.0, 601.0, 602.0], n_users=50,
                                     n_items=40)
    with ModelProcess.start(Counts()) as proc:
        proc.fit(train)
        shadow = proc.fork()
        assert shadow.pid is not None
        os.kill(shadow.pid, signal.SIGSTOP)
        try:  # ~600 kB of requests: far more than the socket holds while nobody reads it
            def send() -> None:
                for _ in range(2000):
                    shadow.step(block, score=False, reply=False)
                shadow.fork(wait=False)  # a copy, handed over after everything before it
            sender = threading.Thread(target=send, daemon=True)
            sender.start()
            sender.join(timeout=60)
            assert not sender.is_alive(), "the evaluator waited for a stopped process"
        finally:
            os.kill(shadow.pid, signal.SIGCONT)
        copy = shadow.fork()  # made after the 2,000 observations and the first copy
        expected = np.bincount(train.item, minlength=40) + 2000 * np.bincount(block.item, minlength=40)
        assert np.array_equal(copy.score(block)[0], expected)
        shadow.sync()


def test_a_model_that_falsely_declares_independent_users_fails_the_own_user_audit():
    from dishonest_models import FalselyIndependent

    from harness.testing import realistic_stream

    with pytest.raises(AuditFailure, match="^not independent of other users: .* at event "):
        evaluate(FalselyIndependent(), realistic_stream(n_events=6000), Protocol(audits=4))


def test_by_user_blocks_keep_each_user_in_time_order_and_the_passes_apart():
    from harness.evaluate import by_user
    from harness.testing import realistic_stream

    data = prepare(realistic_stream(n_events=6000), Protocol("streaming"))
    moved, blocks = by_user(data, max_block=50)
    valid_end = int(np.flatnonzero(data.split == 1)[-1]) + 1
    assert sorted(moved.index.tolist()) == sorted(data.index.tolist())  # every event once
    assert [a for a, _ in blocks] == [0] + [b for _, b in blocks[:-1]] and blocks[-1][1] == len(data.events)
    assert any(a < valid_end <= b - 1 for a, b in blocks) is False  # no block spans both passes
    assert np.array_equal(np.sort(moved.index[:valid_end]), np.sort(data.index[:valid_end]))
    for a, b in blocks:
        users = moved.events.user[a:b]
        assert len(np.unique(users)) == b - a <= 50
    for user in np.unique(moved.events.user):  # each user's events in time order
        assert np.all(np.diff(moved.index[moved.events.user == user]) > 0)
    assert max(b - a for a, b in blocks) == 50 and len(blocks) < len(list(iter_blocks(data.events)))
