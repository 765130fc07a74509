"""Sessionization (THRNN preprocessing) and the splits, against plain-Python references."""

from __future__ import annotations

import numpy as np
import pytest

from harness.data.sessions import sessionize
from harness.data.splits import TRAINING_FRACTIONS, index_split, session_split
from harness.data.synthetic import SyntheticDataset
from harness.errors import UsageError
from harness.interactions import Interactions


def reference_sessions(stream, gap, max_length, min_length=1, max_visit_length=None,
                       drop_single_tail=False, min_user_sessions=1):
    """Visits, each a list of parts, each a list of original event indices."""
    longest = 2 * max_length if max_visit_length is None else max_visit_length
    by_user: dict[int, list[int]] = {}
    for k in range(len(stream)):
        by_user.setdefault(int(stream.user[k]), []).append(k)
    result = []
    for _, events in sorted(by_user.items()):
        mine = []
        visits, current = [], [events[0]]
        for prev, k in zip(events, events[1:]):
            if stream.t[k] <= stream.t[prev] + gap:
                current.append(k)
            else:
                visits.append(current)
                current = [k]
        visits.append(current)
        for visit in visits:
            collapsed = [visit[0]]
            for k in visit[1:]:
                if stream.item[k] != stream.item[collapsed[-1]]:
                    collapsed.append(k)
            if min_length <= len(collapsed) <= longest:
                parts = [collapsed[i:i + max_length] for i in range(0, len(collapsed), max_length)]
                if drop_single_tail and len(parts) > 1 and len(parts[-1]) == 1:
                    parts.pop()
                mine.append(parts)
        if sum(len(parts) for parts in mine) >= min_user_sessions:
            result.extend(mine)
    return result


def as_groups(ids, index):
    groups: dict[int, list[int]] = {}
    for g, k in zip(ids.tolist(), index):
        groups.setdefault(g, []).append(k)
    return sorted(groups.values())


def kept_index(stream, out):
    """Original indices of the events kept by sessionize (matched on identical rows)."""
    key = {(int(u), int(i), float(t)): k for k, (u, i, t) in
           enumerate(zip(stream.user, stream.item, stream.t))}
    return [key[(int(u), int(i), float(t))] for u, i, t in zip(out.user, out.item, out.t)]


@pytest.mark.parametrize("gap,max_length,min_length,extra", [
    (3600, 20, 1, {}), (1800, 3, 1, {}), (3600, 2, 2, {}),
    (3600, 3, 2, {"max_visit_length": 7, "drop_single_tail": True, "min_user_sessions": 3}),
    (1800, 2, 1, {"drop_single_tail": True, "min_user_sessions": 12}),
])
def test_sessionize_matches_reference(gap, max_length, min_length, extra):
    stream = SyntheticDataset(n_users=30, n_items=15, n_events=1500, repeat_prob=0.4).load()
    # make (user, item, t) unique so kept events can be matched back
    stream = Interactions.from_arrays(stream.user, stream.item, stream.t + np.arange(len(stream)) * 1e-6,
                                      n_users=stream.n_users, n_items=stream.n_items)
    out = sessionize(stream, gap, max_length, min_length=min_length, **extra)
    ref = reference_sessions(stream, gap, max_length, min_length, **extra)
    index = kept_index(stream, out)
    assert sorted(index) == sorted(k for visit in ref for part in visit for k in part)
    assert index == sorted(index)  # still in time order
    assert as_groups(out.session, index) == sorted(part for visit in ref for part in visit)
    assert as_groups(out.visit, index) == sorted(sum(visit, []) for visit in ref)
    assert out.n_users == stream.n_users and out.n_items == stream.n_items
    # ids are numbered by the time of each group's first event
    first = [np.flatnonzero(out.session == s)[0] for s in range(out.session.max() + 1)]
    assert first == sorted(first)


def test_sessionize_hand_example():
    # user 0: 0,60 (repeat collapsed), 120 | gap > 1h | 5000..; user 1: 25 events in one visit
    user = [0, 0, 0, 0, 0] + [1] * 25 + [0]
    item = [1, 1, 2, 3, 3] + list(range(25)) + [4]
    t = [0, 60, 120, 4000, 4100] + [10_000 + 10 * k for k in range(25)] + [20_000]
    order = np.argsort(t, kind="stable")
    stream = Interactions.from_arrays(np.array(user)[order], np.array(item)[order],
                                      np.array(t, float)[order])
    out = sessionize(stream, 3600, max_length=20)
    assert len(out) == 31 - 2  # two repeats collapsed
    u1 = out.user == 1
    assert len(set(out.session[u1].tolist())) == 2 and len(set(out.visit[u1].tolist())) == 1
    assert np.bincount(out.session[u1] - out.session[u1].min()).tolist() == [20, 5]
    u0 = out.user == 0
    assert len(set(out.visit[u0].tolist())) == 3  # 0..120 | 4000, 4100 (repeat collapsed) | 20000
    long = Interactions.from_arrays(np.zeros(45, int), np.arange(45), np.arange(45.0))
    assert len(sessionize(long, 3600, max_length=20)) == 0  # longer than 2 * 20: removed


def test_sessionize_thrnn_filters_hand_example():
    # One user, visits (gap > 1 h) of 1, 2, 39, 40 and 41 events (no repeats), then a second user
    # with two 2-event visits; THRNN's filters: lengths 2-39, parts of 20, a trailing 1-event part
    # dropped, users with fewer than 3 sessions dropped.
    t, user, item = [], [], []
    start = 0.0
    for length in (1, 2, 39, 40, 41):
        t += [start + 10 * k for k in range(length)]
        item += list(range(length))
        user += [0] * length
        start += 10_000
    for _ in range(2):
        t += [start, start + 10]
        item += [0, 1]
        user += [1, 1]
        start += 10_000
    stream = Interactions.from_arrays(np.array(user), np.array(item), np.array(t))
    out = sessionize(stream, 3600, 20, min_length=2, max_visit_length=39, drop_single_tail=True,
                     min_user_sessions=3)
    assert set(out.user.tolist()) == {0}  # user 1 has 2 sessions
    assert np.bincount(out.visit).tolist() == [2, 39]  # 1-event and 40+-event visits removed
    assert np.bincount(out.session).tolist() == [2, 20, 19]
    loose = sessionize(stream, 3600, 20, max_visit_length=41, drop_single_tail=True)
    assert np.bincount(loose.visit).tolist() == [1, 2, 39, 40, 40, 2, 2]  # 41st event dropped
    assert np.bincount(sessionize(stream, 3600, 20, max_visit_length=41).visit).tolist()[4] == 41


def test_sessionize_rejects_bad_arguments():
    stream = SyntheticDataset(n_users=5, n_items=5, n_events=50).load()
    with pytest.raises(UsageError, match="gap > 0"):
        sessionize(stream, 0)


def test_index_split_boundaries_follow_jodie():
    for n in (0, 1, 7, 10, 157_474):
        for train, valid in ((0.8, 0.1), (0.6, 0.2)):
            codes = index_split(n, train, valid)
            a, b = int(n * train), int(n * (train + valid))
            assert (codes[:a] == 0).all() and (codes[a:b] == 1).all() and (codes[b:] == 2).all()
    for train in TRAINING_FRACTIONS:
        n = 1000
        codes = index_split(n, train, 0.1, 0.1)
        assert (codes == 0).sum() == int(n * train)
        assert (codes == 1).sum() == int(n * (train + 0.1)) - int(n * train)
        assert (codes == 2).sum() == int(n * (train + 0.2)) - int(n * (train + 0.1))
        assert (codes[int(n * (train + 0.2)):] == -1).all()


def test_index_split_rejects_fractions_over_one():
    with pytest.raises(UsageError, match="sum to at most 1"):
        index_split(10, 0.8, 0.2, 0.1)
    with pytest.raises(UsageError):
        index_split(10, 1.5)


def test_session_split_per_user_last_twenty_percent():
    stream = sessionize(SyntheticDataset(n_users=40, n_items=20, n_events=4000).load(), 3600)
    codes = session_split(stream, test=0.2, valid=0.1)
    for u in np.unique(stream.user):
        mask = stream.user == u
        sessions = list(dict.fromkeys(stream.session[mask].tolist()))  # in start order
        n = len(sessions)
        for rank, s in enumerate(sessions):
            code = set(codes[stream.session == s].tolist())
            expected = 2 if rank >= int(0.8 * n) else 1 if rank >= int(n * 0.7 + 1e-9) else 0
            assert code == {expected}, (u, rank, n)


def test_session_split_needs_sessions():
    with pytest.raises(UsageError, match="sessionize"):
        session_split(SyntheticDataset(n_users=5, n_items=5, n_events=50).load())
