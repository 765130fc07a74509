"""Time differences, time windows and t-Batch plans (numpy, computed once in ``fit``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Window", "plan_windows", "time_deltas", "window_bounds"]


def time_deltas(
    user: np.ndarray, item: np.ndarray, t: np.ndarray, n_items: int, first: float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per event: seconds since the user's previous event, since the item's previous event, and
    the user's previous item (``n_items``, the "none" item, for a first one). A node's first event
    gets ``t - first`` (the authors' code: ``first`` is the stream's first time ``t0``), or 0 when
    ``first`` is None."""
    n = len(user)
    dt_user = np.zeros(n) if first is None else t - first
    dt_item = dt_user.copy()
    prev_item = np.full(n, n_items, np.int64)
    for key, dt in ((user, dt_user), (item, dt_item)):
        order = np.argsort(key, kind="stable")
        same = key[order][1:] == key[order][:-1]
        later, earlier = order[1:][same], order[:-1][same]
        dt[later] = t[later] - t[earlier]
        if dt is dt_user:
            prev_item[later] = item[earlier]
    return dt_user, dt_item, prev_item


def window_bounds(t: np.ndarray, windows: int, span: float | None = None) -> list[tuple[int, int]]:
    """Cut a stream into time windows as the JODIE code does: a window starts at ``start`` and
    closes with the first event later than ``start + span`` (that event included); the next
    window's ``start`` is that event's time. ``span`` is the stream's duration over ``windows``.
    The final partial window is kept (the JODIE code drops it). A given ``span`` replaces the
    stream's own (the JODIE code divides the whole stream's duration, evaluation part included)."""
    n = len(t)
    if n == 0:
        return []
    if span is None:
        span = (t[-1] - t[0]) / windows
    out: list[tuple[int, int]] = []
    cur, start = 0, t[0]
    while cur < n:
        j = int(np.searchsorted(t, start + span, side="right"))
        if j >= n:
            out.append((cur, n))
            break
        j = max(j, cur)
        out.append((cur, j + 1))
        start, cur = t[j], j + 1
    return out


@dataclass
class Window:
    """One window's t-batches, laid out for the training loop.

    Events are ordered by t-batch, then time (``order``, global indices); t-batch ``k`` is
    positions ``bounds[k]:bounds[k+1]``. States live in one table per window ("ext"): row ``2p``
    is the user state after the event at position ``p``, row ``2p+1`` the item state; rows from
    ``2m`` on are the states at the window's start of ``init_users`` then ``init_items``.
    ``reads[p]`` are the ext rows of the event's user input, item input and previous-item input.
    """

    order: np.ndarray
    bounds: np.ndarray
    tbatch: np.ndarray
    reads: np.ndarray
    init_users: np.ndarray
    init_items: np.ndarray
    final_users: np.ndarray
    final_user_rows: np.ndarray
    final_items: np.ndarray
    final_item_rows: np.ndarray

    @property
    def size(self) -> int:
        return len(self.order)


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


def _plan(user: np.ndarray, item: np.ndarray, prev_item: np.ndarray, offset: int) -> Window:
    m = len(user)
    tb = np.empty(m, np.int64)
    last_u: dict[int, int] = {}
    last_i: dict[int, int] = {}
    for k, (u, i) in enumerate(zip(user.tolist(), item.tolist())):
        x = max(last_u.get(u, -1), last_i.get(i, -1)) + 1
        last_u[u] = x
        last_i[i] = x
        tb[k] = x
    order = np.argsort(tb, kind="stable")
    pos = np.empty(m, np.int64)
    pos[order] = np.arange(m)
    n_tb = int(tb.max()) + 1
    bounds = np.searchsorted(tb[order], np.arange(n_tb + 1), side="left").astype(np.int64)

    prev_u, prev_i = _prev_same(user), _prev_same(item)
    # The previous item is read as the JODIE code reads it: its state after the t-batches
    # processed so far in the window (its last event with a smaller t-batch), else the start state.
    big = n_tb + 1
    keys = item.astype(np.int64) * big + tb
    key_order = np.argsort(keys, kind="stable")
    sorted_keys = keys[key_order]
    c = np.searchsorted(sorted_keys, prev_item * big + tb, side="left") - 1
    cand = key_order[np.clip(c, 0, m - 1)]
    src_p = np.where((c >= 0) & (item[cand] == prev_item), cand, -1)

    init_users, u_inv = np.unique(user, return_inverse=True)
    need_items = np.concatenate([item[prev_i < 0], prev_item[src_p < 0]])
    init_items = np.unique(need_items)
    base_u, base_i = 2 * m, 2 * m + len(init_users)
    reads = np.empty((m, 3), np.int64)
    reads[:, 0] = np.where(prev_u >= 0, 2 * pos[prev_u], base_u + u_inv)
    reads[:, 1] = np.where(prev_i >= 0, 2 * pos[prev_i] + 1,
                           base_i + np.searchsorted(init_items, item))
    reads[:, 2] = np.where(src_p >= 0, 2 * pos[src_p] + 1,
                           base_i + np.searchsorted(init_items, prev_item))
    fu, fu_last = _last_of(user)
    fi, fi_last = _last_of(item)
    return Window(
        order=order + offset,
        bounds=bounds,
        tbatch=tb[order],
        reads=reads[order],
        init_users=init_users.astype(np.int64),
        init_items=init_items.astype(np.int64),
        final_users=fu.astype(np.int64),
        final_user_rows=2 * pos[fu_last],
        final_items=fi.astype(np.int64),
        final_item_rows=2 * pos[fi_last] + 1,
    )


def plan_windows(
    user: np.ndarray, item: np.ndarray, t: np.ndarray, prev_item: np.ndarray, windows: int,
    span: float | None = None,
) -> list[Window]:
    """t-Batch plans of the training stream, one per time window (of ``span`` seconds, by
    default the stream's duration over ``windows``)."""
    return [
        _plan(user[a:b], item[a:b], prev_item[a:b], a) for a, b in window_bounds(t, windows, span)
    ]
