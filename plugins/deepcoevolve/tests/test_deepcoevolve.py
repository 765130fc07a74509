from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from harness_deepcoevolve import DeepCoevolve, max_norm, pair_scores
from harness_deepcoevolve._model import _LastBefore, _Recurrence, recurrence_reference

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


def _fitted(stream: Interactions, epochs: int = 2, **params) -> DeepCoevolve:
    model = DeepCoevolve(**{"embedding_size": 8, "windows": 15, "n_negatives": 3, **params})
    model.fit(stream, seed=0)
    for _ in range(epochs):
        model.train_epoch()
    return model


def test_max_norm_by_hand():
    x = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    np.testing.assert_allclose(max_norm(x, 1.0).numpy(), [[0.6, 0.8], [0.3, 0.4], [0, 0]], rtol=1e-6)
    assert max_norm(x, None) is x


def test_pair_scores_by_hand():
    rate, gap = torch.tensor([0.5, -1.0]), torch.tensor([2.0, 0.25])
    c = np.exp([0.5, -1.0])
    np.testing.assert_allclose(pair_scores(rate, gap, "rate").numpy(), [0.5, -1.0])
    intensity = np.log(c * np.array([2.0, 0.25]))  # log of the Rayleigh intensity c * gap
    np.testing.assert_allclose(pair_scores(rate, gap, "intensity").numpy(), intensity, rtol=1e-6)
    density = np.log(c * [2.0, 0.25] * np.exp(-c * np.array([2.0, 0.25]) ** 2 / 2))
    np.testing.assert_allclose(pair_scores(rate, gap, "density").numpy(), density, rtol=1e-6)


def test_last_before_matches_a_loop():
    rng = np.random.default_rng(0)
    key = rng.integers(0, 7, 200)
    lookup = _LastBefore(key)
    nodes, events = rng.integers(0, 8, 500), rng.integers(0, 200, 500)
    expect = [max([e for e in range(ev) if key[e] == v], default=-1) for v, ev in zip(nodes, events)]
    np.testing.assert_array_equal(lookup(nodes, events), expect)


def _tiny() -> Interactions:
    # user 0 at t = 100, 110; item 1 at 100, item 0 at 110 and (user 1) at 150
    return Interactions.from_arrays(user=[0, 0, 1], item=[1, 0, 0], t=[100.0, 110.0, 150.0],
                                    n_users=3, n_items=3)


def test_score_is_the_intensity_at_the_request_time_by_hand():
    """log lambda = u . i + log(max(t - max(t_u, t_i), floor) / unit), nodes never seen counting
    from the first training event (t0 = 100)."""
    model = _fitted(_tiny(), epochs=0, embedding_size=2, time_unit=10.0, gap_floor=1.0)
    model._U[2] = torch.tensor([1.0, 0.5])
    model._I[:] = torch.tensor([[2.0, 0.0], [0.0, -1.0], [1.0, 1.0]])
    model._cache = None
    # user 2 (never seen, t_u = t0 = 100) asks at t = 160; item last times 150, 100, never.
    query = Interactions.from_arrays(user=[2], item=[0], t=[160.0], n_users=3, n_items=3)
    rate = np.array([2.0, -0.5, 1.5])
    gap = np.array([10.0, 60.0, 60.0]) / 10.0
    np.testing.assert_allclose(model.score(query)[0], rate + np.log(gap), rtol=1e-6)
    floor = Interactions.from_arrays(user=[2], item=[0], t=[150.0], n_users=3, n_items=3)
    assert model.score(floor)[0, 0] == pytest.approx(2.0 + np.log(1.0 / 10.0))  # gap 0 -> floor


def test_observe_updates_both_sides_from_the_states_before():
    """GRU steps of the user on [item, drift, features] and of the item on [user, drift, ...],
    each from the other's embedding before the event, then the max-norm projection."""
    stream = random_stream(n_events=300, seed=4)
    model = _fitted(stream, epochs=1, max_norm=0.7)
    u, i, t = int(stream.user[0]), int(stream.item[0]), float(stream.t[-1]) + 5.0
    event = Interactions.from_arrays(user=[u], item=[i], t=[t], n_users=stream.n_users,
                                     n_items=stream.n_items, features=stream.features[:1])
    net = model._net
    u0, i0 = model._U[u].clone(), model._I[i].clone()
    cells = {"u": torch.nn.GRUCell(9 + stream.n_features, 8).double(),
             "i": torch.nn.GRUCell(9 + stream.n_features, 8).double()}
    for side, cell in cells.items():
        with torch.no_grad():
            for name in ("w_ih", "w_hh", "b_ih", "b_hh"):
                getattr(cell, f"weight_{name[2:]}" if name[0] == "w" else f"bias_{name[2:]}").copy_(
                    getattr(net, f"{side}_{name}").double())
    drift = [(np.log1p(t - model._last_u[u]) - model._drift_stats[0]) / model._drift_stats[1],
             (np.log1p(t - model._last_i[i]) - model._drift_stats[2]) / model._drift_stats[3]]
    feats = torch.as_tensor(stream.features[:1], dtype=torch.float64)
    with torch.no_grad():
        x_u = torch.cat([i0.double()[None], torch.tensor([[drift[0]]]), feats], 1)
        x_i = torch.cat([u0.double()[None], torch.tensor([[drift[1]]]), feats], 1)
        expect_u = max_norm(cells["u"](x_u, u0.double()[None]), 0.7)
        expect_i = max_norm(cells["i"](x_i, i0.double()[None]), 0.7)
    model.observe(event)
    torch.testing.assert_close(model._U[u].double(), expect_u[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model._I[i].double(), expect_i[0], rtol=1e-5, atol=1e-6)
    assert model._last_u[u] == t and model._last_i[i] == t


@pytest.mark.parametrize("params", [{}, {"cell": "rnn", "rank_by": "density", "max_norm": None}])
def test_block_scores_are_bitwise_one_at_a_time(params):
    stream = random_stream(n_events=900, seed=3)
    model = _fitted(stream[:500], **params)
    rest = stream[500:]
    assert max(len(b) for b in _blocks(rest, 1024)) > 3
    blocked = _replay(copy.deepcopy(model), rest, 1024)
    single = _replay(copy.deepcopy(model), rest, 1)
    np.testing.assert_array_equal(blocked[0], single[0])
    np.testing.assert_array_equal(blocked[1], single[1])


def _states_before(model: DeepCoevolve, stream: Interactions):
    """Every user's and item's embedding just before each event, by one-at-a-time updates."""
    model._reset_state()
    model._last_u[:] = np.nan
    model._last_i[:] = np.nan
    before_u, before_i = [], []
    for j in range(len(stream)):
        before_u.append(model._U.clone())
        before_i.append(model._I.clone())
        model.observe(stream[j:j + 1])
    return torch.stack(before_u), torch.stack(before_i)


@pytest.mark.parametrize("params", [{}, {"cell": "rnn"}])
def test_training_recurrence_equals_streaming_updates(params):
    stream = random_stream(n_events=500, seed=6)
    model = _fitted(stream, epochs=0, learning_rate=0.0, weight_decay=0.0, **params)
    model.train_epoch()
    trained_u, trained_i = model._U.clone(), model._I.clone()
    _states_before(model, stream)
    torch.testing.assert_close(trained_u, model._U, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(trained_i, model._I, rtol=1e-4, atol=1e-5)


def test_window_loss_is_the_sampled_likelihood():
    """The first window's loss, recomputed event by event from one-at-a-time states: -log of the
    true pair's intensity plus c gap^2 / 2 of the true pair, of the user with each sampled item and
    of the item with each sampled user, every node at its state and last time before the event."""
    stream = random_stream(n_events=400, seed=9)
    model = _fitted(stream, epochs=0, learning_rate=0.0, weight_decay=0.0, state_loss_weight=0.0,
                    windows=4, n_negatives=4)
    plan = model._plans[0]
    got = model._train_window(plan, np.random.default_rng(5))["likelihood"]
    before_u, before_i = _states_before(model, stream)
    rng = np.random.default_rng(5)
    m, k = plan.size, 4
    s_items = rng.integers(0, stream.n_items, size=m * k).reshape(m, k)
    s_users = rng.integers(0, stream.n_users, size=m * k).reshape(m, k)
    t, t0, unit = stream.t, stream.t[0], model._unit

    def last(key, node, e):
        prior = [x for x in range(e) if key[x] == node]
        return t[prior[-1]] if prior else t0

    def term(e, u, i):
        c = float(torch.exp(before_u[e][u].double() @ before_i[e][i].double()))
        gap = max(t[e] - max(last(stream.user, u, e), last(stream.item, i, e)), 1.0) / unit
        return c, gap

    total = 0.0
    for p, e in enumerate(plan.order.tolist()):
        u, i = int(stream.user[e]), int(stream.item[e])
        c, gap = term(e, u, i)
        nll = -np.log(c * gap) + c * gap**2 / 2
        nll += sum(cn * gn**2 / 2 for cn, gn in (term(e, u, int(x)) for x in s_items[p]))
        nll += sum(cn * gn**2 / 2 for cn, gn in (term(e, int(v), i) for v in s_users[p]))
        total += nll
    assert got == pytest.approx(total / m, rel=1e-4)


def test_state_head_shapes_and_probabilities():
    stream = random_stream(n_events=500, seed=2)
    model = _fitted(stream[:300], epochs=1)
    block = next(b for b in _blocks(stream[300:], 1024) if len(b) > 2)
    model.observe(block)
    probs = model.predict_state(block)
    assert probs.shape == (len(block),) and ((probs >= 0) & (probs <= 1)).all()


def test_training_lowers_the_loss():
    stream = random_stream(n_events=600, seed=8)
    model = _fitted(stream, epochs=0)
    losses = [model.train_epoch()["likelihood"] for _ in range(6)]
    assert losses[-1] < losses[0]


def test_bad_parameters_are_usage_errors():
    stream = random_stream(n_events=100)
    with pytest.raises(UsageError, match="cell"):
        DeepCoevolve(cell="lstm").fit(stream)
    with pytest.raises(UsageError, match="rank_by"):
        DeepCoevolve(rank_by="popularity").fit(stream)
    with pytest.raises(UsageError, match="max_norm"):
        DeepCoevolve(max_norm=-1.0).fit(stream)
    with pytest.raises(UsageError, match="gap_floor"):
        DeepCoevolve(gap_floor=0.0).fit(stream)


@pytest.mark.parametrize("kind,radius", [("gru", 0.8), ("rnn", None)])
def test_recurrence_gradients_equal_autograd_on_the_plain_loop(kind, radius):
    stream = random_stream(n_events=300, seed=11)
    model = _fitted(stream, epochs=0, windows=2, cell=kind, max_norm=radius)
    plan = model._plans[0]
    assert len(plan.bounds) > 4  # several t-batches that read each other's rows
    gen = torch.Generator().manual_seed(0)
    m, d = plan.size, 8
    n_init = len(plan.init_users) + len(plan.init_items)
    gates = 3 if kind == "gru" else 1
    shapes = [(m, gates * d), (m, gates * d), (n_init, d), (gates * d, d), (gates * d, d),
              (gates * d, d), (gates * d,), (gates * d, d), (gates * d,)]
    leaves = [torch.randn(*s, generator=gen, dtype=torch.float64).requires_grad_() for s in shapes]
    reads = (torch.as_tensor(plan.read_user), torch.as_tensor(plan.read_item))
    upstream = torch.randn(2 * m + n_init, d, generator=gen, dtype=torch.float64)
    got, want = [], []
    for fn, out in ((recurrence_reference, want), (_Recurrence.apply, got)):
        ext = fn(*leaves[:3], *reads, plan.bounds.tolist(), kind, radius, *leaves[3:])
        out.append(ext.detach())
        out.extend(torch.autograd.grad((ext * upstream).sum(), leaves))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-10)
