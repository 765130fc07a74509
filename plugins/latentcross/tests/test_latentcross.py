from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from harness_latentcross import LatentCross, latent_cross, plan_window, time_windows

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


def _fitted(stream: Interactions, epochs: int = 2, **params) -> LatentCross:
    model = LatentCross(**{"embedding_size": 8, "windows": 15, "time_buckets": 8, **params})
    model.fit(stream, seed=0)
    for _ in range(epochs):
        model.train_epoch()
    return model


def test_latent_cross_by_hand():
    h = torch.tensor([[1.0, 2.0, -3.0]])
    ctx = torch.tensor([[0.5, -1.0, 2.0]])
    assert latent_cross(h, ctx).tolist() == [[1.5, 0.0, -9.0]]


def _tiny() -> Interactions:
    # user 0: t = 0, 10, 1000 (log gaps log 11 and log 991); user 1: t = 5
    return Interactions.from_arrays(user=[0, 1, 0, 0], item=[1, 2, 0, 1], t=[0.0, 5.0, 10.0, 1000.0],
                                    n_users=3, n_items=3)


def test_output_cross_score_by_hand():
    """score = relu(W_r (h * (1 + ctx_out[bucket])) + b_r) @ E_out^T + b_out, computed by hand."""
    model = _fitted(_tiny(), epochs=0, embedding_size=2, time_buckets=4)
    assert model._gap_max == pytest.approx(np.log(991.0))
    net = model._net
    with torch.no_grad():
        net.ctx_out.zero_()
        net.ctx_out[2] = torch.tensor([1.0, -0.5])  # bucket of a gap with log1p(gap)/max in [.5,.75)
        net.relu_w.copy_(torch.tensor([[1.0, 0.0], [1.0, -1.0]]))
        net.relu_b.copy_(torch.tensor([0.0, 0.25]))
        net.item_out.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, -1.0]]))
        net.item_out_b.copy_(torch.tensor([0.0, 0.5, 0.0]))
        model._U[0] = torch.tensor([0.5, 2.0, 0.0, 0.0])  # [h | c]
    model._cache = None
    gap = np.expm1(0.6 * np.log(991.0))  # bucket floor(0.6 * 4) = 2
    query = Interactions.from_arrays(user=[0], item=[0], t=[1000.0 + gap], n_users=3, n_items=3)
    crossed = np.array([0.5 * 2.0, 2.0 * 0.5])  # h * (1 + [1, -0.5]) = [1, 1]
    z = np.maximum(np.array([[1.0, 0.0], [1.0, -1.0]]) @ crossed + [0.0, 0.25], 0)  # [1, .25]
    expect = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, -1.0]]) @ z + [0.0, 0.5, 0.0]
    np.testing.assert_allclose(model.score(query)[0], expect, rtol=1e-6)
    # A user with no earlier event uses the "first event" context (bucket time_buckets = 4).
    with torch.no_grad():
        net.ctx_out[4] = torch.tensor([-1.0, -1.0])  # crosses every state to zero
    model._cache = None
    fresh = Interactions.from_arrays(user=[2], item=[0], t=[5.0], n_users=3, n_items=3)
    np.testing.assert_allclose(model.score(fresh)[0],
                               np.array([[1, 0], [0, 1], [2, -1.0]]) @ [0.0, 0.25] + [0, 0.5, 0],
                               rtol=1e-6)


def test_input_cross_step_by_hand():
    """observe: x = item_in[i] * (1 + ctx_in[bucket]), one LSTM step from a zero state."""
    model = _fitted(_tiny(), epochs=0, embedding_size=2, time_buckets=4, use_features=False)
    net = model._net
    with torch.no_grad():
        net.item_in[2] = torch.tensor([1.0, -2.0])
        net.ctx_in[4] = torch.tensor([0.5, 1.0])  # user 2 has no earlier event: bucket 4
        net.w_ih.copy_(torch.tensor([[1.0, 0.0]] * 8))  # every gate reads x[0]
        net.w_ih[2:4] = torch.tensor([[0.0, 1.0], [0.0, 1.0]])  # except the forget gate: x[1]
        net.b_ih.zero_()
        net.b_hh.zero_()
    model._cache = None
    model.observe(Interactions.from_arrays(user=[2], item=[2], t=[50.0], n_users=3, n_items=3))
    x = np.array([1.0 * 1.5, -2.0 * 2.0])  # [1.5, -4]
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    c = sig(x[0]) * np.tanh(x[0])  # forget gate times a zero cell adds nothing
    h = sig(x[0]) * np.tanh(c)
    np.testing.assert_allclose(model._U[2].numpy(), [h, h, c, c], rtol=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_tbatches_hold_each_user_once_in_time_order(seed):
    stream = random_stream(n_events=700, seed=seed)
    user, item = stream.user.astype(np.int64), stream.item.astype(np.int64)
    for a, b in time_windows(stream.t, 5):
        plan = plan_window(user[a:b], item[a:b], a, item_state=False)
        assert sorted(plan.order.tolist()) == list(range(a, b))
        tb_of = np.empty(b - a, np.int64)
        tb_of[plan.order - a] = plan.tbatch
        for k in range(len(plan.bounds) - 1):
            ev = plan.order[plan.bounds[k]:plan.bounds[k + 1]]
            assert len(ev) > 0 and len(set(user[ev].tolist())) == len(ev)
        for v in np.unique(user[a:b]):
            assert (np.diff(tb_of[user[a:b] == v]) == 1).all()  # a user's k-th event: t-batch k
        assert plan.read_item is None


@pytest.mark.parametrize("params", [{}, {"cell": "gru", "time_context": "projection"}])
def test_block_scores_are_bitwise_one_at_a_time(params):
    stream = random_stream(n_events=900, seed=3)
    model = _fitted(stream[:500], **params)
    rest = stream[500:]
    assert max(len(b) for b in _blocks(rest, 1024)) > 3
    blocked = _replay(copy.deepcopy(model), rest, 1024)
    single = _replay(copy.deepcopy(model), rest, 1)
    np.testing.assert_array_equal(blocked[0], single[0])
    np.testing.assert_array_equal(blocked[1], single[1])


@pytest.mark.parametrize("params", [{}, {"cell": "gru", "time_context": "projection"}])
def test_training_recurrence_equals_streaming_updates(params):
    stream = random_stream(n_events=500, seed=6)
    model = _fitted(stream, epochs=0, learning_rate=0.0, weight_decay=0.0, **params)
    model.train_epoch()
    trained = model._U.clone()
    model._reset_state()
    model._last_u[:] = np.nan
    for j in range(len(stream)):
        model.observe(stream[j:j + 1])
    torch.testing.assert_close(trained, model._U, rtol=1e-4, atol=1e-5)


def test_state_head_shapes_and_probabilities():
    stream = random_stream(n_events=500, seed=2)
    model = _fitted(stream[:300], epochs=1)
    params = dict(model._net.named_parameters())
    assert params["head1_w"].shape == (50, 8) and params["head2_w"].shape == (2, 50)
    assert model._head(torch.zeros(7, 8), params).shape == (7, 2)
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
    with pytest.raises(UsageError, match="cell"):
        LatentCross(cell="rnn").fit(stream)
    with pytest.raises(UsageError, match="time_context"):
        LatentCross(time_context="raw").fit(stream)
