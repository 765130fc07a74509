"""Sessions and session-parallel mini-batches, in numpy.

A session is a run of one user's consecutive events. On a sessionized stream (``session`` ids
set) a new session starts wherever a user's session id changes; otherwise wherever the time since
the user's previous event exceeds ``session_gap`` seconds (``None``: never, so each user's whole
history is one sequence).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

__all__ = ["Step", "session_parallel_batches", "session_sequences", "session_starts", "user_order"]


def user_order(user: np.ndarray) -> np.ndarray:
    """Indices that sort events by user, keeping time order within a user."""
    return np.argsort(user, kind="stable")


def session_starts(
    user: np.ndarray,
    t: np.ndarray,
    session: np.ndarray | None = None,
    session_gap: float | None = None,
    order: np.ndarray | None = None,
) -> np.ndarray:
    """Boolean per event (time order): the event opens a session of its user.

    ``order`` may pass ``user_order(user)`` when the caller has it already.
    """
    n = len(user)
    order = user_order(user) if order is None else order
    u = user[order]
    first = np.r_[True, u[1:] != u[:-1]] if n else np.zeros(0, bool)
    starts_sorted = first.copy()
    if session is not None:
        s = session[order]
        starts_sorted[1:] |= s[1:] != s[:-1]
    elif session_gap is not None:
        tt = t[order]
        starts_sorted[1:] |= (tt[1:] - tt[:-1]) > session_gap
    out = np.empty(n, bool)
    out[order] = starts_sorted
    return out


def session_sequences(
    user: np.ndarray,
    item: np.ndarray,
    starts: np.ndarray,
    min_length: int = 1,
    order: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Item sequences of the sessions, ordered by their first event (the official order).

    Returns ``(items, offsets)``: session ``k`` is ``items[offsets[k]:offsets[k + 1]]`` in time
    order. Sessions shorter than ``min_length`` are left out.
    """
    n = len(user)
    if n == 0:
        return np.zeros(0, np.int32), np.zeros(1, np.int64)
    order = user_order(user) if order is None else order  # sessions are contiguous in it
    sid_sorted = np.cumsum(starts[order]) - 1
    n_sessions = int(sid_sorted[-1]) + 1
    first_event = order[np.flatnonzero(starts[order])]  # index of each session's first event
    rank = np.empty(n_sessions, np.int64)
    rank[np.argsort(first_event, kind="stable")] = np.arange(n_sessions)
    lengths = np.bincount(sid_sorted, minlength=n_sessions)
    keep = lengths >= min_length
    event_rank = rank[sid_sorted]
    event_keep = keep[sid_sorted]
    by_session = np.argsort(event_rank, kind="stable")  # stable: time order within a session
    by_session = by_session[event_keep[by_session]]
    items = np.ascontiguousarray(item[order][by_session], dtype=np.int32)
    kept_lengths = np.zeros(n_sessions, np.int64)
    kept_lengths[rank[keep]] = lengths[keep]
    kept_lengths = kept_lengths[kept_lengths > 0]
    offsets = np.r_[0, np.cumsum(kept_lengths)].astype(np.int64)
    return items, offsets


@dataclass(frozen=True)
class Step:
    """One step of session-parallel training.

    ``keep``: slots of the previous step's hidden state that carry on (``None``: all of them);
    ``reset``: slots (after ``keep``) whose session starts here, so their hidden state is zeroed;
    ``position``: per slot, the index of the input event in the flat item array; the target is
    the next event, ``position + 1``.
    """

    keep: np.ndarray | None
    reset: np.ndarray
    position: np.ndarray


def session_parallel_batches(offsets: np.ndarray, batch_size: int) -> Iterator[Step]:
    """Session-parallel mini-batches over sessions ``offsets`` (each of length >= 2).

    The first ``batch_size`` sessions take one slot each; every step feeds each slot's current
    event as input and its next event as target. When a slot's session has no target left, the
    next unused session takes the slot and its hidden state is reset. Unlike the official code,
    which stops as soon as one slot finds no session to take, slots with nothing left are dropped
    so that every event of every session is trained on (per-user histories on the streaming
    protocol can be very long, and their tails would otherwise be lost).
    """
    n_sessions = len(offsets) - 1
    width = min(batch_size, n_sessions)
    session = np.arange(width)
    position = offsets[session].copy()
    end = offsets[session + 1].copy()
    next_session = width
    reset = np.ones(width, bool)
    keep: np.ndarray | None = None
    while position.size:
        yield Step(keep, reset, position.copy())
        position += 1
        done = np.flatnonzero(position + 1 >= end)
        reset = np.zeros(position.size, bool)
        keep = None
        if done.size:
            take = min(done.size, n_sessions - next_session)
            refill = done[:take]
            new = np.arange(next_session, next_session + take)
            next_session += take
            position[refill] = offsets[new]
            end[refill] = offsets[new + 1]
            reset[refill] = True
            if take < done.size:
                alive = np.ones(position.size, bool)
                alive[done[take:]] = False
                keep = np.flatnonzero(alive)
                position, end, reset = position[keep], end[keep], reset[keep]
