from __future__ import annotations

import copy
import pickle
from pathlib import Path

import numpy as np
import pytest
from harness_baselines import Frequency, Popularity, Recency

from harness.errors import HarnessError
from harness.evaluate import iter_blocks
from harness.interactions import Interactions

WIKIPEDIA = Path(__file__).resolve().parents[4] / "shared" / "data" / "wikipedia.csv"


def random_stream(seed: int, n: int = 400, n_users: int = 15, n_items: int = 12) -> Interactions:
    rng = np.random.default_rng(seed)
    # Integer-valued times with repeats, starting below zero, to exercise ties and the origin.
    t = np.sort(rng.integers(-50, 200, n)).astype(np.float64)
    return Interactions.from_arrays(
        rng.integers(0, n_users, n), rng.integers(0, n_items, n), t,
        n_users=n_users + 3, n_items=n_items + 2,  # a few users and items that never occur
    )


def reference_scores(kind: str, history: Interactions, user: int, n_items: int) -> np.ndarray:
    """Hand-written loop: the score of every item for ``user`` after the events of ``history``."""
    out = np.zeros(n_items)
    if kind == "popularity":
        for i in history.item:
            out[i] += 1
    elif kind == "frequency":
        for u, i in zip(history.user, history.item, strict=True):
            if u == user:
                out[i] += 1
    else:
        last: dict[int, float] = {}
        for u, i, t in zip(history.user, history.item, history.t, strict=True):
            if u == user:
                last[int(i)] = float(t)
        origin = float(history.t.min()) if len(history) else 0.0
        for i, t in last.items():
            out[i] = t - origin + 1.0
    return out


def ranks_of(scores: np.ndarray) -> np.ndarray:
    """Average-tie ranks of every item (1 = best) - the order information the evaluator uses."""
    from scipy.stats import rankdata

    return rankdata(-scores, method="average")


def distinct_runs(stream: Interactions) -> list[tuple[int, int]]:
    """Maximal runs of consecutive events with no user and no item repeated (the evaluator's)."""
    return list(iter_blocks(stream, max_block=len(stream) + 1))


MODELS = {"popularity": Popularity, "frequency": Frequency, "recency": Recency}


@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("seed", [0, 1])
def test_one_at_a_time_matches_reference_loop(kind: str, seed: int) -> None:
    stream = random_stream(seed)
    cut = 150
    model = MODELS[kind]()
    model.fit(stream[:cut])
    for k in range(cut, len(stream)):
        event = stream[k : k + 1]
        got = model.score(event)
        assert got.shape == (1, stream.n_items)
        expected = reference_scores(kind, stream[:k], int(stream.user[k]), stream.n_items)
        if kind == "recency":
            # Scores are an order-preserving shift of the last times: compare ranks and the
            # exact tie structure, and that untouched items sit at 0.
            np.testing.assert_array_equal(ranks_of(got[0]), ranks_of(expected))
            np.testing.assert_array_equal(got[0] == 0, expected == 0)
            np.testing.assert_allclose(got[0], expected)  # same origin: the first event
        else:
            np.testing.assert_array_equal(got[0], expected)
        model.observe(event)


@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("seed", [0, 3])
def test_blocks_equal_one_at_a_time(kind: str, seed: int) -> None:
    stream = random_stream(seed)
    cut = 100
    single, blocked = MODELS[kind](), MODELS[kind]()
    single.fit(stream[:cut])
    blocked.fit(stream[:cut])
    evaluation = stream[cut:]
    runs = distinct_runs(evaluation)
    assert max(b - a for a, b in runs) > 3  # real multi-event blocks are exercised
    for a, b in runs:
        block = evaluation[a:b]
        got = blocked.score(block)
        blocked.observe(block)
        for j in range(len(block)):
            one = evaluation[a + j : a + j + 1]
            np.testing.assert_array_equal(got[j], single.score(one)[0])
            single.observe(one)


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_blocks_with_repeated_users_still_exact(kind: str) -> None:
    # Outside the block contract (users repeat), row j must still reflect events 0..j-1.
    stream = random_stream(5)
    single, blocked = MODELS[kind](), MODELS[kind]()
    single.fit(stream[:200])
    blocked.fit(stream[:200])
    for a in range(200, len(stream), 25):
        block = stream[a : a + 25]
        got = blocked.score(block)
        blocked.observe(block)
        for j in range(len(block)):
            np.testing.assert_array_equal(got[j], single.score(block[j : j + 1])[0])
            single.observe(block[j : j + 1])


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_rows_ignore_the_event_itself_and_later_ones(kind: str) -> None:
    stream = random_stream(2)
    model = MODELS[kind]()
    model.fit(stream[:300])
    block = stream[300:304]
    base = model.score(block)
    changed = Interactions.from_arrays(
        block.user, (block.item + 1) % stream.n_items, block.t,
        n_users=stream.n_users, n_items=stream.n_items,
    )
    # Changing item j changes rows > j only; row 0 depends on no block item at all.
    again = model.score(changed)
    np.testing.assert_array_equal(again[0], base[0])
    with_last_changed = Interactions.from_arrays(
        block.user, np.r_[block.item[:-1], (block.item[-1] + 1) % stream.n_items], block.t,
        n_users=stream.n_users, n_items=stream.n_items,
    )
    np.testing.assert_array_equal(model.score(with_last_changed), base)


def test_cold_users_and_items_are_tied_lowest() -> None:
    stream = random_stream(4)
    train = stream[:300]
    cold_user = stream.n_users - 1  # never occurs
    cold_item = stream.n_items - 1  # never occurs
    query = Interactions.from_arrays(
        [cold_user, int(stream.user[0])], [0, 0], [300.0, 300.0],
        n_users=stream.n_users, n_items=stream.n_items,
    )
    for kind, cls in MODELS.items():
        model = cls()
        model.fit(train)
        scores = model.score(query)
        assert np.isfinite(scores).all()
        assert scores[:, cold_item].tolist() == [0.0, 0.0], kind
        assert scores.min() == 0.0
        if kind != "popularity":
            assert (scores[0] == 0).all(), kind  # a cold user: every item tied
        untouched = scores[1] == 0
        assert untouched.any() and (scores[1][~untouched] >= 1).all(), kind


def test_recency_orders_by_last_time_and_ties_equal_times() -> None:
    stream = Interactions.from_arrays(
        [0, 0, 0, 0, 1], [0, 1, 2, 1, 3], [-10.0, -5.0, -5.0, 3.0, 4.0], n_users=2, n_items=5
    )
    model = Recency()
    model.fit(stream)
    row = model.score(Interactions.from_arrays([0], [0], [5.0], n_users=2, n_items=5))[0]
    # item 1 last at 3, item 2 at -5, item 0 at -10, items 3 and 4 never touched by user 0
    assert row.tolist() == [1.0, 14.0, 6.0, 0.0, 0.0]


def test_popularity_counts_all_users() -> None:
    stream = Interactions.from_arrays([0, 1, 2, 1], [2, 2, 0, 1], [0, 1, 2, 3], n_items=4)
    model = Popularity()
    model.fit(stream)
    query = Interactions.from_arrays([5], [0], [4], n_users=6, n_items=4)
    assert model.score(query)[0].tolist() == [1.0, 1.0, 2.0, 0.0]


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_pickle_deepcopy_and_refit(kind: str) -> None:
    stream = random_stream(6)
    model = MODELS[kind]()
    assert model.get_params() == {}
    model.fit(stream[:200])
    block = stream[200:201]
    for clone in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        np.testing.assert_array_equal(clone.score(block), model.score(block))
        clone.observe(stream[200:260])  # a copy must not share state with the original
    fresh = MODELS[kind]()
    fresh.fit(stream[:200])
    model.observe(stream[200:300])
    model.fit(stream[:200])  # fit again starts over
    np.testing.assert_array_equal(model.score(block), fresh.score(block))


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_errors_are_clear(kind: str) -> None:
    stream = random_stream(7)
    model = MODELS[kind]()
    with pytest.raises(HarnessError, match="not fitted; call fit"):
        model.score(stream[:1])
    model.fit(stream[:100])
    bigger = Interactions.from_arrays([0], [stream.n_items], [1e9], n_items=stream.n_items + 1)
    with pytest.raises(HarnessError, match=r"item ids must lie in \[0, 14\)"):
        model.score(bigger)


def test_registered_entry_points() -> None:
    from harness.registry import Registry

    models = Registry.from_entry_points("models")
    assert models.get("popularity") is Popularity
    assert models.get("recency") is Recency
    assert models.get("frequency") is Frequency


@pytest.mark.skipif(not WIKIPEDIA.exists(), reason="wikipedia.csv not available")
def test_wikipedia_repeat_baselines_are_strong_and_exact() -> None:
    data = np.loadtxt(WIKIPEDIA, delimiter=",", skiprows=1, usecols=(0, 1, 2))
    stream = Interactions.from_arrays(data[:, 0], data[:, 1], data[:, 2])
    n = len(stream)
    train, rest = stream[: int(0.8 * n)], stream[int(0.8 * n) : int(0.8 * n) + 3000]
    model = Frequency()
    model.fit(train)
    ranks = []
    for a, b in distinct_runs(rest):
        block = rest[a:b]
        scores = model.score(block)
        true = scores[np.arange(len(block)), block.item]
        higher = (scores > true[:, None]).sum(1)
        ties = (scores == true[:, None]).sum(1)
        ranks.append(higher + (ties + 1) / 2)
        model.observe(block)
    mrr = float(np.mean(1 / np.concatenate(ranks)))
    assert mrr > 0.5  # Wikipedia is repetitive: the user's own counts alone rank well
