"""Confidence intervals and paired tests against independent references: scipy.stats.bootstrap,
scipy's paired t-test, scikit-learn's AUC and hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps
from sklearn.metrics import roc_auc_score

from harness.errors import HarnessError
from harness.metrics import hits, mrr, rank_bounds, recall, reciprocal_ranks
from harness.stats import (
    OUTCOMES_FORMAT,
    Outcomes,
    bootstrap,
    interval,
    outcome_table,
    pack,
    paired_p,
    point,
    unpack,
)


def as_record(**tables):
    return {"outcomes": {"format": OUTCOMES_FORMAT, **tables}}


def rank_outcomes(user, best, worst, index=None):
    index = np.arange(len(user)) if index is None else index
    table = outcome_table(user, index, {"best": best.astype(np.int32),
                                        "ties": (worst - best).astype(np.int32)})
    return Outcomes.from_record(as_record(rank=table), "rank")


def random_ranks(rng, n_events, n_users):
    scores = rng.integers(0, 6, size=(n_events, 40)).astype(float)  # ties included
    best, worst = rank_bounds(scores, rng.integers(0, 40, n_events), "average")
    return rng.integers(0, n_users, n_events), best, worst


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.float64])
def test_pack_round_trip(dtype):
    values = (np.arange(1000) % 7 - 3).astype(dtype)
    packed = pack(values)
    assert set(packed) == {"dtype", "n", "zlib_base64"}
    np.testing.assert_array_equal(unpack(packed), values)
    assert unpack(packed).dtype == dtype


def test_a_damaged_packed_array_is_a_clear_error():
    packed = pack(np.arange(10))
    with pytest.raises(HarnessError, match="unreadable"):
        unpack({**packed, "zlib_base64": "bm90IHpsaWI="})
    with pytest.raises(HarnessError, match="holds 10 values, not 11"):
        unpack({**packed, "n": 11})


def test_per_query_metrics_match_a_plain_loop():
    rng = np.random.default_rng(0)
    _, best, worst = random_ranks(rng, 200, 5)
    for j in range(200):
        ranks = range(int(best[j]), int(worst[j]) + 1)
        assert reciprocal_ranks(best[j:j + 1], worst[j:j + 1])[0] == pytest.approx(
            np.mean([1 / r for r in ranks]), rel=1e-12)
        assert hits(best[j:j + 1], worst[j:j + 1], 5)[0] == pytest.approx(
            np.mean([r <= 5 for r in ranks]), rel=1e-12)


def test_outcomes_keep_each_users_events_and_give_back_the_metrics():
    rng = np.random.default_rng(1)
    user, best, worst = random_ranks(rng, 500, 30)
    out = rank_outcomes(user, best, worst)
    assert out.counts.sum() == 500 and out.users == len(np.unique(user))
    np.testing.assert_array_equal(out.counts, np.unique(user, return_counts=True)[1])
    assert point("mrr", [out]) == pytest.approx(mrr(best, worst), rel=1e-12)
    assert point("recall@10", [out]) == pytest.approx(recall(best, worst, 10), rel=1e-12)
    assert point("mrr@5", [out]) == pytest.approx(mrr(best, worst, 5), rel=1e-12)


def test_state_and_return_time_outcomes_give_back_auc_and_mae():
    rng = np.random.default_rng(2)
    n = 400
    user = rng.integers(0, 25, n)
    labels = (rng.random(n) < 0.2).astype(np.int8)
    probs = np.round(rng.random(n) + 0.3 * labels, 1)  # ties
    ranks = np.unique(probs, return_inverse=True)[1]
    state = Outcomes.from_record(as_record(state=outcome_table(
        user, np.arange(n), {"label": labels, "score_rank": ranks.astype(np.int32)})), "state")
    assert point("auc", [state]) == pytest.approx(roc_auc_score(labels, probs), rel=1e-12)
    errors = rng.random(n) * 10
    gaps = Outcomes.from_record(as_record(return_time=outcome_table(
        user, np.arange(n), {"abs_error_hours": errors})), "return_time")
    assert point("mae", [gaps]) == pytest.approx(errors.mean(), rel=1e-12)


def test_records_without_outcomes_have_none():
    assert Outcomes.from_record({"metrics": {}}, "rank") is None
    assert Outcomes.from_record(as_record(), "state") is None


def per_user(out, metric_values):
    starts = np.r_[0, np.cumsum(out.counts)[:-1]]
    return np.add.reduceat(metric_values, starts), out.counts.astype(float)


def test_interval_matches_scipy_bootstrap_over_users():
    rng = np.random.default_rng(3)
    user, best, worst = random_ranks(rng, 3000, 150)
    out = rank_outcomes(user, best, worst)
    reps = bootstrap("mrr", {"a": [out]}, n_resamples=20000, seed=1)["a"]
    lo, hi = interval(reps)
    sums, counts = per_user(out, reciprocal_ranks(out.columns["best"], out.columns["best"]
                                                  + out.columns["ties"]))
    ref = sps.bootstrap((sums, counts), lambda s, c, axis=-1: s.sum(axis) / c.sum(axis),
                        paired=True, vectorized=True, n_resamples=20000, method="percentile",
                        confidence_level=0.95, random_state=np.random.default_rng(7))
    width = hi - lo
    assert ref.confidence_interval.low == pytest.approx(lo, abs=0.03 * width)
    assert ref.confidence_interval.high == pytest.approx(hi, abs=0.03 * width)
    assert lo < point("mrr", [out]) < hi


def test_auc_interval_matches_scipy_bootstrap_over_users():
    rng = np.random.default_rng(4)
    n, n_users = 600, 60
    user = np.sort(rng.integers(0, n_users, n))
    labels = (rng.random(n) < 0.15).astype(np.int8)
    probs = rng.random(n) + 0.5 * labels
    ranks = np.unique(probs, return_inverse=True)[1].astype(np.int32)
    out = Outcomes.from_record(as_record(state=outcome_table(
        user, np.arange(n), {"label": labels, "score_rank": ranks})), "state")
    lo, hi = interval(bootstrap("auc", {"a": [out]}, n_resamples=4000, seed=2)["a"])
    members = [np.flatnonzero(user == u) for u in np.unique(user)]

    def auc_of(drawn, axis=-1):  # every (positive, negative) pair compared, ties one half
        rows = np.concatenate([members[int(u)] for u in drawn])
        pos, neg = probs[rows][labels[rows] == 1], probs[rows][labels[rows] == 0]
        if not (len(pos) and len(neg)):
            return np.nan
        return np.mean(np.greater.outer(pos, neg) + 0.5 * np.equal.outer(pos, neg))

    ref = sps.bootstrap((np.arange(len(members)),), auc_of, vectorized=False, n_resamples=4000,
                        method="percentile", random_state=np.random.default_rng(8))
    width = hi - lo
    assert ref.confidence_interval.low == pytest.approx(lo, abs=0.06 * width)
    assert ref.confidence_interval.high == pytest.approx(hi, abs=0.06 * width)


def test_users_not_events_are_resampled():
    """Each user's 20 events all hit or all miss: the information is that of 50 users, not of
    1,000 events, and the interval must be as wide as 50 draws give (an event bootstrap would
    be about sqrt(20) = 4.5 times narrower)."""
    rng = np.random.default_rng(5)
    good = rng.random(50) < 0.5
    user = np.repeat(np.arange(50), 20)
    best = np.where(good[user], 1, 100)
    out = rank_outcomes(user, best, best)
    lo, hi = interval(bootstrap("recall@10", {"a": [out]}, n_resamples=4000, seed=0)["a"])
    p = good.mean()
    normal_width = 2 * 1.96 * np.sqrt(p * (1 - p) / 50)
    assert hi - lo == pytest.approx(normal_width, rel=0.15)


def test_paired_test_matches_scipy_paired_t_test():
    """One event per user and a small difference: the paired bootstrap and the paired t-test
    give nearly the same p-value (both are normal approximations at this size)."""
    rng = np.random.default_rng(6)
    n = 800
    a_best = rng.integers(1, 30, n)
    b_best = np.maximum(1, a_best + rng.integers(-3, 4, n) + (rng.random(n) < 0.08))
    user = np.arange(n)
    a, b = rank_outcomes(user, a_best, a_best), rank_outcomes(user, b_best, b_best)
    reps = bootstrap("mrr", {"a": [a], "b": [b]}, n_resamples=40000, seed=3)
    p = paired_p(reps["a"], reps["b"])
    ref = sps.ttest_rel(1.0 / a_best, 1.0 / b_best).pvalue
    assert 0.001 < ref < 0.5
    assert p == pytest.approx(ref, abs=0.015)


def test_paired_test_hand_cases():
    rng = np.random.default_rng(7)
    user = rng.integers(0, 40, 400)
    best = rng.integers(2, 50, 400)
    same, better = rank_outcomes(user, best, best), rank_outcomes(user, best - 1, best - 1)
    reps = bootstrap("mrr", {"same": [same], "copy": [same], "better": [better]}, n_resamples=500)
    assert paired_p(reps["same"], reps["copy"]) == 1.0  # identical outcomes: no difference
    assert paired_p(reps["better"], reps["same"]) == 0.0  # better for every user in every resample


def test_pairing_removes_the_shared_variance():
    """Two models that differ by a little on every event and a lot between users: unpaired
    intervals overlap, the paired test still finds the difference."""
    rng = np.random.default_rng(8)
    user = np.repeat(np.arange(200), 10)
    base = np.repeat(rng.integers(1, 40, 200), 10)
    a, b = rank_outcomes(user, base, base), rank_outcomes(user, base + 1, base + 1)
    reps = bootstrap("mrr", {"a": [a], "b": [b]}, n_resamples=2000)
    (alo, ahi), (blo, bhi) = interval(reps["a"]), interval(reps["b"])
    assert blo < ahi and alo < bhi  # overlapping intervals
    assert paired_p(reps["a"], reps["b"]) < 0.01


def test_seeds_are_averaged_and_resamples_are_seeded():
    rng = np.random.default_rng(9)
    user, best, worst = random_ranks(rng, 500, 30)
    one, two = rank_outcomes(user, best, worst), rank_outcomes(user, best, best)
    reps = bootstrap("mrr", {"both": [one, two], "one": [one], "two": [two]}, n_resamples=300, seed=4)
    np.testing.assert_allclose(reps["both"], (reps["one"] + reps["two"]) / 2, rtol=1e-12)
    again = bootstrap("mrr", {"one": [one]}, n_resamples=300, seed=4)["one"]
    np.testing.assert_array_equal(again, reps["one"])
    assert not np.array_equal(bootstrap("mrr", {"one": [one]}, n_resamples=300, seed=5)["one"], again)


def test_outcomes_of_other_events_are_not_paired():
    rng = np.random.default_rng(10)
    user, best, worst = random_ranks(rng, 100, 10)
    a = rank_outcomes(user, best, worst)
    b = rank_outcomes(user, best, worst, index=np.arange(100) + 1)
    with pytest.raises(HarnessError, match="different events"):
        bootstrap("mrr", {"a": [a], "b": [b]}, n_resamples=10)
