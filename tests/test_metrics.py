"""Metrics against independent references: scikit-learn's AUC and plain loops over all items."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from harness.metrics import AUC, MAE, MRR, Recall, auc, mae, mae_by_bin, mrr, rank_bounds, recall


def loop_ranks(scores, targets, policy):
    """Rank of the true item by walking over every item, ties broken as the policy says."""
    out = []
    for row, target in zip(scores, targets):
        above = sum(1 for s in row if s > row[target])
        tied = sum(1 for s in row if s == row[target]) - 1
        out.append({"optimistic": [above + 1], "pessimistic": [above + 1 + tied],
                    "average": list(range(above + 1, above + tied + 2))}[policy])
    return out


def expected(rank_lists, fn):
    """Mean over queries of the metric averaged over every tie-breaking outcome."""
    return float(np.mean([np.mean([fn(r) for r in ranks]) for ranks in rank_lists]))


@pytest.mark.parametrize("policy", ["average", "optimistic", "pessimistic"])
@pytest.mark.parametrize("seed", range(5))
def test_rank_metrics_match_a_plain_loop(policy, seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 4, size=(60, 25)).astype(float)  # many ties
    targets = rng.integers(0, 25, size=60)
    best, worst = rank_bounds(scores, targets, policy)
    ranks = loop_ranks(scores, targets, policy)
    assert mrr(best, worst) == pytest.approx(expected(ranks, lambda r: 1 / r), rel=1e-12)
    for k in (1, 5, 10, 20):
        assert recall(best, worst, k) == pytest.approx(expected(ranks, lambda r, k=k: r <= k), rel=1e-12)
        assert mrr(best, worst, k) == pytest.approx(
            expected(ranks, lambda r, k=k: 1 / r if r <= k else 0.0), rel=1e-12)


@pytest.mark.parametrize("chunk", [1, 50, 1000])
@pytest.mark.parametrize("policy", ["average", "optimistic", "pessimistic"])
def test_ranks_compared_a_few_rows_at_a_time_match_a_plain_loop(monkeypatch, chunk, policy):
    monkeypatch.setattr("harness.metrics._RANK_CHUNK", chunk)  # one row, two rows, 40 rows a step
    rng = np.random.default_rng(7)
    scores = rng.integers(0, 4, size=(61, 25)).astype(np.float32)
    targets = rng.integers(0, 25, size=61)
    best, worst = rank_bounds(scores, targets, policy)
    ranks = loop_ranks(scores, targets, policy)
    assert best.tolist() == [r[0] for r in ranks]
    assert worst.tolist() == [r[-1] for r in ranks]


@pytest.mark.parametrize("chunk", [1, 50, 65536])
def test_ranks_of_some_rows_equal_ranks_of_those_rows_taken_out(monkeypatch, chunk):
    monkeypatch.setattr("harness.metrics._RANK_CHUNK", chunk)
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 4, size=(40, 25)).astype(np.float32)
    rows = np.sort(rng.choice(40, 17, replace=False))
    targets = rng.integers(0, 25, size=17)
    got = rank_bounds(scores, targets, "average", rows)
    expected = rank_bounds(scores[rows], targets, "average")
    assert all(np.array_equal(g, e) for g, e in zip(got, expected))
    scores[rows[5], 3] = np.nan
    with pytest.raises(ValueError, match=f"first in block row {rows[5]}"):
        rank_bounds(scores, targets, "average", rows)
    scores[rows[5], 3] = 0.0
    scores[np.setdiff1d(np.arange(40), rows)[0], 2] = np.nan  # a row that is not ranked
    rank_bounds(scores, targets, "average", rows)


def test_all_scores_tied_gives_the_middle_rank():
    scores = np.zeros((1, 100))
    best, worst = rank_bounds(scores, np.array([7]), "average")
    assert (best[0], worst[0]) == (1, 100)
    assert recall(best, worst, 10) == pytest.approx(0.1)
    assert mrr(best, worst) == pytest.approx(sum(1 / r for r in range(1, 101)) / 100)
    assert rank_bounds(scores, np.array([7]), "optimistic")[0][0] == 1
    assert rank_bounds(scores, np.array([7]), "pessimistic")[0][0] == 100


def test_mrr_of_large_ranks_keeps_precision():
    best = np.array([10**6, 3])
    assert mrr(best, best) == pytest.approx((1e-6 + 1 / 3) / 2, rel=1e-14)
    assert mrr(np.array([10**6]), np.array([10**6 + 1])) == pytest.approx(
        (1e-6 + 1 / (10**6 + 1)) / 2, rel=1e-9)


def test_nan_scores_are_an_error():
    with pytest.raises(ValueError, match="NaN"):
        rank_bounds(np.array([[0.1, np.nan]]), np.array([0]))
    with pytest.raises(ValueError, match="NaN scores \\(first in block row 1\\)"):
        rank_bounds(np.array([[0.1, 0.2], [0.3, np.nan], [np.nan, 1.0]]), np.array([0, 0, 1]))


def test_infinite_scores_that_sum_to_nan_are_ranked_not_refused():
    best, worst = rank_bounds(np.array([[np.inf, -np.inf, 0.0]]), np.array([2]))
    assert (best[0], worst[0]) == (2, 2)


def test_empty_ranks_are_an_error_not_zero():
    with pytest.raises(ValueError, match="no ranks"):
        mrr(np.array([]))


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    labels = (rng.random(300) < 0.1).astype(int)
    labels[0], labels[1] = 0, 1
    scores = np.round(rng.random(300) + 0.3 * labels, 1)  # ties included
    assert auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), rel=1e-12)


def test_auc_single_positive_and_all_tied():
    labels = np.array([0, 0, 1, 0])
    assert auc(labels, np.array([0.1, 0.2, 0.3, 0.0])) == pytest.approx(1.0)
    assert auc(labels, np.zeros(4)) == pytest.approx(roc_auc_score(labels, np.zeros(4)))


@pytest.mark.parametrize("labels", [[0, 0, 0], [1, 1]])
def test_auc_without_both_classes_is_an_error_not_one_half(labels):
    with pytest.raises(ValueError, match="both classes"):
        auc(np.array(labels), np.zeros(len(labels)))


def test_mae_and_bins():
    true = np.array([0.2, 1.0, 1.4, 3.0])
    pred = np.array([0.0, 2.0, 1.4, 1.0])
    assert mae(true, pred) == pytest.approx(np.mean([0.2, 1.0, 0.0, 2.0]))
    bins = mae_by_bin(true, pred, [0, 0.5, 1.5, np.inf])
    assert bins == {"[0, 0.5)": {"mae": pytest.approx(0.2), "count": 1},
                    "[0.5, 1.5)": {"mae": pytest.approx(0.5), "count": 2},
                    "[1.5, inf)": {"mae": pytest.approx(2.0), "count": 1}}
    with pytest.raises(ValueError):
        mae(np.array([]), np.array([]))


def test_metric_classes_accumulate_like_the_functions():
    rng = np.random.default_rng(0)
    best = rng.integers(1, 30, 50)
    worst = best + rng.integers(0, 3, 50)
    m, r = MRR(k=10), Recall(k=5)
    for a, b in itertools.pairwise(range(0, 51, 10)):
        m.update(best[a:b], worst[a:b])
        r.update(best[a:b], worst[a:b])
    assert m.name == "mrr@10" and r.name == "recall@5"
    assert m.compute() == pytest.approx(mrr(best, worst, 10))
    assert r.compute() == pytest.approx(recall(best, worst, 5))
    a = AUC()
    a.update(np.array([0, 1]), np.array([0.2, 0.9]))
    a.update(np.array([0, 1]), np.array([0.95, 0.1]))
    assert a.compute() == pytest.approx(roc_auc_score([0, 1, 0, 1], [0.2, 0.9, 0.95, 0.1]))
    e = MAE()
    e.update(np.array([1.0]), np.array([3.0]))
    assert e.compute() == 2.0 and not MAE.higher_is_better
    with pytest.raises(ValueError, match="before any update"):
        MRR().compute()
