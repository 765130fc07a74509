from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from harness_rrn import RRN, plan_window, time_windows
from harness_rrn._tbatch import item_patches

from harness.errors import UsageError
from harness.interactions import Interactions
from harness.testing._checks import random_stream


def _blocks(stream: Interactions, max_block: int):
    users: set[int] = set()
    items: set[int] = set()
    start = 0
    for j, (u, i) in enumerate(zip(stream.user.tolist(), stream.item.tolist())):
        if u in users or i in items or j - start >= max_block:
            yield stream[start:j]
            users.clear()
            items.clear()
            start = j
        users.add(u)
        items.add(i)
    yield stream[start:]


def _replay(model, stream: Interactions, max_block: int):
    scores, states = [], []
    for block in _blocks(stream, max_block):
        scores.append(model.score(block))
        model.observe(block)
        states.append(model.predict_state(block))
    return np.concatenate(scores), np.concatenate(states)


def _fitted(stream: Interactions, epochs: int = 2, **params) -> RRN:
    model = RRN(**{"embedding_size": 8, "static_size": 4, "windows": 15, **params})
    model.fit(stream, seed=0)
    for _ in range(epochs):
        model.train_epoch()
    return model


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tbatches_hold_each_user_and_item_once_in_time_order(seed):
    stream = random_stream(n_events=700, seed=seed)
    user, item = stream.user.astype(np.int64), stream.item.astype(np.int64)
    windows = time_windows(stream.t, 7)
    assert windows[0][0] == 0 and windows[-1][1] == len(stream)
    assert all(b0 == a1 for (_, b0), (a1, _) in zip(windows[:-1], windows[1:]))
    for a, b in windows:
        plan = plan_window(user[a:b], item[a:b], a, item_state=True)
        assert sorted(plan.order.tolist()) == list(range(a, b))
        tb_of = np.empty(b - a, np.int64)
        tb_of[plan.order - a] = plan.tbatch
        for k in range(len(plan.bounds) - 1):
            ev = plan.order[plan.bounds[k]:plan.bounds[k + 1]]
            assert len(ev) > 0 and (plan.tbatch[plan.bounds[k]:plan.bounds[k + 1]] == k).all()
            assert len(set(user[ev].tolist())) == len(ev)
            assert len(set(item[ev].tolist())) == len(ev)
        for key in (user[a:b], item[a:b]):  # a user's (item's) events: rising t-batches
            for v in np.unique(key):
                assert (np.diff(tb_of[key == v]) > 0).all()
        # Every event starts from its user's (item's) state after the previous event, or the
        # window's start state.
        pos = np.empty(b - a, np.int64)
        pos[plan.order - a] = np.arange(b - a)
        m = b - a
        for p, e in enumerate(plan.order - a):
            earlier_u = np.flatnonzero(user[a:a + e] == user[a + e])
            expect = 2 * pos[earlier_u[-1]] if len(earlier_u) else (
                2 * m + int(np.searchsorted(plan.init_users, user[a + e])))
            assert plan.read_user[p] == expect
            earlier_i = np.flatnonzero(item[a:a + e] == item[a + e])
            expect = 2 * pos[earlier_i[-1]] + 1 if len(earlier_i) else (
                2 * m + len(plan.init_users) + int(np.searchsorted(plan.init_items, item[a + e])))
            assert plan.read_item[p] == expect


def test_item_patches_are_the_latest_earlier_tbatch_update():
    stream = random_stream(n_events=400, seed=5)
    user, item = stream.user.astype(np.int64), stream.item.astype(np.int64)
    plan = plan_window(user, item, 0, item_state=True)
    items_by_pos = item[plan.order]
    j, x, src = item_patches(plan, items_by_pos)
    got = {(int(a), int(b)): int(c) for a, b, c in zip(j, x, src)}
    assert len(got) == len(j)  # one source per (query, item)
    expect = {}
    for q in range(plan.size):
        for p in range(plan.size):
            if plan.tbatch[p] < plan.tbatch[q]:
                key = (q, int(items_by_pos[p]))
                if key not in expect or plan.tbatch[expect[key]] < plan.tbatch[p]:
                    expect[key] = p
    assert got == expect


@pytest.mark.parametrize("params", [{}, {"static_size": 0, "use_features": False}])
def test_block_scores_are_bitwise_one_at_a_time(params):
    stream = random_stream(n_events=900, seed=3)
    train, rest = stream[:500], stream[500:]
    model = _fitted(train, **params)
    assert max(len(b) for b in _blocks(rest, 1024)) > 3
    blocked = _replay(copy.deepcopy(model), rest, 1024)
    single = _replay(copy.deepcopy(model), rest, 1)
    np.testing.assert_array_equal(blocked[0], single[0])
    np.testing.assert_array_equal(blocked[1], single[1])


def test_scoring_twice_changes_nothing():
    stream = random_stream(n_events=600, seed=4)
    model = _fitted(stream[:400])
    block = next(b for b in _blocks(stream[400:], 1024) if len(b) > 2)
    first = model.score(block)
    np.testing.assert_array_equal(first, model.score(block))


def test_training_recurrence_equals_streaming_updates():
    """With a zero learning rate, the states t-Batch training leaves equal the states of
    observing the training events one at a time."""
    stream = random_stream(n_events=500, seed=6)
    model = _fitted(stream, epochs=0, learning_rate=0.0, weight_decay=0.0)
    model.train_epoch()
    trained_u, trained_i = model._U.clone(), model._I.clone()
    model._reset_state()
    model._last_u[:] = np.nan
    model._last_i[:] = np.nan
    for j in range(len(stream)):
        model.observe(stream[j:j + 1])
    torch.testing.assert_close(trained_u, model._U, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(trained_i, model._I, rtol=1e-4, atol=1e-5)


def test_state_head_shapes_and_probabilities():
    stream = random_stream(n_events=500, seed=2)
    model = _fitted(stream[:300], epochs=1)
    net = model._net
    assert net.head1_w.shape == (50, 8) and net.head2_w.shape == (2, 50)
    assert model._head(torch.zeros(7, 8)).shape == (7, 2)
    block = next(b for b in _blocks(stream[300:], 1024) if len(b) > 2)
    model.observe(block)
    probs = model.predict_state(block)
    assert probs.shape == (len(block),) and ((probs >= 0) & (probs <= 1)).all()


def test_training_lowers_the_loss():
    stream = random_stream(n_events=600, seed=8)
    model = _fitted(stream, epochs=0, learning_rate=1e-2)
    losses = [model.train_epoch()["ranking"] for _ in range(4)]
    assert losses[-1] < losses[0]


def test_bad_parameters_are_usage_errors():
    stream = random_stream(n_events=100)
    with pytest.raises(UsageError, match="n_negatives"):
        RRN(n_negatives=0).fit(stream)
    with pytest.raises(UsageError, match="static_size"):
        RRN(static_size=-1).fit(stream)


def test_hand_written_backward_equals_autograd_through_the_loop():
    from harness_rrn._model import _CoupledLSTM, coupled_lstm_reference

    stream = random_stream(n_events=300, seed=9)
    user, item = stream.user.astype(np.int64), stream.item.astype(np.int64)
    plan = plan_window(user, item, 0, item_state=True)
    assert len(plan.bounds) > 5
    g = torch.Generator().manual_seed(0)
    m, d = plan.size, 3
    n0 = len(plan.init_users) + len(plan.init_items)
    reads = torch.as_tensor(np.stack([plan.read_user, plan.read_item], 1).reshape(-1))
    bounds = plan.bounds.tolist()
    inputs = [torch.randn(m, 2, 4 * d, generator=g, dtype=torch.float64),
              torch.randn(2, d, 4 * d, generator=g, dtype=torch.float64) * 0.5,
              torch.randn(n0, 2 * d, generator=g, dtype=torch.float64)]
    weights = torch.randn(2 * m + n0, 2 * d, generator=g, dtype=torch.float64)
    results = []
    for fn in (coupled_lstm_reference, _CoupledLSTM.apply):
        leaves = [x.clone().requires_grad_() for x in inputs]
        out = fn(*leaves, reads, bounds)
        (out * weights).sum().backward()
        results.append((out.detach(), [x.grad for x in leaves]))
    torch.testing.assert_close(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b)
