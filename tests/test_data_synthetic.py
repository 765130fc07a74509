"""The synthetic generator: determinism, shape, session structure, labels, learnability."""

from __future__ import annotations

import numpy as np
import pytest

from harness.data import open_dataset, sessionize
from harness.data.datasets import dataset_stats
from harness.data.synthetic import PRESETS, SyntheticDataset
from harness.errors import UsageError


@pytest.fixture(scope="module")
def default_stream():
    return SyntheticDataset().load()


def test_default_preset_size_and_labels(default_stream):
    s = default_stream
    assert (s.n_users, s.n_items, len(s), s.n_features) == (300, 200, 20_000, 0)
    assert 0.01 <= s.label.mean() <= 0.02
    assert np.all(np.diff(s.t) >= 0) and s.t[0] == 0
    assert len(np.unique(s.user)) == 300


def test_same_seed_same_stream_other_seed_other_stream(default_stream):
    again = SyntheticDataset(seed=0).load()
    other = SyntheticDataset(seed=1).load()
    for column in ("user", "item", "t", "label"):
        np.testing.assert_array_equal(getattr(again, column), getattr(default_stream, column))
    assert not np.array_equal(other.item, default_stream.item)
    assert SyntheticDataset(seed=0).sha256() == SyntheticDataset(seed=0).sha256()
    assert SyntheticDataset(seed=0).sha256() != SyntheticDataset(seed=1).sha256()


def test_repeat_probability_is_tunable():
    low = dataset_stats(SyntheticDataset(repeat_prob=0.0, n_events=5000).load())
    high = dataset_stats(SyntheticDataset(repeat_prob=0.7, n_events=5000).load())
    assert low["repeat_fraction"] < 0.2 < 0.7 < high["repeat_fraction"]


def test_features_are_optional_and_finite():
    s = SyntheticDataset(n_events=3000, n_features=6).load()
    assert s.features.shape == (3000, 6) and np.isfinite(s.features).all()
    assert s.features.std() > 0.5


def test_session_structure_is_bursty(default_stream):
    s = sessionize(default_stream, 3600)
    per_user_sessions = np.bincount(s.user[np.unique(s.session, return_index=True)[1]])
    assert per_user_sessions.mean() > 5
    # gaps between a user's events: minutes inside sessions, hours to days between them
    order = np.lexsort((default_stream.t, default_stream.user))
    u, t = default_stream.user[order], default_stream.t[order]
    gaps = np.diff(t)[u[1:] == u[:-1]]
    assert np.median(gaps) < 600
    between = gaps[gaps > 3600]
    assert len(between) > 1000 and between.min() >= 2 * 3600 - 1
    # self-exciting: return times are over-dispersed (coefficient of variation above 1)
    assert between.std() / between.mean() > 1.0


def test_labels_depend_on_behaviour(default_stream):
    s = default_stream
    # users' share of labelled events correlates with their share of events on one topic's items;
    # independently: labelled events are not spread uniformly over users
    per_user = np.bincount(s.user, weights=s.label, minlength=s.n_users)
    counts = np.bincount(s.user, minlength=s.n_users)
    rate = per_user / counts
    assert rate.std() > 2 * np.sqrt(s.label.mean() * (1 - s.label.mean()) / counts.mean())


def test_history_beats_popularity(default_stream):
    """A recency-weighted history model ranks far better than global popularity."""
    s = default_stream
    start = int(0.9 * len(s))
    pop = np.zeros(s.n_items)
    hist = np.zeros((s.n_users, s.n_items))
    rr_pop, rr_hist = [], []
    for k in range(len(s)):
        u, i = s.user[k], s.item[k]
        if k >= start:
            for scores, out in ((pop, rr_pop), (hist[u] + 1e-6 * pop, rr_hist)):
                v = scores[i]
                rank = 1 + (scores > v).sum() + 0.5 * ((scores == v).sum() - 1)
                out.append(1.0 / rank)
        pop[i] += 1
        hist[u] *= 0.9
        hist[u, i] += 1
    assert np.mean(rr_hist) > 1.5 * np.mean(rr_pop)


def test_presets_are_registered_and_sized_like_jodie():
    assert PRESETS["reddit"].n_events == 672_447 and PRESETS["reddit"].n_features == 172
    assert PRESETS["wikipedia"].n_users == 8227 and PRESETS["lastfm"].n_events == 1_293_103
    dataset = open_dataset("synthetic-mooc")
    assert dataset.name == "synthetic-mooc" and dataset.config.n_items == 98
    assert open_dataset("synthetic").config == PRESETS["default"]


def test_unknown_parameters_and_presets_are_rejected():
    with pytest.raises(UsageError, match="did you mean 'n_users'"):
        SyntheticDataset(n_user=5)
    with pytest.raises(UsageError, match="synthetic preset"):
        SyntheticDataset("redit")
    with pytest.raises(UsageError, match="repeat_prob"):
        SyntheticDataset(repeat_prob=0.8, history_prob=0.5)
