from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch
from harness_gru4rec import GRU4Rec, session_starts

from harness.errors import UsageError
from harness.evaluate import iter_blocks
from harness.interactions import Interactions


def successor_stream(seed: int = 0, n_sessions: int = 500, n_items: int = 40,
                     n_users: int = 30) -> Interactions:
    """Sessions that walk i, i+1, i+2, ... (mod n_items) from a random start, one hour apart."""
    rng = np.random.default_rng(seed)
    user, item, t, session = [], [], [], []
    clock = 0.0
    for s in range(n_sessions):
        u, start, length = rng.integers(n_users), rng.integers(n_items), rng.integers(2, 8)
        for k in range(length):
            user.append(u)
            item.append((start + k) % n_items)
            t.append(clock)
            session.append(s)
            clock += 10.0
        clock += 3600.0
    return Interactions.from_arrays(user, item, t, n_users=n_users, n_items=n_items,
                                    session=session)


def interleaved_stream(seed: int = 0, n_users: int = 40, n_items: int = 300,
                       sessions_per_user: int = 6) -> Interactions:
    """Successor walks of many users at once, so that consecutive events rarely share a user
    or an item; a session's events are 5 minutes apart and sessions hours apart."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        clock = rng.uniform(0, 3600.0)
        for _ in range(sessions_per_user):
            start, length = rng.integers(n_items), rng.integers(2, 10)
            rows += [(clock + 300.0 * k, u, (start + k) % n_items) for k in range(length)]
            clock += 300.0 * length + rng.uniform(2 * 3600.0, 5 * 3600.0)
    rows.sort()
    t, user, item = (np.array(c) for c in zip(*rows, strict=True))
    return Interactions.from_arrays(user, item, t, n_users=n_users, n_items=n_items)


def without_sessions(stream: Interactions) -> Interactions:
    return Interactions.from_arrays(stream.user, stream.item, stream.t,
                                    n_users=stream.n_users, n_items=stream.n_items)


def distinct_runs(stream: Interactions) -> list[tuple[int, int]]:
    """Maximal runs of consecutive events with no user and no item repeated (the evaluator's)."""
    return list(iter_blocks(stream, max_block=len(stream) + 1))


def replay(model: GRU4Rec, events: Interactions, blocks: list[tuple[int, int]]) -> np.ndarray:
    rows = []
    for a, b in blocks:
        rows.append(model.score(events[a:b]))
        model.observe(events[a:b])
    return np.concatenate(rows)


def trained(stream: Interactions, cut: int, epochs: int = 1, seed: int = 0,
            **params: object) -> GRU4Rec:
    model = GRU4Rec(**{"hidden_size": 16, "n_sample": 8, "batch_size": 8, **params})
    model.fit(stream[:cut], seed=seed)
    for _ in range(epochs):
        model.train_epoch()
    return model


@pytest.mark.parametrize(
    "params",
    [
        {"loss": "cross-entropy"},
        {"loss": "cross-entropy", "logq": 1.0, "dropout_hidden": 0.1, "momentum": 0.5},
        {"loss": "bpr-max", "constrained_embedding": False},
        {"loss": "top1-max", "constrained_embedding": False, "embedding_size": 12},
        {"loss": "cross-entropy", "layers": 2, "n_sample": 0},
    ],
)
def test_learns_successor_pattern(params: dict) -> None:
    stream = successor_stream()
    cut = int(0.8 * len(stream))
    model = trained(stream, cut, epochs=6, hidden_size=32, **params)
    hits = queries = 0
    for j in range(cut, len(stream)):
        block = stream[j : j + 1]
        scores = model.score(block)[0]
        if stream.session[j] == stream.session[j - 1]:
            queries += 1
            hits += int(np.argmax(scores) == stream.item[j])
        model.observe(block)
    assert queries > 200
    assert hits / queries > 0.95


@pytest.mark.parametrize("session_ids", [True, False])
def test_blocks_equal_one_at_a_time(session_ids: bool) -> None:
    stream = interleaved_stream(seed=1)
    if session_ids:
        starts = session_starts(stream.user, stream.t, None, 1800.0)
        order = np.lexsort((np.arange(len(stream)), stream.user))
        session = np.empty(len(stream), np.int64)
        session[order] = np.cumsum(starts[order])
        stream = Interactions.from_arrays(stream.user, stream.item, stream.t,
                                          n_users=stream.n_users, n_items=stream.n_items,
                                          session=session)
    cut = int(0.6 * len(stream))
    model = trained(stream, cut, session_gap=None if session_ids else 1800.0,
                    constrained_embedding=session_ids)
    events = stream[cut:]
    runs = distinct_runs(events)
    assert max(b - a for a, b in runs) > 3
    blocked = replay(copy.deepcopy(model), events, runs)
    single = replay(copy.deepcopy(model), events, [(k, k + 1) for k in range(len(events))])
    np.testing.assert_array_equal(blocked, single)


def test_seed_determinism_and_seed_matters() -> None:
    stream = successor_stream(n_sessions=100)
    cut = int(0.8 * len(stream))
    events = stream[cut:]
    one_by_one = [(k, k + 1) for k in range(len(events))]
    params = {"dropout_hidden": 0.2, "dropout_embedding": 0.1, "epochs": 2}
    a = replay(trained(stream, cut, seed=3, **params), events, one_by_one)
    b = replay(trained(stream, cut, seed=3, **params), events, one_by_one)
    c = replay(trained(stream, cut, seed=4, **params), events, one_by_one)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_pickle_and_deepcopy_round_trip() -> None:
    stream = successor_stream(n_sessions=80)
    cut = int(0.8 * len(stream))
    model = trained(stream, cut)
    events = stream[cut:]
    one_by_one = [(k, k + 1) for k in range(len(events))]
    restored = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(replay(model, events, one_by_one),
                                  replay(restored, events, one_by_one))
    assert GRU4Rec(**model.get_params()).get_params() == model.get_params()


def manual_state(model: GRU4Rec, items: list[int]) -> torch.Tensor:
    """Independent forward pass of a one-layer constrained GRU4Rec over ``items`` (float64)."""
    p = {k: v.double() for k, v in model._params.items()}
    size = model.hidden_size
    h = torch.zeros(size, dtype=torch.float64)
    for i in items:
        gx = p["Wy"][i] @ p["Wx0"] + p["bx0"]
        r = torch.sigmoid(gx[:size] + h @ p["Wh0"][:, :size])
        z = torch.sigmoid(gx[size : 2 * size] + h @ p["Wh0"][:, size : 2 * size])
        cand = torch.tanh(gx[2 * size :] + (r * h) @ p["Wh0"][:, 2 * size :])
        h = (1 - z) * h + z * cand
    return h


def test_streaming_state_carries_user_history_and_resets_after_gap() -> None:
    stream = interleaved_stream(seed=2)
    cut = int(0.7 * len(stream))
    for query in range(cut, len(stream)):  # a user with a history, back after a break
        user = int(stream.user[query])
        mine = stream.user[:query] == user
        history = stream.item[:query][mine].tolist()
        away = stream.t[query] - stream.t[:query][mine][-1]
        if len(history) > 10 and not mine[cut:].any() and away > 1800:
            break
    else:
        raise AssertionError("the stream has no suitable query")
    nxt = stream[query : query + 1]
    for gap, expected_items in ((None, history), (1800.0, None)):
        model = trained(stream, cut, session_gap=gap)
        p = {k: v.double() for k, v in model._params.items()}
        row = model.score(nxt)[0]  # the user's first event since training
        if expected_items is None:  # an hour since the user's last event: a fresh session
            expected = p["By"]
        else:
            expected = p["Wy"] @ manual_state(model, expected_items) + p["By"]
        np.testing.assert_allclose(row, expected.numpy(), rtol=1e-5, atol=1e-6)


def test_score_row_ignores_own_item() -> None:
    stream = successor_stream(n_sessions=60)
    cut = int(0.8 * len(stream))
    model = trained(stream, cut)
    block = stream[cut : cut + 1]
    other = Interactions.from_arrays(block.user, (block.item + 1) % stream.n_items, block.t,
                                     n_users=stream.n_users, n_items=stream.n_items,
                                     session=block.session)
    np.testing.assert_array_equal(model.score(block), model.score(other))


def test_optimizer_moves_only_touched_item_rows() -> None:
    stream = successor_stream(n_sessions=3, n_items=40)
    model = GRU4Rec(hidden_size=8, n_sample=0, batch_size=2, momentum=0.5)
    model.fit(stream, seed=0)
    before = {k: v.clone() for k, v in model._params.items()}
    model.train_epoch()
    touched = np.unique(stream.item)
    untouched = np.setdiff1d(np.arange(40), touched)
    assert torch.equal(model._params["Wy"][untouched], before["Wy"][untouched])
    assert not torch.equal(model._params["Wy"][touched], before["Wy"][touched])
    assert not torch.equal(model._params["Wh0"], before["Wh0"])


def test_adagrad_step_by_hand() -> None:
    model = GRU4Rec(learning_rate=0.1, momentum=0.5)
    model._params = {"w": torch.tensor([1.0, 2.0])}
    model._acc = {"w": torch.zeros(2)}
    model._vel = {"w": torch.zeros(2)}
    grad = torch.tensor([0.5, -1.0])
    model._adagrad("w", None, grad)
    first = 0.1 * grad / torch.sqrt(grad**2 + 1e-6)
    torch.testing.assert_close(model._params["w"], torch.tensor([1.0, 2.0]) - first)
    model._adagrad("w", None, grad)
    second = 0.5 * first + 0.1 * grad / torch.sqrt(2 * grad**2 + 1e-6)
    torch.testing.assert_close(model._params["w"], torch.tensor([1.0, 2.0]) - first - second)


def test_unseen_users_and_items_get_finite_scores() -> None:
    stream = successor_stream(n_sessions=40, n_items=40)
    train = stream[: len(stream) // 2]
    model = GRU4Rec(hidden_size=8, n_sample=4)
    model.fit(Interactions.from_arrays(train.user, train.item % 20, train.t, n_users=60,
                                       n_items=40), seed=0)
    model.train_epoch()
    block = Interactions.from_arrays([59, 0], [39, 38], [1e9, 1e9 + 1], n_users=60, n_items=40)
    assert np.isfinite(model.score(block)).all()
    model.observe(block)
    assert np.isfinite(model.score(block)).all()


@pytest.mark.parametrize(
    "params, fragment",
    [
        ({"loss": "top1"}, "loss must be one of"),
        ({"hidden_size": 0}, "hidden_size must be an integer >= 1"),
        ({"dropout_hidden": 1.0}, "dropout_hidden must lie in [0, 1)"),
        ({"session_gap": -5}, "session_gap must be > 0"),
    ],
)
def test_bad_parameters_are_reported_at_fit(params: dict, fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment.replace("[", r"\[").replace(")", r"\)")):
        GRU4Rec(**params).fit(successor_stream(n_sessions=5))


def test_search_space_builds_valid_models() -> None:
    optuna = pytest.importorskip("optuna")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    stream = successor_stream(n_sessions=20)
    for _ in range(4):
        params = GRU4Rec.search_space(study.ask())
        model = GRU4Rec(**{**params, "hidden_size": 8})
        model.fit(stream)
        assert np.isfinite(model.train_epoch()["loss"])


@pytest.mark.parametrize("rows", [4, 3])
def test_step_minimises_summed_loss_over_batch_size(rows: int) -> None:
    # The official code steps on loss_function(...) / batch_size (the configured size, also
    # when fewer sessions are left). Adagrad's first accumulator of a row is its squared
    # gradient, which tells the scale of the objective.
    stream = successor_stream(n_sessions=30)
    model = GRU4Rec(hidden_size=8, batch_size=4, n_sample=0)
    model.fit(stream, seed=0)
    inputs, targets = np.array([0, 5, 9, 20])[:rows], np.array([1, 6, 10, 21])[:rows]
    state = torch.zeros(1, rows, 8)
    h = model._forward(inputs, state.double())[-1].numpy()  # before the step moves anything
    wy, by = (model._params[k].double().numpy() for k in ("Wy", "By"))
    scores = h @ wy[targets].T + by[targets]
    p = np.exp(scores) / np.exp(scores).sum(1, keepdims=True)
    summed = -np.log(np.diag(p)).sum()
    grad_by = (p - np.eye(rows)).sum(0) / 4  # d(summed / batch_size) / d b_y[target]
    loss, _ = model._train_step(inputs, targets, state)
    assert loss == pytest.approx(summed, rel=1e-5)
    np.testing.assert_allclose(model._acc["By"][targets].numpy(), grad_by**2, rtol=1e-4)


def dropout_step(rng_seed: int, **params: object) -> tuple[torch.Tensor, np.ndarray]:
    """One training step of a one-hot model from a random state: the carried state and the
    layers' outputs without dropout."""
    stream = successor_stream(n_sessions=30)
    model = GRU4Rec(**{"hidden_size": 64, "batch_size": 8, "n_sample": 0,
                       "constrained_embedding": False, "embedding_size": 0, **params})
    model.fit(stream, seed=rng_seed)
    inputs, targets = np.arange(8), np.arange(1, 9)
    state = torch.from_numpy(
        np.random.default_rng(1).uniform(-0.5, 0.5, (model.layers, 8, 64)).astype(np.float32))
    clean = model._forward(inputs, state.double()).numpy()
    _, new_state = model._train_step(inputs, targets, state)
    return new_state, clean


def test_onehot_embedding_dropout_masks_first_layer_output() -> None:
    # Official PyTorch one-hot mode: E = GRUEmbedding(X, H[0]); E = dropout_p_embed(E);
    # H[0] = E. So the first layer's output (and carried state) is masked element by element
    # with dropout_embedding, and dropout_hidden does not touch it.
    new_state, clean = dropout_step(0, dropout_embedding=0.5, dropout_hidden=0.0)
    out = new_state[0].double().numpy()
    dropped = out == 0.0
    assert 0.35 < dropped.mean() < 0.65
    assert (dropped.any(1) & ~dropped.all(1)).all()  # elements, not whole rows or inputs
    np.testing.assert_allclose(out[~dropped], 2.0 * clean[0][~dropped], rtol=1e-5, atol=1e-6)

    new_state, clean = dropout_step(0, dropout_embedding=0.0, dropout_hidden=0.5)
    np.testing.assert_allclose(new_state[0].double().numpy(), clean[0], rtol=1e-5, atol=1e-6)


def test_onehot_hidden_dropout_masks_upper_layers_only() -> None:
    new_state, clean = dropout_step(0, layers=2, dropout_embedding=0.0, dropout_hidden=0.5)
    np.testing.assert_allclose(new_state[0].double().numpy(), clean[0], rtol=1e-5, atol=1e-6)
    top = new_state[1].double().numpy()
    dropped = top == 0.0
    assert 0.35 < dropped.mean() < 0.65
    np.testing.assert_allclose(top[~dropped], 2.0 * clean[1][~dropped], rtol=1e-5, atol=1e-6)


def test_embedding_dropout_masks_the_input_embedding_outside_onehot_mode() -> None:
    # Constrained mode: the first layer's output is not masked by dropout_embedding (its input
    # is), so no element of the carried state is exactly zero.
    stream = successor_stream(n_sessions=30)
    model = GRU4Rec(hidden_size=64, batch_size=8, n_sample=0, dropout_embedding=0.5)
    model.fit(stream, seed=0)
    state = torch.from_numpy(
        np.random.default_rng(1).uniform(-0.5, 0.5, (1, 8, 64)).astype(np.float32))
    clean = model._forward(np.arange(8), state.double()).numpy()
    _, new_state = model._train_step(np.arange(8), np.arange(1, 9), state)
    out = new_state[0].double().numpy()
    assert not (out == 0.0).any()
    assert not np.allclose(out, clean[0], rtol=1e-3, atol=1e-4)
