from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from harness_jodie import JODIE, plan_windows, time_deltas
from harness_jodie._tbatch import window_bounds

from harness.errors import UsageError
from harness.interactions import Interactions
from harness.testing import ModelConformance
from harness.testing._checks import random_stream


class TestJODIEConformance(ModelConformance):
    @pytest.fixture
    def model(self):
        return JODIE(embedding_size=8, windows=20)


class TestJODIECodesConformance(ModelConformance):
    @pytest.fixture
    def model(self):
        return JODIE(embedding_size=8, windows=20, static_size=6)


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


def _replay(model: JODIE, stream: Interactions, max_block: int):
    scores, states = [], []
    for block in _blocks(stream, max_block):
        scores.append(model.score(block))
        model.observe(block)
        states.append(model.predict_state(block))
    return np.concatenate(scores), np.concatenate(states)


def _fitted(stream: Interactions, epochs: int = 2, seed: int = 0, **params) -> JODIE:
    model = JODIE(**{"embedding_size": 8, "windows": 15, **params})
    model.fit(stream, seed=seed)
    for _ in range(epochs):
        model.train_epoch()
    return model


@pytest.mark.parametrize("params", [{}, {"static_size": 5}, {"online_updates": True}])
def test_block_scores_are_bitwise_one_at_a_time(params):
    stream = random_stream(n_events=900, seed=3)
    train, rest = stream[:500], stream[500:]
    model = _fitted(train, **params)
    blocked = _replay(copy.deepcopy(model), rest, 1024)
    single = _replay(copy.deepcopy(model), rest, 1)
    assert max(len(b) for b in _blocks(rest, 1024)) > 3
    np.testing.assert_array_equal(blocked[0], single[0])
    np.testing.assert_array_equal(blocked[1], single[1])


def _reference_epochs(model: JODIE, train: Interactions, epochs: int) -> list[float]:
    """The authors' training loop written plainly: dense one-hot matrices and a full prediction
    layer, embedding tables updated t-batch by t-batch inside each window, one Adam step per
    window. Parameters start as copies of ``model``'s."""
    net = model._net
    nu, ni = train.n_users, train.n_items
    p = {k: v.detach().clone() for k, v in net.named_parameters()}
    params = {
        "init_user": p["init_user"], "init_item": p["init_item"], "proj_w": p["proj_w"],
        "proj_b": p["proj_b"], "pred_b": p["pred_b"],
        "w_full": torch.cat([p["pred_user"], p["pred_item"], p["static_item"].t(),
                             p["static_user"].t()], 1),
        **{k: p[k] for k in p if k.startswith(("user_", "item_", "head"))},
    }
    params = {k: torch.nn.Parameter(v) for k, v in params.items()}
    opt = torch.optim.Adam(params.values(), lr=model.learning_rate, weight_decay=model.weight_decay)
    user, item, t = train.user.astype(np.int64), train.item.astype(np.int64), train.t
    dt_u, dt_i, prev = time_deltas(user, item, t, ni, first=model._t0)
    dts = np.stack([model._standardize(dt_u, 0), model._standardize(dt_i, 1)], 1)
    dts = torch.tensor(dts, dtype=torch.float32)
    feats = torch.tensor(train.features)
    labels = torch.tensor(train.label.astype(np.int64))
    class_weight = [1.0, len(train) / (1.0 + train.label.sum())]
    ce = torch.nn.CrossEntropyLoss(weight=torch.tensor(class_weight, dtype=torch.float32))
    eye_u, eye_i = torch.eye(nu), torch.eye(ni + 1)

    def cell(prefix, x, h):
        q = params
        return F.normalize(torch.tanh(x @ q[prefix + "w_ih"].t() + q[prefix + "b_ih"]
                                      + h @ q[prefix + "w_hh"].t() + q[prefix + "b_hh"]), dim=1)

    totals = []
    for _ in range(epochs):
        U = params["init_user"].repeat(nu, 1)
        I_ = params["init_item"].repeat(ni + 1, 1)
        total = 0.0
        for a, b in window_bounds(t, model.windows):
            batches: list[list[int]] = []
            last_u: dict[int, int] = {}
            last_i: dict[int, int] = {}
            for j in range(a, b):
                k = max(last_u.get(user[j], -1), last_i.get(item[j], -1)) + 1
                last_u[user[j]] = last_i[item[j]] = k
                if k == len(batches):
                    batches.append([])
                batches[k].append(j)
            loss = torch.zeros(())
            for batch in batches:
                ix = torch.tensor(batch)
                us, its = torch.tensor(user[batch]), torch.tensor(item[batch])
                pv = torch.tensor(prev[batch])
                u_in, i_in, p_in = U[us], I_[its], I_[pv]
                proj = u_in * (1 + dts[ix, :1] @ params["proj_w"][None] + params["proj_b"])
                x = torch.cat([proj, p_in, eye_i[pv], eye_u[us]], 1)
                pred = x @ params["w_full"].t() + params["pred_b"]
                loss = loss + F.mse_loss(pred, torch.cat([i_in, eye_i[its]], 1).detach())
                u_out = cell("user_", torch.cat([i_in, dts[ix, :1], feats[ix]], 1), u_in)
                i_out = cell("item_", torch.cat([u_in, dts[ix, 1:], feats[ix]], 1), i_in)
                U = U.index_put((us,), u_out)
                I_ = I_.index_put((its,), i_out)
                loss = loss + F.mse_loss(i_out, i_in.detach()) + F.mse_loss(u_out, u_in.detach())
                h = F.relu(u_out @ params["head1_w"].t() + params["head1_b"])
                loss = loss + ce(h @ params["head2_w"].t() + params["head2_b"], labels[ix])
            total += float(loss.detach())
            loss.backward()
            opt.step()
            opt.zero_grad()
            U, I_ = U.detach(), I_.detach()
        totals.append(total)
    return totals


def test_training_matches_plain_reference_loop():
    stream = random_stream(n_users=12, n_items=9, n_events=300, n_features=2, seed=5)
    model = JODIE(embedding_size=6, windows=12, lazy_static=False)
    model.fit(stream, seed=1)
    expected = _reference_epochs(copy.deepcopy(model), stream, epochs=3)
    got = [model.train_epoch()["loss"] for _ in range(3)]
    np.testing.assert_allclose(got, expected, rtol=2e-4)
    assert got[2] < got[0]


def test_tbatches_are_independent_and_ordered():
    stream = random_stream(n_events=600, seed=2)
    user, item = stream.user.astype(np.int64), stream.item.astype(np.int64)
    _, _, prev = time_deltas(user, item, stream.t, stream.n_items)
    plans = plan_windows(user, item, stream.t, prev, 7)
    covered = np.concatenate([p.order for p in plans])
    np.testing.assert_array_equal(np.sort(covered), np.arange(len(stream)))  # final window kept
    for p in plans:
        for k in range(len(p.bounds) - 1):
            ev = p.order[p.bounds[k]:p.bounds[k + 1]]
            assert len(set(user[ev])) == len(ev) and len(set(item[ev])) == len(ev)
        rank = np.empty(len(stream), np.int64)
        rank[p.order] = p.tbatch
        for key in (user, item):  # a node's events run in increasing t-batches
            ev = np.sort(p.order)
            for node in np.unique(key[ev]):
                assert np.all(np.diff(rank[ev[key[ev] == node]]) > 0)


def test_time_deltas_and_previous_item():
    user = np.array([0, 1, 0, 0])
    item = np.array([2, 2, 1, 2])
    t = np.array([1.0, 3.0, 4.0, 10.0])
    du, di, prev = time_deltas(user, item, t, 3)
    np.testing.assert_array_equal(du, [0, 0, 3, 6])
    np.testing.assert_array_equal(di, [0, 2, 0, 7])
    np.testing.assert_array_equal(prev, [3, 3, 2, 1])


def test_seed_determinism_and_pickle():
    stream = random_stream(n_events=500, seed=4)
    a, b = _fitted(stream, seed=7), _fitted(stream, seed=7)
    c = _fitted(stream, seed=8)
    block = stream[-1:]
    np.testing.assert_array_equal(a.score(block), b.score(block))
    assert not np.array_equal(a.score(block), c.score(block))
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(a)).score(block), a.score(block))


@pytest.mark.parametrize("n_features", [0, 3])
def test_with_and_without_features(n_features):
    stream = random_stream(n_events=400, n_features=n_features, seed=6)
    model = _fitted(stream[:300])
    scores, states = _replay(model, stream[300:], 1024)
    assert scores.shape == (100, stream.n_items) and np.isfinite(scores).all()
    assert ((states >= 0) & (states <= 1)).all()
    with pytest.raises(UsageError, match="features"):
        model.score(random_stream(n_events=50, n_features=n_features + 1)[:1])


def _mrr(scores: np.ndarray, items: np.ndarray) -> float:
    true = scores[np.arange(len(items)), items]
    rank = (scores > true[:, None]).sum(1) + 0.5 * ((scores == true[:, None]).sum(1) - 1) + 1
    return float(np.mean(1 / rank))


def test_beats_popularity_on_a_learnable_stream():
    rng = np.random.default_rng(0)
    n, n_users, n_items = 3000, 30, 20
    user = rng.integers(0, n_users, n)
    favourite = rng.integers(0, n_items, n_users)
    item = np.where(rng.random(n) < 0.8, favourite[user], rng.integers(0, n_items, n))
    t = np.cumsum(rng.exponential(10.0, n))
    stream = Interactions.from_arrays(user, item, t, n_users=n_users, n_items=n_items)
    train, test = stream[:2400], stream[2400:]
    model = JODIE(embedding_size=16, windows=60, learning_rate=1e-2)
    model.fit(train, seed=0)
    losses = [model.train_epoch()["prediction"] for _ in range(4)]
    assert losses[-1] < losses[0]
    scores, _ = _replay(model, test, 1024)
    counts = np.bincount(train.item, minlength=n_items).astype(float)
    popularity = np.empty((len(test), n_items))
    for j in range(len(test)):  # popularity by count, updated as events happen
        popularity[j] = counts
        counts[test.item[j]] += 1
    assert _mrr(scores, test.item) > _mrr(popularity, test.item) + 0.2


def test_online_updates_change_parameters_frozen_do_not():
    stream = random_stream(n_events=600, seed=8)
    for online in (False, True):
        model = _fitted(stream[:400], online_updates=online)
        before = [p.detach().clone() for p in model._net.parameters()]
        _replay(model, stream[400:], 1024)
        changed = any(not torch.equal(a, b) for a, b in zip(before, model._net.parameters()))
        assert changed == online


def test_one_hot_too_large_asks_for_codes():
    stream = Interactions.from_arrays([0, 1], [0, 1], [0.0, 1.0], n_users=52_501, n_items=32_237)
    with pytest.raises(UsageError, match="static_size=128"):
        JODIE().fit(stream)
    model = JODIE(embedding_size=8, static_size=16)
    model.fit(stream)
    model.train_epoch()
    assert model.score(stream[:1]).shape == (1, 32_237)


def test_bad_parameters_are_reported():
    with pytest.raises(UsageError, match="windows"):
        JODIE(windows=0).fit(random_stream(n_events=50))


class _StaticStub:
    """Stands in for StaticAdam in the dense reference: the static tables are plain parameters of
    the reference's torch Adam."""

    steps = 0

    def read(self, name, rows):
        pass

    def sync(self):
        pass

    def describe(self):
        return {}


class _DenseAdamJODIE(JODIE):
    """The authors' optimizer written plainly: one ``torch.optim.Adam`` (single-tensor, L2 weight
    decay) over every parameter, the full static tables included (dense gradients, zero on rows
    without events), then ``zero_grad()``, as their training loop runs on current torch."""

    def _apply_step(self, static_grads):
        net = self._net
        if not hasattr(self, "_ref_opt"):
            self._ref_opt = torch.optim.Adam(net.parameters(), lr=self.learning_rate,
                                             weight_decay=self.weight_decay, foreach=False)
        for name in ("static_user", "static_item"):
            getattr(net, name).grad = torch.zeros_like(getattr(net, name))
        for name, idx, g in static_grads:
            if g is not None:
                getattr(net, name).grad.index_add_(0, idx, g)
        self._ref_opt.step()
        self._ref_opt.zero_grad()
        self._cache = None


def _gaps(model: JODIE) -> tuple[int, int]:
    """Longest run of steps a static row went without a gradient, and rows never read."""
    longest, never = 0, 0
    for key, n in (("init_users", model._n_users), ("prev_items", model._n_items + 1)):
        last = np.zeros(n, np.int64)
        seen = np.zeros(n, bool)
        for step, plan in enumerate(model._plans, 1):
            rows = plan[key].numpy()
            longest = max(longest, int((step - last[rows]).max()))
            last[rows], seen[rows] = step, True
        longest = max(longest, int((len(model._plans) - last).max()))
        never += int((~seen).sum())
    return longest, never


@pytest.mark.parametrize("kernel", [True, False])
def test_static_optimizer_is_dense_adam(kernel):
    """Proof of the default optimizer: two epochs of 200 windows each, the lazily caught-up static
    rows against torch's dense Adam over everything, every parameter equal to 1e-6 relative."""
    from harness_jodie import _optim

    if kernel and not _optim.kernel_available():
        pytest.skip("the C kernel was not built")
    rng = np.random.default_rng(11)
    n = 1200
    user = np.minimum(rng.zipf(1.6, n) - 1, 59)  # a few busy users, many rare ones
    item = np.minimum(rng.zipf(1.4, n) - 1, 29)
    user[:100] = rng.integers(40, 60, 100)  # then seen rarely or never again
    # Users 60-69 and items 30-34 never occur in training: their rows only decay.
    stream = Interactions.from_arrays(
        user, item, np.arange(n, dtype=float) + rng.random(n), label=rng.random(n) < 0.05,
        features=rng.normal(size=(n, 2)), n_users=70, n_items=35)
    model = JODIE(embedding_size=8, windows=200)
    model.fit(stream, seed=2)
    if not kernel:  # the fallback: torch's own (fused) Adam over the full tables
        model._static = _optim.StaticAdam(
            {"static_user": model._net.static_user, "static_item": model._net.static_item},
            model.learning_rate, model.weight_decay, use_kernel=False)
    assert model._static.kernel == kernel
    reference = copy.deepcopy(model)
    reference.__class__ = _DenseAdamJODIE
    reference._static = _StaticStub()
    sparse = JODIE(embedding_size=8, windows=200, lazy_static=True)
    sparse.fit(stream, seed=2)
    never_read = model._net.static_user.detach()[60:].clone()
    longest, never = _gaps(model)
    assert longest >= 150 and never >= 15  # rows skipped for most of an epoch, some never read
    for _ in range(2):
        got, want = model.train_epoch(), reference.train_epoch()
        sparse.train_epoch()
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
    params = dict(model._net.named_parameters())
    for name, expected in reference._net.named_parameters():
        scale = float(expected.detach().abs().max())
        err = float((params[name].detach() - expected.detach()).abs().max())
        assert err <= 1e-6 * scale, (name, err, scale)
    static = reference._net.static_user.detach()
    gap = float((sparse._net.static_user.detach() - static).abs().max())
    assert gap > 1e-3 * float(static.abs().max())  # the test can tell the old optimizer apart
    decayed = reference._net.static_user.detach()[60:]  # never read: Adam's weight decay alone
    assert float(decayed.abs().max()) < 1e-3 * float(never_read.abs().max())


def test_online_state_comes_before_the_step_that_uses_its_label():
    """Issue 10: with online updates, the state probability of the event that closes a window
    must not see that event's label through the window's optimizer step."""
    stream = random_stream(n_events=700, seed=8)
    train, rest = stream[:400], stream[400:]
    model = _fitted(train, epochs=1, online_updates=True)
    probe = copy.deepcopy(model)
    closing = []
    for j in range(len(rest)):  # one event at a time: find the events after which a step is taken
        before = probe._static.steps
        probe.score(rest[j:j + 1])
        probe.observe(rest[j:j + 1])
        probe.predict_state(rest[j:j + 1])
        if probe._static.steps > before:
            closing.append(j)
    assert len(closing) >= 3
    j = closing[1]
    label = rest.label.copy()
    label[j] = 1 - label[j]
    flipped = Interactions.from_arrays(rest.user, rest.item, rest.t, label=label,
                                       features=rest.features, n_users=rest.n_users,
                                       n_items=rest.n_items)
    for max_block in (1, 1024):
        _, states = _replay(copy.deepcopy(model), rest, max_block)
        _, states_flipped = _replay(copy.deepcopy(model), flipped, max_block)
        np.testing.assert_array_equal(states[:j + 1], states_flipped[:j + 1])
        assert not np.array_equal(states[j + 1:], states_flipped[j + 1:])  # the label is used


def test_first_delta_since_start_or_zero():
    user = np.array([0, 1, 0, 0])
    item = np.array([2, 2, 1, 2])
    t = np.array([1.0, 3.0, 4.0, 10.0])
    du, di, _ = time_deltas(user, item, t, 3, first=1.0)
    np.testing.assert_array_equal(du, [0, 2, 3, 6])
    np.testing.assert_array_equal(di, [0, 2, 3, 7])
    stream = random_stream(n_events=300, seed=1)
    default, zero = JODIE(embedding_size=8, windows=10), JODIE(embedding_size=8, windows=10,
                                                                  first_delta="zero")
    assert default.first_delta == "since_start"
    default.fit(stream, seed=0)
    zero.fit(stream, seed=0)
    assert default._dt_stats != zero._dt_stats
    # A node first seen during evaluation gets t - t0 as well (standardized with training stats).
    later = np.array([stream.t[-1] + 50.0])
    got = float(default._dt64(later, np.array([np.nan]), 0)[0, 0])
    assert got == pytest.approx(float(default._standardize(later - stream.t[0], 0)[0]))
    assert float(zero._dt64(later, np.array([np.nan]), 0)[0, 0]) == pytest.approx(
        float(zero._standardize(np.zeros(1), 0)[0]))
    with pytest.raises(UsageError, match="first_delta"):
        JODIE(first_delta="never").fit(stream)


@pytest.mark.parametrize("first_delta", ["since_start", "zero"])
def test_whole_stream_time_statistics_as_the_authors_compute_them(first_delta):
    """With the evaluator's summary of the whole stream, the standardisation is that of the
    authors' code: mean and std of ``dt + 1`` over every event of the stream, test included."""
    from harness.evaluate import stream_summary

    whole = random_stream(n_events=400, seed=3)
    train = whole[:320]
    model = JODIE(embedding_size=8, windows=10, first_delta=first_delta, dt_statistics="stream")
    model.use_stream_summary(stream_summary(whole))
    model.fit(train, seed=0)
    first = float(whole.t[0]) if first_delta == "since_start" else None
    du, di, _ = time_deltas(whole.user.astype(np.int64), whole.item.astype(np.int64), whole.t,
                            whole.n_items, first=first)
    expected = [v for x in (du + 1, di + 1) for v in (x.mean(), x.std())]
    np.testing.assert_allclose(model._dt_stats, expected, rtol=1e-9)
    assert model.fit_report["dt_statistics"] == "stream"
    honest = JODIE(embedding_size=8, windows=10, first_delta=first_delta)
    honest.fit(train, seed=0)
    du, di, _ = time_deltas(train.user.astype(np.int64), train.item.astype(np.int64), train.t,
                            train.n_items, first=first)
    np.testing.assert_allclose(honest._dt_stats, [v for x in (du + 1, di + 1)
                                                  for v in (x.mean(), x.std())], rtol=1e-9)
    assert honest.fit_report["dt_statistics"] == "train"


def test_windows_divide_the_whole_streams_span_on_request():
    from harness.evaluate import stream_summary

    whole = random_stream(n_events=400, seed=4)
    train = whole[:200]
    model = JODIE(embedding_size=8, windows=20, window_span="stream")
    model.use_stream_summary(stream_summary(whole))
    model.fit(train, seed=0)
    span = (whole.t[-1] - whole.t[0]) / 20
    assert model.fit_report["window_span_seconds"] == pytest.approx(span)
    assert model.fit_report["windows"] == len(window_bounds(train.t, 20, span))
    honest = JODIE(embedding_size=8, windows=20)
    honest.fit(train, seed=0)
    assert honest.fit_report["window_span_seconds"] == pytest.approx((train.t[-1] - train.t[0]) / 20)
    # Half the events over about half the span: about half as many windows as the honest cut.
    assert model.fit_report["windows"] < honest.fit_report["windows"]


def test_window_bounds_with_a_given_span():
    t = np.array([0.0, 1.0, 2.0, 3.0, 9.0, 10.0])
    # span 2: a window closes with the first event later than start + 2 (t=3), that event included
    assert window_bounds(t, 5) == [(0, 4), (4, 5), (5, 6)]
    assert window_bounds(t, 5, span=4.0) == [(0, 5), (5, 6)]


@pytest.mark.parametrize("param", ["dt_statistics", "window_span"])
def test_whole_stream_switches_need_the_summary(param):
    with pytest.raises(UsageError, match=f"{param}='stream' needs.*--preset jodie"):
        JODIE(embedding_size=8, **{param: "stream"}).fit(random_stream(n_events=50))
    with pytest.raises(UsageError, match=f"{param} must be 'train' or 'stream'"):
        JODIE(embedding_size=8, **{param: "all"}).fit(random_stream(n_events=50))


def test_online_scoring_twice_returns_the_same_rows_and_trains_once():
    """The evaluator's audit scores some blocks twice; with online updates the second score of a
    block returns the first one's rows and the model ends where one score would leave it."""
    stream = random_stream(n_events=300, seed=5)
    model = _fitted(stream[:240], epochs=1, online_updates=True)
    twice, once = copy.deepcopy(model), copy.deepcopy(model)
    blocks = list(_blocks(stream[240:], 8))
    for block in blocks[:-1]:
        first = twice.score(block)
        np.testing.assert_array_equal(twice.score(block), first)
        twice.observe(block)
        np.testing.assert_array_equal(once.score(block), first)
        once.observe(block)
        np.testing.assert_array_equal(twice.predict_state(block), once.predict_state(block))
    np.testing.assert_array_equal(twice.score(blocks[-1]), once.score(blocks[-1]))
