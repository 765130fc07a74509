"""Sessions derived from a stream by an inactivity gap, as the THRNN paper prepares its data.

Steps, per user, on the time-ordered events (Vassøy et al. 2019, section 4.2, following
Ruocco et al. 2017):

1. Consecutive events belong to the same session when ``t[i+1] <= t[i] + gap``
   (1 h for LastFM, 30 min for Reddit). The gap is measured on the raw events.
2. Within a session, consecutive repeats of an item are collapsed to their first occurrence.
3. Sessions longer than ``max_visit_length`` events (after collapsing; default ``2 * max_length``)
   are removed; sessions shorter than ``min_length`` too (default 1: none, as the paper states no
   such filter; its authors' preprocessing script also drops one-event sessions, which
   ``min_length=2`` reproduces, and keeps lengths 2-39, which ``max_visit_length=39`` adds).
4. Sessions longer than ``max_length`` are split into parts of ``max_length`` events. The parts are
   separate sessions for next-item prediction (``session``) but one visit for return time
   (``visit``), so the split introduces no zero return times. With ``drop_single_tail`` a trailing
   part of one event is dropped, as the authors' script does (a 41-event session keeps 40).
5. Users with fewer than ``min_user_sessions`` sessions (parts, counted after step 4, as the
   authors' script counts them; it uses 3) are dropped.

The authors' script starts a new session when the gap is ``>= gap``; here it is ``> gap`` (the
two differ only for gaps of exactly ``gap`` seconds).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from harness.errors import UsageError
from harness.interactions import Interactions

__all__ = ["sessionize"]


def sessionize(stream: Interactions, gap: float, max_length: int = 20, *,
               min_length: int = 1, max_visit_length: int | None = None,
               drop_single_tail: bool = False, min_user_sessions: int = 1) -> Interactions:
    """A new stream with ``session`` and ``visit`` set (global ids, numbered by start time).

    Events removed by collapsing repeats or by the length filters are dropped; ``n_users`` and
    ``n_items`` are kept. The result stays in time order.
    """
    if gap <= 0:
        raise UsageError(f"sessionize: `gap > 0` (seconds) must hold, but got gap={gap}")
    if max_length < 1 or min_length < 1 or min_user_sessions < 1:
        raise UsageError("sessionize: `max_length >= 1`, `min_length >= 1` and "
                         "`min_user_sessions >= 1` must hold, but got "
                         f"max_length={max_length}, min_length={min_length}, "
                         f"min_user_sessions={min_user_sessions}")
    longest = 2 * max_length if max_visit_length is None else max_visit_length
    if longest < min_length:
        raise UsageError(f"sessionize: `max_visit_length >= min_length` must hold, but got "
                         f"max_visit_length={longest}, min_length={min_length}")
    n = len(stream)
    if n == 0:
        empty = np.zeros(0, np.int64)
        return replace(stream, session=empty, visit=empty)
    order = np.argsort(stream.user, kind="stable")  # per user, time order kept
    user, item, t = stream.user[order], stream.item[order], stream.t[order]
    new_visit = np.ones(n, bool)
    new_visit[1:] = (user[1:] != user[:-1]) | (t[1:] - t[:-1] > gap)
    visit = np.cumsum(new_visit) - 1
    keep = np.ones(n, bool)
    keep[1:] = new_visit[1:] | (item[1:] != item[:-1])
    lengths = np.bincount(visit[keep], minlength=visit[-1] + 1)
    keep &= (lengths[visit] <= longest) & (lengths[visit] >= min_length)

    kept = np.flatnonzero(keep)
    position, first_of_visit = _positions(visit[kept])
    if drop_single_tail:
        length = lengths[visit[kept]]
        tail = (position == length - 1) & (position > 0) & (position % max_length == 0)
        kept, position, first_of_visit = kept[~tail], position[~tail], first_of_visit[~tail]
    k_visit = visit[kept]
    part = position // max_length
    new_session = first_of_visit | (part != np.roll(part, 1))
    k_session = np.cumsum(new_session) - 1
    if min_user_sessions > 1 and len(kept):
        k_user = user[kept]
        n_sessions = np.bincount(k_user, weights=new_session, minlength=int(k_user.max()) + 1)
        enough = n_sessions[k_user] >= min_user_sessions
        kept, k_visit, k_session = kept[enough], k_visit[enough], k_session[enough]

    original = order[kept]
    back = np.argsort(original, kind="stable")  # to time order
    index = original[back]
    # The parts are views of a valid stream, so the dataclass is built without re-validation.
    return Interactions(
        user=stream.user[index], item=stream.item[index], t=stream.t[index],
        label=stream.label[index], features=stream.features[index], n_users=stream.n_users,
        n_items=stream.n_items, session=_by_first_event(k_session[back]),
        visit=_by_first_event(k_visit[back]), name=stream.name)


def _positions(visit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Position of each event within its visit (visits contiguous), and the visits' first events."""
    first = np.ones(len(visit), bool)
    first[1:] = visit[1:] != visit[:-1]
    starts = np.flatnonzero(first)
    return np.arange(len(visit)) - np.repeat(starts, np.diff(np.append(starts, len(visit)))), first


def _by_first_event(ids: np.ndarray) -> np.ndarray:
    """Renumber group ids 0, 1, ... in order of each group's first event."""
    _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    rank = np.empty(len(first), np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inverse]
