"""Sessions, user-parallel batches and the online session tracker, on hand-made streams."""

from __future__ import annotations

import numpy as np
from harness_hrnn import OnlineSessions, session_table, user_parallel_batches

from harness.data.sessions import sessionize
from harness.interactions import Interactions
from harness.testing import random_stream

H = 3600.0


def _stream(user, item, t, **kw):
    return Interactions.from_arrays(user, item, t, n_users=3, n_items=10, **kw)


def test_gap_sessions_parts_and_gaps_by_hand():
    # user 0: events at 0, 10, 20 min | 5 h later: 2 events ; user 1: 4 events in one visit,
    # split at max_length=3 into parts of 3 and 1
    user = [0, 1, 0, 1, 0, 1, 1, 0, 0]
    item = [1, 2, 3, 4, 5, 6, 7, 8, 9]
    t = [0, 60, 600, 700, 1200, 1300, 1400, 1200 + 5 * H, 1300 + 5 * H]
    table = session_table(_stream(user, item, t), session_gap=H, max_length=3)
    assert table.user.tolist() == [0, 0, 1, 1]
    assert table.length.tolist() == [3, 2, 3, 1]
    assert [table.items[o : o + n].tolist() for o, n in zip(table.offset, table.length)] == \
        [[1, 3, 5], [8, 9], [2, 4, 6], [7]]
    assert np.isnan(table.gap_before[0]) and np.isnan(table.gap_before[2])
    assert table.gap_before[1] == 5 * H and table.gap_before[3] == 0.0  # a part continues a visit
    assert table.user_start.tolist() == [0, 2, 4, 4]
    assert table.seen.tolist() == [True, True, False]
    items, lengths = table.padded(np.array([1, 2]))
    assert items.tolist() == [[8, 9, 0], [2, 4, 6]] and lengths.tolist() == [2, 3]


def test_session_ids_of_a_sessionized_stream_are_used():
    stream = sessionize(random_stream(), gap=H, max_length=20)
    table = session_table(stream, session_gap=1.0, max_length=2)  # ignored: ids decide
    assert len(table) == np.unique(stream.session).size
    order = np.argsort(stream.user, kind="stable")
    expected = np.diff(np.r_[np.flatnonzero(np.r_[True, np.diff(stream.session[order]) != 0]),
                             len(stream)])
    assert table.length.tolist() == expected.tolist()
    opens_visit = ~np.isnan(table.gap_before) & (table.gap_before > 0)
    assert (table.gap_before[opens_visit] > H).all()


def test_batches_take_users_with_most_sessions_left_in_time_order():
    user = [0] * 5 + [1] * 2 + [2] * 1
    t = np.arange(8) * 10 * H  # every event its own session
    table = session_table(_stream(user, np.arange(8) % 10, t[np.argsort(user, kind="stable")]),
                          session_gap=H, max_length=20)
    batches = list(user_parallel_batches(table, batch_size=2))
    assert [b[0].tolist() for b in batches] == [[0, 1], [0, 1], [0, 2], [0], [0]]
    sessions = np.concatenate([b[1] for b in batches])
    assert sorted(sessions.tolist()) == list(range(len(table)))  # every session once
    for u in range(3):  # each user's sessions in order
        mine = [s for users, ss in batches for v, s in zip(users, ss) if v == u]
        assert mine == sorted(mine)
    stopped = list(user_parallel_batches(table, batch_size=2, min_users=2))
    assert len(stopped) == 3  # the code's rule: stop when fewer than min_users are left


def test_online_tracker_finds_the_table_sessions_event_by_event():
    """Feeding the stream event by event reproduces the table's session starts, on plain streams
    (gap and length rules) and on sessionized ones (ids)."""
    for stream in (random_stream(), sessionize(random_stream(), gap=H, max_length=20)):
        table = session_table(stream, session_gap=H, max_length=4)
        empty = session_table(stream[:0], session_gap=H, max_length=4)
        online = OnlineSessions(empty, session_gap=H, max_length=4)
        starts, gaps = [], []
        for j in range(len(stream)):
            new, new_visit, gap = online.opens(stream[j : j + 1])
            if new[0]:
                starts.append(j)
                gaps.append(gap[0])
            online.advance(stream[j : j + 1], np.arange(1), new, new_visit)
        order = np.argsort(stream.user, kind="stable")
        want = np.sort(order[table.offset])
        assert starts == want.tolist()
        by_event = dict(zip(order[table.offset].tolist(), table.gap_before.tolist()))
        np.testing.assert_array_equal(gaps, [by_event[j] for j in starts])
