"""The THRNN preset of the sessions protocol: its settings, no-validation and refit runs, and the
return-time MAE as the THRNN authors' tester reports it (hand-computed cases)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from toy_models import ConstantReturn, Recorder, Scripted, read_log

from harness.errors import UsageError
from harness.evaluate import Protocol, evaluate, prepare, preset_session_gap
from harness.interactions import Interactions
from harness.metrics import thrnn_return_mae
from harness.presets import get_preset

HOUR = 3600.0


def test_preset_sets_the_authors_settings_and_explicit_values_win():
    p = Protocol("sessions", preset="thrnn")
    assert p.fractions == (0.8, 0.0, 0.2)
    assert (p.min_session_length, p.max_visit_length, p.drop_single_tail, p.min_user_sessions) == \
        (2, 39, True, 3)
    assert p.session_gap == 1800.0 and p.min_return_gap == 1800.0 and p.max_return_gap == 500 * HOUR
    assert Protocol(preset="thrnn").name == "sessions"  # the default name gives way to the preset
    honest = Protocol("sessions", preset="thrnn", valid=0.1, test=0.2, refit=True, session_gap=3600.0)
    assert honest.fractions == (0.7, 0.1, 0.2) and honest.refit
    assert honest.min_return_gap == 3600.0  # the minimum gap follows the session gap
    plain = Protocol("sessions")
    assert (plain.min_session_length, plain.max_visit_length, plain.drop_single_tail,
            plain.min_user_sessions, plain.min_return_gap) == (1, 40, False, 1, None)
    assert json.loads(json.dumps(p.to_dict()))["preset"] == "thrnn"  # recorded
    assert set(get_preset("thrnn").protocol) <= set(p.to_dict())


def test_preset_session_gap_is_the_authors_code():
    assert preset_session_gap("thrnn", "lastfm-1k") == 1800.0
    assert preset_session_gap("thrnn", "/data/reddit-subreddits.csv") == 3600.0
    assert preset_session_gap(None, "reddit") is None


@pytest.mark.parametrize("kwargs,message", [
    ({"preset": "thrn"}, "did you mean 'thrnn'"),
    ({"name": "state", "preset": "thrnn"}, "leave out --protocol"),
    ({"name": "sessions", "valid": 0.0, "refit": True}, "needs a validation part"),
    ({"name": "sessions", "min_user_sessions": 0}, "min_user_sessions must be an integer >= 1"),
    ({"name": "sessions", "min_return_gap": 600 * HOUR}, "min_return_gap < max_return_gap"),
    ({"name": "sessions", "test": 0.0}, "must be positive"),
])
def test_bad_protocol_settings_are_usage_errors(kwargs, message):
    with pytest.raises(UsageError, match=message):
        Protocol(**kwargs)


def visits_stream(plan: dict[int, list[tuple[float, int]]]) -> Interactions:
    """Per user, visits as (start hour, number of events); events 6 min apart, items 0, 1, ..."""
    rows = [(u, k, (start + 0.1 * k) * HOUR) for u, visits in plan.items()
            for start, n in visits for k in range(n)]
    rows.sort(key=lambda r: r[2])
    user, item, t = (np.array(c) for c in zip(*rows))
    return Interactions.from_arrays(user, item, t, n_users=len(plan), n_items=50)


def test_thrnn_return_mae_hand_computed():
    true = np.array([0.2, 1.0, 10.0, 600.0, 40.0])
    pred = np.array([1.0, 3.0, 2.0, 2.0, 50.0])
    out = thrnn_return_mae(true, pred, min_gap=0.5, max_gap=500.0, edges=(2.0, 12.0, 36.0))
    assert out["queries"] == {"kept": 3, "below_min": 1, "compressed": 1}
    assert out["mae_thrnn"] == pytest.approx((2.0 + 8.0 + 10.0) / 3)  # 0.2 and 600 left out
    assert out["mae_thrnn_with_compressed"] == pytest.approx((2.0 + 8.0 + 10.0 + 498.0) / 4)
    assert out["mae_thrnn_by_gap"] == {
        "[0, 0.5)": {"mae": pytest.approx(0.8), "count": 1},
        "[0.5, 2)": {"mae": pytest.approx(2.0), "count": 1},
        "[2, 12)": {"mae": pytest.approx(8.0), "count": 1},
        "[36, 500)": {"mae": pytest.approx(10.0), "count": 1},
        "[500, inf)": {"mae": pytest.approx(498.0), "count": 1},
    }
    none_kept = thrnn_return_mae([0.1, 700.0], [1.0, 1.0], min_gap=0.5, max_gap=500.0)
    assert "mae_thrnn" not in none_kept and none_kept["mae_thrnn_with_compressed"] == 499.0


def test_preset_run_end_to_end_by_hand():
    # Users 0-2: ten 2-event visits (span 0.1 h). Test = sessions 8 and 9 (int(0.8 * 10) = 8),
    # so each user has one return-time query: the end of visit 8. Start-to-start gaps from
    # visit 8: 10 h, 600 h (compressed to 500 h), 40 h. User 3 has 2 visits (dropped: < 3
    # sessions); user 0's 1-event visit is dropped (sessions of 1 event).
    starts = [24.0 * k for k in range(9)]
    plan = {0: [(s, 2) for s in starts] + [(starts[-1] + 10.0, 2), (1000.0, 1)],
            1: [(s, 2) for s in starts] + [(starts[-1] + 600.0, 2)],
            2: [(s, 2) for s in starts] + [(starts[-1] + 40.0, 2)],
            3: [(0.0, 2), (50.0, 2)]}
    stream = visits_stream(plan)
    protocol = Protocol(preset="thrnn", audits=0)
    data = prepare(stream, protocol)
    assert set(data.train.user.tolist()) == {0, 1, 2} and len(data.train) == 3 * 8 * 2
    assert len(data.events) == 3 * 2 * 2 and (data.split == 2).all()
    assert data.counts() == {"users": 3, "events": 60, "train_events": 48, "valid_events": 0,
                             "test_events": 12, "sessions": 30}
    test = evaluate(ConstantReturn(hours=2.0), stream, protocol).metrics["test"]
    # predicted start-to-start gap: 0.1 h span + 2 h
    assert test["mae_thrnn"] == pytest.approx((7.9 + 37.9) / 2)
    assert test["mae_thrnn_with_compressed"] == pytest.approx((7.9 + 37.9 + 497.9) / 3)
    assert test["mae"] == pytest.approx((7.9 + 597.9 + 37.9) / 3)  # end-to-start, uncompressed
    assert test["return_time_thrnn_queries"] == {"kept": 2, "below_min": 0, "compressed": 1}


def test_no_validation_part_trains_the_requested_epochs_and_tests_the_last(tmp_path):
    stream = visits_stream({u: [(24.0 * k + u, 3) for k in range(10)] for u in range(6)})
    protocol = Protocol(preset="thrnn", audits=0)

    def run(script, epochs):
        return evaluate(Scripted(script=script), stream, protocol, epochs=epochs)

    last_bad = run((1, 1, -1), 3)
    assert last_bad.best_epoch == 3 and len(last_bad.epochs) == 3
    assert all("valid" not in e for e in last_bad.epochs)
    assert last_bad.metrics["valid"] in ({}, {"queries": 0})
    assert last_bad.metrics["test"] == run((-1,), 1).metrics["test"]
    assert last_bad.metrics["test"] != run((1, 1, 1), 3).metrics["test"]
    log = tmp_path / "calls.jsonl"
    evaluate(Recorder(log=str(log)), stream, protocol)
    calls = read_log(log)
    fitted = [t for kind, t, _ in calls if kind == "fit"]
    assert len(fitted) == 1 and len(fitted[0]) == 6 * 8 * 3  # the first 8 of 10 sessions
    shown = sorted(t for kind, ts, _ in calls if kind == "observe" for t in ts)
    assert len(shown) == 6 * 2 * 3 and min(shown) > max(fitted[0]) - 24 * HOUR


def test_refit_trains_a_fresh_model_on_train_and_valid_for_the_best_epoch_count(tmp_path):
    stream = visits_stream({u: [(24.0 * k + u, 3) for k in range(10)] for u in range(6)})
    protocol = Protocol("sessions", preset="thrnn", valid=0.1, test=0.2, refit=True, audits=0,
                        patience=2)
    plain = Protocol("sessions", preset="thrnn", valid=0.1, test=0.2, audits=0, patience=2)
    refit = evaluate(Scripted(), stream, protocol, epochs=7)
    kept = evaluate(Scripted(), stream, plain, epochs=7)
    assert refit.best_epoch == kept.best_epoch == 2  # script (0, 1, -1, ...): epoch 2 is best
    assert refit.metrics["valid"] == kept.metrics["valid"]
    # Counts-based scores after fit(train + valid) equal those after fit(train) + observe(valid)
    assert refit.metrics["test"] == kept.metrics["test"]
    assert refit.timing["refit_train_events"] == 6 * 8 * 3 and refit.timing["train_events"] == 6 * 7 * 3
    assert any(n.startswith("refit:") and "for 2 epochs" in n for n in refit.notes)
    log = tmp_path / "calls.jsonl"
    evaluate(Recorder(log=str(log)), stream, protocol)
    fits = [sorted(t) for kind, t, _ in read_log(log) if kind == "fit"]
    assert [len(f) for f in fits] == [6 * 7 * 3, 6 * 8 * 3]  # train, then train + valid
    assert set(fits[0]) < set(fits[1])


def test_preset_runs_get_their_own_leaderboard_table():
    from harness.leaderboard import leaderboard, leaderboard_rows

    def record(run_id, mae, **protocol):
        return {"run_id": run_id, "status": "ok", "model": "hawkes", "params": {}, "seed": 0,
                "dataset": {"name": "d"}, "audit": {"audits_per_pass": 16},
                "protocol": {"name": "sessions", "tie_policy": "average", **protocol},
                "metrics": {"test": {"mae": mae, "mae_thrnn": mae - 1}},
                "timing": {"samples": {"epoch_fit_seconds": []}, "eval_seconds": 1.0}}

    records = [record("1", 5.0), record("2", 7.0, preset="thrnn"),
               record("3", 9.0, preset="thrnn", refit=True)]
    tables = leaderboard_rows(records)
    assert sorted(k[1] for k in tables) == ["sessions", "sessions preset=thrnn",
                                            "sessions preset=thrnn refit"]
    assert [rows[0]["mae"] for _, rows in sorted(tables.items())] == [[5.0], [7.0], [9.0]]
    assert "protocol sessions preset=thrnn · ties" in leaderboard(records)
