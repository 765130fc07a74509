"""t-Batch (Kumar et al., KDD 2019) for recurrent models, in numpy, planned once in ``fit``.

The idea is JODIE's; the code is the rrn plugin's, copied (a plugin depends on nothing but
harness, numpy and torch).

A training stream is cut into time windows. Inside a window, events are grouped into t-batches:
an event goes into the t-batch after the last one that holds its user (and its item, when items
carry state), so that no user (item) occurs twice in a t-batch and every user's (item's) events
come in time order across t-batches. The t-batches of a window are processed in order, each one
in a single batched step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Plan", "log_gaps", "plan_window", "tbatch_ids", "time_windows"]


def log_gaps(key: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per event: ``log(1 + seconds since the previous event with the same key)`` (0 for a first
    event) and whether there was a previous event."""
    n = len(key)
    gap = np.zeros(n)
    has = np.zeros(n, bool)
    order = np.argsort(key, kind="stable")
    same = key[order][1:] == key[order][:-1]
    later, earlier = order[1:][same], order[:-1][same]
    gap[later] = np.log1p(np.maximum(t[later] - t[earlier], 0.0))
    has[later] = True
    return gap, has


def time_windows(t: np.ndarray, windows: int) -> list[tuple[int, int]]:
    """Cut a stream into ``windows`` windows of equal duration (empty ones skipped); every event
    lands in exactly one window, in order."""
    n = len(t)
    if n == 0:
        return []
    span = (t[-1] - t[0]) / windows
    if span <= 0:
        return [(0, n)]
    edges = t[0] + span * np.arange(1, windows)
    cuts = np.searchsorted(t, edges, side="right")
    bounds = np.unique(np.concatenate([[0], cuts, [n]]))
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def tbatch_ids(user: np.ndarray, item: np.ndarray | None) -> np.ndarray:
    """The t-batch of every event: one after the last t-batch that holds its user (or its item,
    when ``item`` is given)."""
    m = len(user)
    tb = np.empty(m, np.int64)
    if item is None:  # only users carry state: an event's t-batch is its rank in the user's run
        order = np.argsort(user, kind="stable")
        sorted_u = user[order]
        starts = np.flatnonzero(np.r_[True, sorted_u[1:] != sorted_u[:-1]])
        run_start = np.repeat(starts, np.diff(np.r_[starts, m]))
        tb[order] = np.arange(m) - run_start
        return tb
    last_u: dict[int, int] = {}
    last_i: dict[int, int] = {}
    for k, (u, i) in enumerate(zip(user.tolist(), item.tolist())):
        x = max(last_u.get(u, -1), last_i.get(i, -1)) + 1
        last_u[u] = x
        last_i[i] = x
        tb[k] = x
    return tb


def _prev_same(key: np.ndarray) -> np.ndarray:
    """Index of the previous entry with the same key (or -1)."""
    order = np.argsort(key, kind="stable")
    prev = np.full(len(key), -1, np.int64)
    same = key[order][1:] == key[order][:-1]
    prev[order[1:][same]] = order[:-1][same]
    return prev


def _last_of(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct keys and the index of each one's last entry."""
    rev = key[::-1]
    uniq, first_rev = np.unique(rev, return_index=True)
    return uniq, len(key) - 1 - first_rev


@dataclass
class Plan:
    """One window's t-batches, laid out for a training loop.

    Events are ordered by t-batch, then time: position ``p`` is event ``order[p]`` (a global
    index) and t-batch ``k`` is positions ``bounds[k]:bounds[k+1]``. The states live in one table
    per window with ``width`` rows per position (row ``width*p`` is the user's state after the
    event at ``p``, row ``width*p + 1`` the item's, when items carry state), followed by the
    states at the window's start of ``init_users`` and then ``init_items``.
    ``read_user[p]`` (``read_item[p]``) is the row holding the state the event at ``p`` starts
    from.
    """

    order: np.ndarray
    bounds: np.ndarray
    tbatch: np.ndarray
    width: int
    read_user: np.ndarray
    read_item: np.ndarray | None
    init_users: np.ndarray
    init_items: np.ndarray
    final_users: np.ndarray
    final_user_rows: np.ndarray
    final_items: np.ndarray
    final_item_rows: np.ndarray

    @property
    def size(self) -> int:
        return len(self.order)


def plan_window(user: np.ndarray, item: np.ndarray, offset: int, item_state: bool) -> Plan:
    """The t-Batch plan of the events ``offset .. offset + len(user)`` of a stream."""
    m = len(user)
    tb = tbatch_ids(user, item if item_state else None)
    order = np.argsort(tb, kind="stable")
    pos = np.empty(m, np.int64)
    pos[order] = np.arange(m)
    n_tb = int(tb.max()) + 1
    bounds = np.searchsorted(tb[order], np.arange(n_tb + 1), side="left").astype(np.int64)
    width = 2 if item_state else 1
    init_users, u_inv = np.unique(user, return_inverse=True)
    prev_u = _prev_same(user)
    read_user = np.where(prev_u >= 0, width * pos[prev_u], width * m + u_inv)
    fu, fu_last = _last_of(user)
    read_item = None
    init_items = np.zeros(0, np.int64)
    fi = fi_rows = np.zeros(0, np.int64)
    if item_state:
        init_items, i_inv = np.unique(item, return_inverse=True)
        prev_i = _prev_same(item)
        read_item = np.where(prev_i >= 0, width * pos[prev_i] + 1,
                             width * m + len(init_users) + i_inv)[order]
        fi, fi_last = _last_of(item)
        fi_rows = width * pos[fi_last] + 1
    return Plan(
        order=order + offset,
        bounds=bounds,
        tbatch=tb[order],
        width=width,
        read_user=read_user[order],
        read_item=read_item,
        init_users=init_users.astype(np.int64),
        init_items=init_items.astype(np.int64),
        final_users=fu.astype(np.int64),
        final_user_rows=width * pos[fu_last],
        final_items=fi.astype(np.int64),
        final_item_rows=fi_rows.astype(np.int64),
    )

