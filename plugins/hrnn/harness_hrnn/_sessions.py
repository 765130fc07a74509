"""Per-user sessions of a training stream, user-parallel batches over them, and the online
session tracker that evaluation uses (the same rules, event by event).

A session ends where the stream's ``session`` id changes (sessionized streams, the ``sessions``
protocol); on other streams where the user was idle for more than ``session_gap`` seconds, or
after ``max_length`` events (the part that follows is a new session of the same visit, as the
sessions protocol splits long sessions). A visit is a run of sessions without such a gap: the
stream's ``visit`` id, else a run ended by the idle gap. Return times are measured between
visits; the parts of one visit follow each other with a gap of 0.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from harness.interactions import Interactions

__all__ = ["OnlineSessions", "SessionTable", "distinct_runs", "session_table", "user_parallel_batches"]


@dataclass(frozen=True)
class SessionTable:
    """The sessions of a stream, grouped by user and in time order within a user.

    ``items[offset[k]:offset[k] + length[k]]`` are session ``k``'s items; user ``u``'s sessions
    are ``user_start[u]:user_start[u + 1]``. ``gap_before[k]`` is the seconds from the end of
    the previous visit to the start of session ``k`` (0 when ``k`` continues a visit, NaN for a
    user's first session). ``last_t``, ``last_session``, ``last_visit`` and ``count`` describe
    each user's last session (for the online tracker), with ``seen`` marking users with events.
    """

    items: np.ndarray
    offset: np.ndarray
    length: np.ndarray
    user: np.ndarray
    gap_before: np.ndarray
    user_start: np.ndarray
    last_t: np.ndarray
    last_session: np.ndarray
    last_visit: np.ndarray
    seen: np.ndarray

    def __len__(self) -> int:
        return len(self.offset)

    def padded(self, sessions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Items of ``sessions`` as a right-padded ``(len(sessions), max length)`` int64 array
        (padding 0) and the lengths."""
        lengths = self.length[sessions]
        width = int(lengths.max()) if len(sessions) else 0
        steps = np.arange(width)
        valid = steps[None, :] < lengths[:, None]
        index = np.where(valid, self.offset[sessions][:, None] + steps[None, :], 0)
        return np.where(valid, self.items[index], 0).astype(np.int64), lengths


def session_table(stream: Interactions, session_gap: float, max_length: int) -> SessionTable:
    """The sessions of ``stream`` under the rules of the module docstring."""
    n, n_users = len(stream), stream.n_users
    order = np.argsort(stream.user, kind="stable")
    user, item, t = stream.user[order], stream.item[order], stream.t[order]
    new_user = np.r_[True, user[1:] != user[:-1]] if n else np.zeros(0, bool)
    if stream.session is not None:
        session = stream.session[order]
        new_session = new_user | np.r_[True, session[1:] != session[:-1]]
        visit = stream.visit[order] if stream.visit is not None else session
        new_visit = new_user | np.r_[True, visit[1:] != visit[:-1]]
    else:
        new_visit = new_user | np.r_[True, np.diff(t) > session_gap]
        start = np.flatnonzero(new_visit)
        position = np.arange(n) - np.repeat(start, np.diff(np.r_[start, n]))
        new_session = new_visit | (position % max_length == 0)
        session = np.cumsum(new_session) - 1
        visit = np.cumsum(new_visit) - 1
    offset = np.flatnonzero(new_session)
    length = np.diff(np.r_[offset, n]).astype(np.int64)
    end = offset + length - 1
    gap_before = np.zeros(len(offset))
    gap_before[new_user[offset]] = np.nan
    opens_visit = new_visit[offset] & ~new_user[offset]
    k = np.flatnonzero(opens_visit)
    gap_before[k] = t[offset[k]] - t[end[k - 1]]
    s_user = user[offset].astype(np.int64)
    counts = np.bincount(s_user, minlength=n_users)
    last_t = np.full(n_users, np.nan)
    last_session = np.full(n_users, np.iinfo(np.int64).min, np.int64)
    last_visit = last_session.copy()
    seen = counts > 0
    last = np.cumsum(counts)[seen] - 1  # each user's last session
    last_t[seen] = t[end[last]]
    last_session[seen] = session[end[last]]
    last_visit[seen] = visit[end[last]]
    return SessionTable(
        items=item.astype(np.int64), offset=offset.astype(np.int64), length=length, user=s_user,
        gap_before=gap_before, user_start=np.r_[0, np.cumsum(counts)].astype(np.int64),
        last_t=last_t, last_session=last_session, last_visit=last_visit, seen=seen)


def user_parallel_batches(table: SessionTable, batch_size: int, min_users: int = 1
                          ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """User-parallel mini-batches: ``(users, sessions)``, one session per user, each user's
    sessions in time order. Every batch takes the ``batch_size`` users with the most sessions
    left (ties to the lower id), so long histories are spread over the whole epoch; the epoch
    ends when fewer than ``min_users`` users have sessions left (THRNN's code: 100 and 50)."""
    left = np.diff(table.user_start).copy()
    nxt = table.user_start[:-1].copy()
    while int((left > 0).sum()) >= max(min_users, 1):
        active = np.flatnonzero(left > 0)
        if len(active) > batch_size:
            # stable on (-left, user): deterministic choice among ties
            keep = np.lexsort((active, -left[active]))[:batch_size]
            active = np.sort(active[keep])
        yield active, nxt[active].copy()
        nxt[active] += 1
        left[active] -= 1


def distinct_runs(users: np.ndarray) -> Iterator[np.ndarray]:
    """Indices of ``users`` cut into consecutive runs in which no user repeats (in order)."""
    start, seen = 0, set()
    for j, u in enumerate(users.tolist()):
        if u in seen:
            yield np.arange(start, j)
            start, seen = j, set()
        seen.add(u)
    if start < len(users):
        yield np.arange(start, len(users))


class OnlineSessions:
    """Each user's current session during evaluation: where an event opens a session and a
    visit, by the rules of :func:`session_table` (never from the event's item)."""

    def __init__(self, table: SessionTable, session_gap: float, max_length: int) -> None:
        self.session_gap, self.max_length = session_gap, max_length
        self.seen = table.seen.copy()
        self.last_t = table.last_t.copy()
        self.last_session = table.last_session.copy()
        self.last_visit = table.last_visit.copy()
        self.count = np.zeros(len(self.seen), np.int64)
        has = np.flatnonzero(self.seen)
        last = table.user_start[has + 1] - 1
        self.count[has] = table.length[last]

    def grow(self, n_users: int) -> None:
        extra = n_users - len(self.seen)
        if extra > 0:
            self.seen = np.r_[self.seen, np.zeros(extra, bool)]
            self.last_t = np.r_[self.last_t, np.full(extra, np.nan)]
            self.last_session = np.r_[self.last_session, np.full(extra, np.iinfo(np.int64).min)]
            self.last_visit = np.r_[self.last_visit, np.full(extra, np.iinfo(np.int64).min)]
            self.count = np.r_[self.count, np.zeros(extra, np.int64)]

    def opens(self, block: Interactions, rows: np.ndarray | slice = slice(None)
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For events ``rows`` of ``block`` (distinct users): whether each opens a session,
        whether it opens a visit, and the gap before it in seconds (0 inside a visit, NaN for a
        user's first event)."""
        users = block.user[rows].astype(np.int64)
        t = block.t[rows]
        seen = self.seen[users]
        gap = t - self.last_t[users]
        if block.session is not None:
            session = block.session[rows]
            visit = block.visit[rows] if block.visit is not None else session
            new_session = ~seen | (session != self.last_session[users])
            new_visit = ~seen | (visit != self.last_visit[users])
        else:
            new_visit = ~seen | (gap > self.session_gap)
            new_session = new_visit | (self.count[users] >= self.max_length)
        gap = np.where(new_visit, gap, 0.0)
        gap[~seen] = np.nan
        return new_session, new_visit, gap

    def advance(self, block: Interactions, rows: np.ndarray, new_session: np.ndarray,
                new_visit: np.ndarray) -> None:
        """Record events ``rows`` of ``block`` (distinct users) as observed."""
        users = block.user[rows].astype(np.int64)
        self.seen[users] = True
        self.last_t[users] = block.t[rows]
        self.count[users] = np.where(new_session, 1, self.count[users] + 1)
        if block.session is not None:  # ids matter only on sessionized streams
            session = block.session[rows]
            self.last_session[users] = session
            self.last_visit[users] = block.visit[rows] if block.visit is not None else session
