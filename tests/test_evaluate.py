"""The evaluator's protocol rules, each with a test that fails if the rule is broken."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from toy_models import ConstantReturn, Counts, Recorder, Scripted, read_log

from harness.errors import UsageError
from harness.evaluate import Protocol, check_compatible, evaluate, iter_blocks, prepare
from harness.interactions import Interactions
from harness.testing import random_stream

WIKIPEDIA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wikipedia.csv"


def skewed_stream(n=2000, n_users=40, n_items=30, seed=0):
    rng = np.random.default_rng(seed)
    item = np.minimum(rng.zipf(1.6, n) - 1, n_items - 1)
    return Interactions.from_arrays(rng.integers(0, n_users, n), item, np.sort(rng.random(n) * 1e5),
                                    (rng.random(n) < 0.05), n_users=n_users, n_items=n_items)


def test_index_split_boundaries_and_call_order(tmp_path):
    stream = skewed_stream(n=1003)
    log = tmp_path / "calls.jsonl"
    evaluate(Recorder(log=str(log)), stream, Protocol("streaming", audits=0))
    calls = read_log(log)
    assert calls[0][0] == "fit"
    np.testing.assert_array_equal(calls[0][1], stream.t[: int(0.8 * 1003)])
    scored = [t for kind, ts, _ in calls if kind == "score" for t in ts]
    observed = [t for kind, ts, _ in calls if kind == "observe" for t in ts]
    np.testing.assert_array_equal(scored, stream.t[int(0.8 * 1003):])
    np.testing.assert_array_equal(observed, stream.t[int(0.8 * 1003):])
    # every block is scored before it is observed, and blocks come in time order
    kinds = [kind for kind, _, _ in calls[1:]]
    assert kinds == ["score", "observe"] * (len(kinds) // 2)


def test_blocks_have_distinct_users_and_items_and_cover_the_stream():
    stream = random_stream(n_events=500)
    blocks = list(iter_blocks(stream))
    assert blocks[0][0] == 0 and blocks[-1][1] == len(stream)
    for (a, b), (c, _) in zip(blocks, blocks[1:]):
        assert b == c
        assert len(set(stream.user[a:b])) == b - a and len(set(stream.item[a:b])) == b - a
        # maximal: the next event repeats a user or an item of the block
        assert stream.user[b] in stream.user[a:b] or stream.item[b] in stream.item[a:b]
    assert max(b - a for a, b in iter_blocks(stream, max_block=3)) <= 3


def test_block_evaluation_equals_one_at_a_time():
    stream = random_stream(n_events=1500)
    blocked = evaluate(Counts(), stream, Protocol("streaming"))
    single = evaluate(Counts(), stream, Protocol("streaming", max_block=1))
    assert blocked.metrics == single.metrics


def test_tie_policies_on_a_model_that_ties_everything():
    stream = skewed_stream()
    n = stream.n_items
    out = {p: evaluate(Recorder(), stream, Protocol("streaming", tie_policy=p)).metrics["test"]
           for p in ("average", "optimistic", "pessimistic")}
    assert out["optimistic"]["mrr"] == 1.0
    assert out["pessimistic"]["mrr"] == pytest.approx(1 / n)
    assert out["average"]["mrr"] == pytest.approx(sum(1 / r for r in range(1, n + 1)) / n)
    assert out["average"]["recall@10"] == pytest.approx(10 / n)


def test_best_validation_epoch_is_reported_with_early_stopping():
    stream = skewed_stream()
    result = evaluate(Scripted(), stream, Protocol("streaming", patience=2), epochs=7)
    assert result.best_epoch == 2
    assert [e["epoch"] for e in result.epochs] == [1, 2, 3, 4]  # stopped: 2 epochs without gain
    curve = [e["valid"]["mrr"] for e in result.epochs]
    assert curve[1] == max(curve) and curve[2] < curve[0] < curve[1]
    reference = evaluate(Counts(), stream, Protocol("streaming")).metrics
    for key in ("auc", "auc_positives", "auc_events"):  # Counts also predicts states; Scripted not
        reference["test"].pop(key)
    assert result.metrics["test"] == reference["test"]
    assert len(result.timing["samples"]["epoch_fit_seconds"]) == 4


def test_state_protocol_reports_auc_on_a_60_20_20_split():
    stream = skewed_stream(n=3000)
    result = evaluate(Counts(), stream, Protocol("state"))
    assert set(result.metrics["test"]) >= {"auc"} and "mrr" not in result.metrics["test"]
    data = prepare(stream, Protocol("state"))
    assert len(data.train) == int(0.6 * 3000)
    assert (data.split == 1).sum() == int(0.8 * 3000) - int(0.6 * 3000)


def test_incompatible_model_fails_before_training():
    with pytest.raises(UsageError, match="declares return_time; use --protocol sessions"):
        check_compatible(ConstantReturn, "streaming", "constant")
    with pytest.raises(UsageError):
        evaluate(ConstantReturn(), skewed_stream(), Protocol("streaming"))


def test_session_targets_on_a_hand_made_stream():
    hour = 3600.0
    # user 0: visits at 0h (items 1,1,2), 5h (item 3), 9h (4); user 1: 1h (5), 1.2h (6), 30h (7)
    rows = [(0, 1, 0.0), (0, 1, 0.1), (0, 2, 0.2), (1, 5, 1.0), (1, 6, 1.2),
            (0, 3, 5.0), (0, 4, 9.0), (1, 7, 30.0)]
    user, item, t = (np.array(c) for c in zip(*rows))
    stream = Interactions.from_arrays(user, item, t * hour, n_users=2, n_items=8)
    from harness.data.sessions import sessionize
    from harness.evaluate import _session_targets

    s = sessionize(stream, gap=hour)
    ranked, gap, span = _session_targets(s)
    # consecutive repeat (0,1) collapsed; 7 events remain
    assert len(s) == 7
    spans = {round(float(tt) / hour, 1): x / hour for tt, x in zip(s.t, span) if not math.isnan(x)}
    assert spans == {0.2: pytest.approx(0.2), 1.2: pytest.approx(0.2), 5.0: 0.0}  # visit ends
    by_time = {round(float(tt) / hour, 1): (bool(r), g) for tt, r, g in zip(s.t, ranked, gap)}
    assert by_time[0.0][0] is False and by_time[0.2][0] is True  # within-session query
    assert by_time[1.2] == (True, pytest.approx(28.8 * hour))  # end of visit -> next start
    assert by_time[0.2][1] == pytest.approx(4.8 * hour)
    assert by_time[5.0][1] == pytest.approx(4.0 * hour)
    assert math.isnan(by_time[9.0][1]) and math.isnan(by_time[30.0][1])  # no next visit


def test_sessions_protocol_reports_return_time_mae():
    stream = random_stream(n_events=3000, n_users=10)
    result = evaluate(ConstantReturn(hours=2.0), stream, Protocol("sessions", session_gap=3600.0))
    test = result.metrics["test"]
    assert test["mae"] > 0 and test["return_time_queries"] > 0
    assert "mrr" not in test
    assert sum(b["count"] for b in test["mae_by_gap_hours"].values()) == test["return_time_queries"]


@pytest.mark.skipif(not WIKIPEDIA.exists(), reason="needs ../shared/data/wikipedia.csv")
def test_popularity_mrr_on_wikipedia_equals_a_hand_computation():
    from harness.data import open_dataset

    stream = open_dataset(str(WIKIPEDIA)).load()
    result = evaluate(Counts(), stream, Protocol("streaming"))
    # independent: one event at a time, counts so far, expected reciprocal rank over tie orders
    n = len(stream)
    start = int(0.8 * n)
    counts = np.bincount(stream.item[:start], minlength=stream.n_items).astype(float)
    reciprocal = {1: [], 2: []}
    for j in range(start, n):
        true = counts[stream.item[j]]
        above = int((counts > true).sum())
        tied = int((counts == true).sum())
        reciprocal[1 if j < int(0.9 * n) else 2].append(
            sum(1.0 / r for r in range(above + 1, above + tied + 1)) / tied)
        counts[stream.item[j]] += 1
    assert result.metrics["valid"]["mrr"] == pytest.approx(np.mean(reciprocal[1]), rel=1e-12)
    assert result.metrics["test"]["mrr"] == pytest.approx(np.mean(reciprocal[2]), rel=1e-12)


def test_a_split_without_validation_events_is_a_clear_error():
    with pytest.raises(UsageError, match="no training, validation or test events"):
        evaluate(Counts(), skewed_stream(n=5), Protocol("streaming"))


class IterativeCounts(Counts):
    iterative = True
    default_epochs = 3

    def train_epoch(self):
        return {}


def test_missing_validation_metric_is_noted_not_hidden():
    stream = skewed_stream(n=2000)
    label = stream.label.copy()
    label[int(0.6 * 2000):int(0.8 * 2000)] = 0  # no state change in the validation part
    stream = Interactions.from_arrays(stream.user, stream.item, stream.t, label,
                                      n_users=stream.n_users, n_items=stream.n_items)
    result = evaluate(IterativeCounts(), stream, Protocol("state"), epochs=3)
    assert result.best_epoch == 1 and "auc" not in result.metrics["valid"]
    assert any("validation auc was not available" in note for note in result.notes)
    assert any("auc not reported for split valid" in note for note in result.notes)
    assert "auc" in result.metrics["test"]


def test_outcomes_reproduce_the_test_metrics_user_by_user():
    from harness.stats import Outcomes, point

    stream = skewed_stream(n=3000)
    got = evaluate(Counts(), stream, Protocol("streaming", audits=0))
    test = got.metrics["test"]
    ranks = Outcomes.from_record({"outcomes": got.outcomes}, "rank")
    assert got.outcomes["split"] == "test" and ranks is not None
    for metric in ("mrr", "recall@10", "mrr@5", "recall@1"):
        assert point(metric, [ranks]) == pytest.approx(test[metric], rel=1e-12)
    start = int(0.9 * len(stream))  # the test events, counted per user
    np.testing.assert_array_equal(ranks.counts, np.unique(stream.user[start:], return_counts=True)[1])
    state = Outcomes.from_record({"outcomes": got.outcomes}, "state")
    assert point("auc", [state]) == pytest.approx(test["auc"], rel=1e-12)
    assert test["auc_positives"] == int(stream.label[start:].sum())
    assert test["auc_events"] == len(stream) - start
    # another protocol or split: other events, another fingerprint
    other = evaluate(Counts(), stream, Protocol("streaming", train=0.7, valid=0.1, test=0.2, audits=0))
    assert other.outcomes["rank"]["fingerprint"] != got.outcomes["rank"]["fingerprint"]
    again = evaluate(Counts(prior=1.0), stream, Protocol("streaming", audits=0))
    assert again.outcomes["rank"]["fingerprint"] == got.outcomes["rank"]["fingerprint"]


def test_return_time_outcomes_reproduce_the_mae():
    from harness.data.sessions import sessionize
    from harness.stats import Outcomes, point

    stream = sessionize(skewed_stream(n=3000, n_users=20), gap=600.0, max_length=20)
    got = evaluate(ConstantReturn(hours=3.0), stream, Protocol("sessions", audits=0))
    gaps = Outcomes.from_record({"outcomes": got.outcomes}, "return_time")
    assert gaps.counts.sum() == got.metrics["test"]["return_time_queries"]
    assert point("mae", [gaps]) == pytest.approx(got.metrics["test"]["mae"], rel=1e-9)


def test_stream_summary_of_a_hand_made_stream():
    from harness.evaluate import stream_summary

    stream = Interactions.from_arrays([0, 1, 0, 1], [0, 0, 1, 0], [10.0, 12.0, 15.0, 21.0])
    got = stream_summary(stream)
    assert (got["events"], got["t_start"], got["t_end"]) == (4, 10.0, 21.0)
    assert got["user_gap"] == {"count": 2, "mean": 7.0, "std": 2.0}  # 15-10, 21-12
    assert got["user_first"] == {"count": 2, "mean": 1.0, "std": 1.0}  # offsets 0, 2
    assert got["item_gap"] == {"count": 2, "mean": 5.5, "std": 3.5}  # 12-10, 21-12
    assert got["item_first"] == {"count": 2, "mean": 2.5, "std": 2.5}  # offsets 0, 5


def test_the_whole_stream_summary_is_handed_over_only_when_the_protocol_says_so():
    from toy_models import SummaryProbe

    from harness.evaluate import stream_summary

    stream = skewed_stream(n=1000)
    honest = evaluate(SummaryProbe(), stream, Protocol("streaming", audits=0))
    assert honest.model_report["summary"] is None and honest.stream_summary is None
    paper = evaluate(SummaryProbe(), stream, Protocol("streaming", audits=0, stream_summary=True))
    assert paper.model_report["summary"] == paper.stream_summary == stream_summary(stream)
    assert paper.model_report["train_events"] == int(0.8 * len(stream))  # events: training only
    assert all(isinstance(v, (int, float)) for part in paper.stream_summary.values()
               for v in (part.values() if isinstance(part, dict) else [part]))
