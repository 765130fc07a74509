from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from harness_lstm import LSTM, flat_cells, plan_lanes
from harness_lstm._model import lstm_cell

from harness.errors import UsageError
from harness.interactions import Interactions
from harness.testing._checks import random_stream


def _fitted(stream: Interactions, epochs: int = 1, seed: int = 0, **params) -> LSTM:
    model = LSTM(**{"embedding_size": 8, "batch_size": 5, "bptt": 6, **params})
    model.fit(stream, seed=seed)
    for _ in range(epochs):
        model.train_epoch()
    return model


def _blocks(stream: Interactions):
    """Runs of consecutive events with distinct users and items, as the evaluator forms them."""
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


def test_flat_cells_layout():
    user = np.array([1, 0, 1, 1])
    item = np.array([5, 6, 7, 5])
    t = np.array([0.0, 1.0, 3.0, 10.0])
    label = np.array([0, 1, 0, 1])
    cells = flat_cells(user, item, t, label, n_users=3, start=9)
    # user 0: cells [start, 6]; user 1: [start, 5, 7, 5]; user 2: none
    assert cells["offset"].tolist()[:2] == [0, 2] and cells["length"].tolist() == [2, 4, 0]
    assert cells["inp"].tolist() == [9, 6, 9, 5, 7, 5]
    assert cells["tgt"].tolist() == [6, -1, 5, 7, 5, -1]
    assert cells["dt"].tolist() == [0, 0, 0, 3, 7, 0]
    assert cells["gap"].tolist() == [False, False, False, True, True, False]
    assert cells["label"].tolist() == [-1, 1, -1, 0, 0, 1]


def test_plan_lanes_walks_every_user_in_order():
    rng = np.random.default_rng(0)
    length = np.array([0, 5, 1, 9, 3, 3, 0, 7])
    offset = np.cumsum(length) - length
    grid = plan_lanes(offset, length, 3, rng)
    cells = grid[grid >= 0]
    assert sorted(cells.tolist()) == list(range(length.sum()))
    assert grid.shape[0] == 10  # longest first to the least loaded lane: 9 | 7+3 | 5+3+1
    for lane in grid.T:
        col = lane[lane >= 0]
        assert (lane[len(col):] == -1).all()  # idle only at the end
        for u in np.flatnonzero(length):
            where = np.flatnonzero((col >= offset[u]) & (col < offset[u] + length[u]))
            if where.size:  # a user's cells are contiguous and in order within one lane
                assert col[where].tolist() == list(range(offset[u], offset[u] + length[u]))
                assert where.tolist() == list(range(where[0], where[0] + length[u]))


def test_lstm_cell_is_torchs_lstm_cell():
    torch.manual_seed(0)
    ref = torch.nn.LSTMCell(3, 4)
    x, h, c = torch.randn(5, 3), torch.randn(5, 4), torch.randn(5, 4)
    h_ref, c_ref = ref(x, (h, c))
    xg = x @ ref.weight_ih.t() + ref.bias_ih + ref.bias_hh
    h_new, c_new = lstm_cell(xg, h, c, ref.weight_hh.t())
    torch.testing.assert_close(h_new, h_ref)
    torch.testing.assert_close(c_new, c_ref)


def _naive_sequence_ce(model: LSTM, train: Interactions) -> np.ndarray:
    """Per-event cross-entropy, one user's sequence at a time, one event at a time."""
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
                xg = p["x_table"][x][None] + p["b"]
                h, c = model._cell(xg, dt_in, h, c, p)
                logits = F.linear(h, p["out_w"], p["out_b"])
                out.append(float(F.cross_entropy(logits, torch.tensor([int(train.item[j])]))))
                x, last = int(train.item[j]), float(train.t[j])
    return np.array(out)


def test_minibatch_loss_equals_sequential_loss():
    train = random_stream(n_events=500)
    model = _fitted(train, epochs=2)
    batched = model.training_cross_entropy()
    batched = batched[~np.isnan(batched)]  # flat order: user after user, time order within
    np.testing.assert_allclose(batched, _naive_sequence_ce(model, train), rtol=1e-4, atol=1e-5)


def _naive_logits(model, events: list[tuple[int, float]], t_query: float) -> np.ndarray:
    """A full-sequence forward pass (float64) over a user's observed events, then the pending
    cell at ``t_query``."""
    p = {n: q.detach().double() for n, q in model._net.named_parameters()}
    d = model.embedding_size
    h, c = torch.zeros(1, d, dtype=torch.float64), torch.zeros(1, d, dtype=torch.float64)
    x, last = model._n_items, None

    def step(t: float) -> tuple[torch.Tensor, torch.Tensor]:
        dt = 0.0 if last is None else t - last
        dt_in = torch.tensor([[model._scale_dt(np.array([dt]))[0]]], dtype=torch.float64)
        return model._cell(p["x_table"][x][None] + p["b"], dt_in, h, c, p)

    with torch.no_grad():
        for item, t in events:
            h, c = step(t)
            x, last = item, t
        h, _ = step(t_query)
        return F.linear(h, p["out_w"], p["out_b"])[0].numpy()


def check_streaming_equals_full_forward(model, stream: Interactions, cut: int) -> None:
    rng = np.random.default_rng(0)
    history: dict[int, list[tuple[int, float]]] = {}
    for j in range(cut):
        history.setdefault(int(stream.user[j]), []).append((int(stream.item[j]), float(stream.t[j])))
    probes = 0
    events = stream[cut:]
    for block in _blocks(events):
        scores = model.score(block)
        for r in rng.choice(len(block), min(2, len(block)), replace=False):
            u = int(block.user[r])
            expect = _naive_logits(model, history.get(u, []), float(block.t[r]))
            np.testing.assert_allclose(scores[r], expect, rtol=1e-4, atol=1e-5)
            probes += 1
        model.observe(block)
        for u, i, t in zip(block.user.tolist(), block.item.tolist(), block.t.tolist()):
            history.setdefault(u, []).append((i, t))
    assert probes > 50


def test_observe_and_score_equal_a_full_sequence_forward_pass():
    stream = random_stream(n_events=600)
    model = _fitted(stream[:400], epochs=2)  # the state carries from training into evaluation
    check_streaming_equals_full_forward(model, stream, 400)


def test_state_probability_reads_the_embedding_after_the_event():
    stream = random_stream(n_events=400)
    model = _fitted(stream[:300])
    block = stream[300:301]
    model.observe(block)
    u = int(block.user[0])
    p = {n: q.detach().double() for n, q in model._net.named_parameters()}
    h = model._h[u].double()[None]
    c = model._c[u].double()[None]
    xg = p["x_table"][int(block.item[0])][None] + p["b"]
    emb, _ = lstm_cell(xg, h, c, p["w_h"])
    expect = torch.softmax(model._head(emb, p), 1)[0, 1].item()
    assert model.predict_state(block)[0] == pytest.approx(expect, rel=1e-5)


def test_score_changes_nothing_and_blocks_equal_single_events():
    stream = random_stream(n_events=600)
    model = _fitted(stream[:400])
    events = stream[400:]
    single = copy.deepcopy(model)
    for block in _blocks(events):
        first = model.score(block)
        np.testing.assert_array_equal(first, model.score(block))
        rows = np.concatenate([single.score(block[j:j + 1]) for j in range(len(block))])
        np.testing.assert_array_equal(first, rows)
        model.observe(block)
        for j in range(len(block)):
            single.observe(block[j:j + 1])


def test_training_learns_and_is_seeded():
    stream = random_stream(n_events=800)
    a = _fitted(stream, epochs=0, seed=1)
    losses = [a.train_epoch()["cross_entropy_per_event"] for _ in range(4)]
    assert losses[-1] < losses[0]
    b = _fitted(stream, epochs=4, seed=1)
    for (n, p), (_, q) in zip(a._net.named_parameters(), b._net.named_parameters()):
        assert torch.equal(p, q), n
    c = _fitted(stream, epochs=1, seed=2)
    assert not torch.equal(c._net.out_w, b._net.out_w)


def test_pickle_round_trip_keeps_training():
    stream = random_stream(n_events=500)
    model = _fitted(stream[:400])
    restored = pickle.loads(pickle.dumps(model))
    assert model.train_epoch() == restored.train_epoch()
    np.testing.assert_array_equal(model.score(stream[400:401]), restored.score(stream[400:401]))


@pytest.mark.parametrize("params", [{"embedding_size": 0}, {"bptt": 1.5}, {"optimizer": "sgd"},
                                    {"learning_rate": 0.0}, {"state_loss_weight": -1.0}])
def test_bad_parameters_are_refused(params):
    with pytest.raises(UsageError):
        LSTM(**params).fit(random_stream(n_events=50))


def test_predicting_before_fit_is_refused():
    with pytest.raises(UsageError, match="before fit"):
        LSTM().score(random_stream(n_events=10)[:1])


def test_search_space_suggests_constructor_parameters():
    import optuna

    trial = optuna.trial.FixedTrial({"embedding_size": 32, "learning_rate": 0.005, "batch_size": 16,
                                     "bptt": 10})
    params = LSTM.search_space(trial)
    assert set(params) <= set(LSTM.param_names())
    LSTM(**params, num_threads=1).fit(random_stream(n_events=50))
