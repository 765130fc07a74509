"""THRNN's inter-session queue, presets, return times and the sessions protocol's rules."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch
from harness_thrnn import THRNN, expected_gap

from harness.errors import UsageError
from harness.evaluate import Protocol, evaluate, prepare, replay
from harness.testing import random_stream

SMALL = dict(hidden_size=6, n_sample=8, batch_size=4, min_batch_users=1)
SESSIONS = Protocol("sessions", session_gap=3600.0, audits=8)


def _fitted(data=None, **params) -> THRNN:
    model = THRNN(**{**SMALL, **params})
    model.fit((data or prepare(random_stream(), SESSIONS)).train, seed=0)
    model.train_epoch()
    return model


def test_queue_keeps_the_last_history_sessions_with_the_gap_before_each():
    model = _fitted(history=3)
    net, carry = model._net, model._new_carry(1)
    users = torch.zeros(1, dtype=torch.long)
    reps = [torch.full((1, 6), float(k)) for k in range(5)]
    gaps = [np.nan, 7200.0, 0.0, 3 * 3600.0 + 60, 10 * 3600.0]
    with torch.no_grad():
        h0, rows, _ = model._open(net, carry, users, torch.tensor([gaps[0]]), False)
        assert torch.equal(h0, torch.zeros(1, 6)) and int(rows["length"]) == 0  # no history
        for k in range(1, 5):
            rows = {**rows, "rep": reps[k - 1], "has": torch.tensor([True])}
            h0, rows, _ = model._open(net, rows, users, torch.tensor([gaps[k]]), False)
        # sessions 1..3 in the queue (0 dropped), each with the bucket of the gap before it
        assert int(rows["length"]) == 3
        assert rows["queue"][0, :, 0].tolist() == [1.0, 2.0, 3.0]
        assert rows["gaps"][0].tolist() == [2, 0, 3] and int(rows["gap_open"][0]) == 10
        # the state is the inter-session GRU over [rep, gap embedding, user embedding]
        h = torch.zeros(1, 6)
        for k in range(3):
            x = torch.cat([rows["queue"][:, k], net.gaps(rows["gaps"][:, k]), net.users(users)], 1)
            h = net.inter(x, h)
        torch.testing.assert_close(h0, h)


def test_return_time_is_the_expectation_of_the_time_model():
    data = prepare(random_stream(), SESSIONS)
    model = _fitted(data)
    state = model._ensure_state()
    users = np.flatnonzero(state["online"].seen)[:5]
    with torch.no_grad():
        model._net.time_v.weight.zero_()
        model._net.time_v.bias.fill_(-2.5)
        model._net.time_w.fill_(-0.04)
    model._eval_net = None
    got = model.predict_return_time(users, state["online"].last_t[users])
    want = expected_gap(np.array([-2.5]), -0.04)[0] * 3600.0
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_time_parameters_learn_at_their_own_rate():
    model = _fitted()
    rates = sorted(group["lr"] for opt in model._opt for group in opt.param_groups)
    assert rates == [1e-4, 1e-3, 1e-3]
    timed = [opt for opt in model._opt if opt.param_groups[0]["lr"] == 1e-4][0]
    names = {id(p) for p in timed.param_groups[0]["params"]}
    net = model._net
    assert names == {id(net.time_v.weight), id(net.time_v.bias), id(net.time_w)}


def test_presets_are_table_2_and_explicit_values_win():
    data = prepare(random_stream(), SESSIONS)
    lastfm = THRNN(n_sample=8, batch_size=4, min_batch_users=1)
    lastfm.fit(data.train)
    assert lastfm.fit_report["preset"] == {"hidden_size": 100, "dropout": 0.2, "min_gap": 1800.0,
                                           "session_gap": 1800.0}
    reddit = THRNN(preset="reddit", dropout=0.3, n_sample=8, batch_size=4)
    reddit.fit(data.train)
    assert reddit.fit_report["preset"] == {"hidden_size": 50, "dropout": 0.3, "min_gap": 3600.0,
                                           "session_gap": 3600.0}
    assert reddit._net.items.weight.shape[1] == 50 and reddit._net.users.weight.shape[1] == 10
    with pytest.raises(UsageError, match="reddit"):
        THRNN(preset="redit").fit(data.train)


def test_sessions_protocol_blocks_equal_one_at_a_time_with_return_times():
    data = prepare(random_stream(), SESSIONS)
    model = _fitted(data)
    blocked = replay(copy.deepcopy(model), data, SESSIONS, 1024)
    single = replay(copy.deepcopy(model), data, SESSIONS, 1)
    assert blocked["gap"].size > 50
    for key in ("best", "worst", "gap"):
        np.testing.assert_array_equal(blocked[key], single[key])


def test_return_times_never_see_later_events():
    data = prepare(random_stream(), SESSIONS)
    model = _fitted(data)
    original = replay(copy.deepcopy(model), data, SESSIONS, 1)
    events, n = data.events, len(data.events)
    cut = n // 2
    item = events.item.copy()
    item[cut:] = (item[cut:] + 5) % events.n_items
    changed = replay(copy.deepcopy(model), replace(data, events=replace(events, item=item)),
                     SESSIONS, 1)
    before = int((~np.isnan(data.gap[:cut])).sum())
    np.testing.assert_array_equal(original["gap"][:before], changed["gap"][:before])
    assert not np.array_equal(original["gap"], changed["gap"])  # later ones do see their events


def test_audited_sessions_run_reports_recall_and_mae():
    protocol = Protocol("sessions", session_gap=3600.0, audits=16)
    result = evaluate(THRNN(**SMALL), random_stream(), protocol, epochs=2)
    test = result.metrics["test"]
    assert test["queries"] > 0 and test["return_time_queries"] > 0
    assert np.isfinite(test["mae"]) and test["mae_by_gap_hours"]
    assert result.audit["lookahead_blocks"] > 0
