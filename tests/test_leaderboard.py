"""Leaderboard statistics: every metric with its 95% CI, bold only for a significant best,
AUC with its positives, the streaming protocol's AUC marked noisy."""

from __future__ import annotations

import re

import numpy as np
import pytest

from harness.leaderboard import leaderboard
from harness.metrics import auc, mrr, recall
from harness.stats import OUTCOMES_FORMAT, Outcomes, bootstrap, interval, outcome_table, point

N_USERS, PER_USER = 120, 10
USER = np.repeat(np.arange(N_USERS), PER_USER)


def record(model, best, *, seed=0, outcomes=True, protocol="streaming", labels=None, probs=None):
    best = np.asarray(best)
    test = {"mrr": mrr(best), "recall@10": recall(best, k=10), "mrr@10": mrr(best, k=10),
            "recall@1": recall(best, k=1)}
    stored = {"format": OUTCOMES_FORMAT, "split": "test", "unit": "user",
              "rank": outcome_table(USER, np.arange(len(best)), {
                  "best": best.astype(np.int32), "ties": np.zeros(len(best), np.int32)})}
    if labels is not None:
        test.update(auc=auc(labels, probs), auc_positives=int(labels.sum()), auc_events=len(labels))
        stored["state"] = outcome_table(USER, np.arange(len(best)), {
            "label": labels.astype(np.int8),
            "score_rank": np.unique(probs, return_inverse=True)[1].astype(np.int32)})
    rec = {"run_id": f"2026-{model}-{seed}", "model": model, "status": "ok", "seed": seed,
           "dataset": {"name": "toy"}, "protocol": {"name": protocol, "tie_policy": "average"},
           "params": {}, "metrics": {"test": test}, "audit": {"audits_per_pass": 16},
           "timing": {"samples": {"epoch_fit_seconds": []}, "eval_seconds": 1.0}}
    if outcomes:
        rec["outcomes"] = stored
    return rec


def ranks(rng, quality):
    """Ranks whose quality varies a lot between users and little within one."""
    user_level = np.repeat(rng.integers(1, 30, N_USERS), PER_USER)
    return np.maximum(1, user_level + rng.integers(-2, 3, len(USER)) - quality)


def cells(table, model):
    (line,) = [row for row in table.splitlines() if row.startswith(f"| {model} ")]
    return [c.strip() for c in line.strip("|").split("|")]


def test_every_metric_has_its_bootstrap_interval():
    rng = np.random.default_rng(0)
    best = ranks(rng, 0)
    table = leaderboard([record("a", best), record("b", ranks(rng, 3))])
    out = Outcomes.from_record(record("a", best), "rank")
    lo, hi = interval(bootstrap("mrr", {0: [out]}, n_resamples=2000, seed=0)[0])
    assert f"{mrr(best):.4f} [{lo:.4f}, {hi:.4f}]" in cells(table, "a")[1]
    for cell in cells(table, "a")[1:5] + cells(table, "b")[1:5]:
        assert re.search(r"\d\.\d{4} \[\d\.\d{4}, \d\.\d{4}\]", cell), cell
    assert "percentile bootstrap over users" in table


def test_a_significant_best_is_bold_and_a_tie_is_not():
    rng = np.random.default_rng(1)
    base = ranks(rng, 0)
    clearly_better = np.maximum(1, base - 5)
    table = leaderboard([record("good", clearly_better), record("base", base)])
    assert cells(table, "good")[1].startswith("**") and not cells(table, "base")[1].startswith("**")
    # The same ranks but one event better: the lead is not significant, nothing is bold.
    nudged = base.copy()
    nudged[np.argmax(base > 1)] -= 1
    table = leaderboard([record("nudged", nudged), record("base", base)])
    assert "**" not in cells(table, "nudged")[1] and cells(table, "nudged")[1].endswith("≈")
    assert cells(table, "base")[1].endswith("≈")


def test_rows_that_cannot_be_paired_are_never_bold():
    rng = np.random.default_rng(2)
    base = ranks(rng, 0)
    table = leaderboard([record("good", np.maximum(1, base - 5)), record("old", base, outcomes=False)])
    assert not any("**" in c for m in ("good", "old") for c in cells(table, m)[1:5])
    assert cells(table, "good")[1].endswith("?") and cells(table, "old")[1].endswith("?")
    assert "[" not in cells(table, "old")[1]  # no outcomes, no interval
    # another seed set: not the same runs, not paired
    table = leaderboard([record("good", np.maximum(1, base - 5), seed=1), record("base", base)])
    assert cells(table, "base")[1].endswith("?")


def test_seeds_give_mean_std_and_one_interval_of_their_average():
    rng = np.random.default_rng(3)
    a0, a1, b = ranks(rng, 4), ranks(rng, 4), ranks(rng, 0)
    table = leaderboard([record("a", a0, seed=0), record("a", a1, seed=1),
                         record("b", b, seed=0), record("b", b, seed=1)])
    runs = [Outcomes.from_record(record("a", x), "rank") for x in (a0, a1)]
    lo, hi = interval(bootstrap("mrr", {0: runs}, n_resamples=2000, seed=0)[0])
    mean, std = np.mean([mrr(a0), mrr(a1)]), np.std([mrr(a0), mrr(a1)], ddof=1)
    assert point("mrr", runs) == pytest.approx(mean)
    assert cells(table, "a")[1] == f"**{mean:.4f} ± {std:.4f} [{lo:.4f}, {hi:.4f}]**"


def test_auc_shows_positives_and_is_marked_noisy_on_the_streaming_protocol():
    rng = np.random.default_rng(4)
    labels = (rng.random(len(USER)) < 0.03).astype(int)
    probs = rng.random(len(USER)) + 0.3 * labels
    rows = [record("a", ranks(rng, 0), labels=labels, probs=probs),
            record("b", ranks(rng, 1), labels=labels, probs=rng.random(len(USER)))]
    table = leaderboard(rows)
    assert "auc (noisy)" in table.splitlines()[2]
    assert f"· {labels.sum()} pos" in cells(table, "a")[5]
    assert "the state protocol (--protocol state) reports AUC" in table
    state = leaderboard([{**r, "protocol": {"name": "state", "tie_policy": "average"}} for r in rows])
    assert "noisy" not in state and f"· {labels.sum()} pos" in cells(state, "a")[1]


def test_latex_and_plain_marks():
    rng = np.random.default_rng(5)
    base = ranks(rng, 0)
    rows = [record("good", np.maximum(1, base - 5)), record("base", base)]
    assert "\\textbf{" in leaderboard(rows, fmt="latex")
    plain = leaderboard(rows, fmt="plain")
    assert re.search(r"good\s+\d\.\d{4} \[[^]]+\] \*", plain)
