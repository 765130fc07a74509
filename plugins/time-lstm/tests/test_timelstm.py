from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from harness_timelstm import AUTHORS_CLAMP, TimeLSTM, tlstm3_cell

from harness.errors import UsageError
from harness.interactions import Interactions
from harness.testing._checks import random_stream


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _numpy_tlstm3(x, dt, h, c, W):
    """The TLSTM3 equations as /work/shared/MODELS.md writes them (Zhu et al. 2017), with
    separate matrices per gate, written independently of the plugin's fused layout."""
    i = _sigmoid(x @ W["xi"] + h @ W["hi"] + W["ci"] * c + W["bi"])
    t1 = _sigmoid(x @ W["x1"] + np.tanh(dt * W["t1"]) + W["b1"])
    t2 = _sigmoid(x @ W["x2"] + np.tanh(dt * W["t2"]) + W["b2"])
    g = np.tanh(x @ W["xc"] + h @ W["hc"] + W["bc"])
    c_tilde = (1 - i * t1) * c + i * t1 * g
    c_next = (1 - i) * c + i * t2 * g
    o = _sigmoid(x @ W["xo"] + dt * W["to"] + h @ W["ho"] + W["co"] * c_tilde + W["bo"])
    return o * np.tanh(c_tilde), c_next


def test_tlstm3_cell_matches_the_equations():
    rng = np.random.default_rng(0)
    n, k, d = 6, 5, 4  # batch, input size, hidden size
    W = {name: rng.normal(size=(k, d)) for name in ("xi", "x1", "x2", "xc", "xo")}
    W.update({name: rng.normal(size=(d, d)) for name in ("hi", "hc", "ho")})
    W.update({name: rng.normal(size=d) for name in ("ci", "co", "t1", "t2", "to",
                                                     "bi", "b1", "b2", "bc", "bo")})
    x, h, c = rng.normal(size=(n, k)), rng.normal(size=(n, d)), rng.normal(size=(n, d))
    dt = rng.exponential(2.0, size=(n, 1))
    h_ref, c_ref = _numpy_tlstm3(x, dt, h, c, W)
    T = lambda a: torch.as_tensor(np.array(a), dtype=torch.float64)  # noqa: E731
    w_x = np.concatenate([W[g] for g in ("xi", "x1", "x2", "xc", "xo")], 1)
    b = np.concatenate([W[g] for g in ("bi", "b1", "b2", "bc", "bo")])
    w_h = np.concatenate([W[g] for g in ("hi", "hc", "ho")], 1)
    h_new, c_new = tlstm3_cell(T(x @ w_x + b), T(dt), T(h), T(c), T(w_h), T(W["t1"]), T(W["t2"]),
                               T(W["to"]), T(W["ci"]), T(W["co"]))
    np.testing.assert_allclose(h_new.numpy(), h_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(c_new.numpy(), c_ref, rtol=1e-12, atol=1e-12)


def _fitted(stream: Interactions, epochs: int = 1, seed: int = 0, **params) -> TimeLSTM:
    model = TimeLSTM(**{"embedding_size": 8, "batch_size": 5, "bptt": 6, **params})
    model.fit(stream, seed=seed)
    for _ in range(epochs):
        model.train_epoch()
    return model


def test_wt1_stays_nonpositive_after_training_steps():
    stream = random_stream(n_events=600)
    model = _fitted(stream, epochs=0, learning_rate=0.05)
    assert (model._net.wt1 <= 0).all()
    # Push Wt1 up: without the projection some entries would leave [-1, 0] for positive values.
    free = _fitted(stream, epochs=3, learning_rate=0.05, wt1_constraint="none")
    assert (free._net.wt1 > 0).any(), "the test needs a setting where Wt1 wants to go positive"
    for _ in range(3):
        model.train_epoch()
        assert (model._net.wt1 <= 0).all()
    assert not torch.equal(model._net.wt1, _fitted(stream, epochs=0)._net.wt1)  # it does train


def test_authors_clamp_is_applied_in_the_forward_pass():
    stream = random_stream(n_events=300)
    model = _fitted(stream, epochs=1, wt1_constraint="authors")
    p = dict(model._net.named_parameters())
    assert (model._wt1(p) >= AUTHORS_CLAMP).all()
    assert (p["wt1"] < AUTHORS_CLAMP).any()  # stored below the clamp, never moved by gradients
    untrained = _fitted(stream, epochs=0, wt1_constraint="authors")._net.wt1
    below = untrained < AUTHORS_CLAMP
    assert torch.equal(p["wt1"][below], untrained[below])


def _naive_sequence_ce(model: TimeLSTM, train: Interactions) -> np.ndarray:
    """Per-event cross-entropy, one user's sequence at a time, one event at a time: the cell
    that reads item m sees the gap to event m + 1, the item it predicts."""
    p = dict(model._net.named_parameters())
    out = []
    with torch.no_grad():
        for u in np.unique(train.user):
            idx = np.flatnonzero(train.user == u)
            h = torch.zeros(1, model.embedding_size)
            c = torch.zeros(1, model.embedding_size)
            x, last = model._n_items, None
            for j in idx:
                dt = 0.0 if last is None else float(train.t[j] - last)
                dt_in = torch.tensor([[model._scale_dt(np.array([dt]))[0]]], dtype=torch.float32)
                h, c = model._cell(p["x_table"][x][None] + p["b"], dt_in, h, c, p)
                logits = F.linear(h, p["out_w"], p["out_b"])
                out.append(float(F.cross_entropy(logits, torch.tensor([int(train.item[j])]))))
                x, last = int(train.item[j]), float(train.t[j])
    return np.array(out)


@pytest.mark.parametrize("time_scale", ["log1p-hours", "standardize"])
def test_minibatch_loss_equals_sequential_loss(time_scale):
    train = random_stream(n_events=500)
    model = _fitted(train, epochs=2, time_scale=time_scale)
    batched = model.training_cross_entropy()
    batched = batched[~np.isnan(batched)]
    np.testing.assert_allclose(batched, _naive_sequence_ce(model, train), rtol=1e-4, atol=1e-5)


def _blocks(stream: Interactions):
    users: set[int] = set()
    items: set[int] = set()
    start = 0
    for j, (u, i) in enumerate(zip(stream.user.tolist(), stream.item.tolist())):
        if u in users or i in items:
            yield stream[start:j]
            users.clear()
            items.clear()
            start = j
        users.add(u)
        items.add(i)
    yield stream[start:]


def _naive_logits(model, events: list[tuple[int, float]], t_query: float) -> np.ndarray:
    p = {n: q.detach().double() for n, q in model._net.named_parameters()}
    d = model.embedding_size
    h, c = torch.zeros(1, d, dtype=torch.float64), torch.zeros(1, d, dtype=torch.float64)
    x, last = model._n_items, None

    def step(t: float):
        dt = 0.0 if last is None else t - last
        dt_in = torch.tensor([[model._scale_dt(np.array([dt]))[0]]], dtype=torch.float64)
        return model._cell(p["x_table"][x][None] + p["b"], dt_in, h, c, p)

    with torch.no_grad():
        for item, t in events:
            h, c = step(t)
            x, last = item, t
        h, _ = step(t_query)
        return F.linear(h, p["out_w"], p["out_b"])[0].numpy()


@pytest.mark.parametrize("time_scale", ["log1p-hours", "standardize", "seconds"])
def test_observe_and_score_equal_a_full_sequence_forward_pass(time_scale):
    stream = random_stream(n_events=600)
    cut = 400
    model = _fitted(stream[:cut], epochs=2, time_scale=time_scale)
    history: dict[int, list[tuple[int, float]]] = {}
    for j in range(cut):
        history.setdefault(int(stream.user[j]), []).append((int(stream.item[j]), float(stream.t[j])))
    rng = np.random.default_rng(0)
    probes = 0
    for block in _blocks(stream[cut:]):
        scores = model.score(block)
        for r in rng.choice(len(block), min(2, len(block)), replace=False):
            expect = _naive_logits(model, history.get(int(block.user[r]), []), float(block.t[r]))
            np.testing.assert_allclose(scores[r], expect, rtol=1e-4, atol=1e-5)
            probes += 1
        model.observe(block)
        for u, i, t in zip(block.user.tolist(), block.item.tolist(), block.t.tolist()):
            history.setdefault(u, []).append((i, t))
    assert probes > 50


def test_scores_depend_on_the_query_time():
    stream = random_stream(n_events=400)
    model = _fitted(stream[:300])
    block = stream[300:301]
    later = Interactions.from_arrays(block.user, block.item, block.t + 86400.0 * 30,
                                     n_users=block.n_users, n_items=block.n_items)
    assert not np.allclose(model.score(block), model.score(later))


def test_time_scales():
    stream = random_stream(n_events=300)
    model = _fitted(stream, epochs=0, time_scale="standardize")
    gaps = model._cells["dt"][model._cells["gap"]]
    np.testing.assert_allclose(model._scale_dt(gaps).mean(), 0.0, atol=1e-9)
    np.testing.assert_allclose(model._scale_dt(gaps).std(), 1.0, rtol=1e-9)
    hours = TimeLSTM(time_scale="log1p-hours")
    assert hours._scale_dt(np.array([3600.0]))[0] == pytest.approx(np.log(2.0))


@pytest.mark.parametrize("params", [{"time_scale": "minutes"}, {"wt1_constraint": "paper"},
                                    {"batch_size": 0}])
def test_bad_parameters_are_refused(params):
    with pytest.raises(UsageError):
        TimeLSTM(**params).fit(random_stream(n_events=50))


def test_search_space_suggests_constructor_parameters():
    import optuna

    trial = optuna.trial.FixedTrial({"embedding_size": 32, "learning_rate": 0.005, "batch_size": 16,
                                     "bptt": 10, "time_scale": "standardize"})
    params = TimeLSTM.search_space(trial)
    assert set(params) <= set(TimeLSTM.param_names())
    TimeLSTM(**params).fit(random_stream(n_events=50))
