"""What the LSTM and Time-LSTM baselines share: a recurrent cell stepped over each user's item
sequence, a dense output layer over all items, cross-entropy at every step, a state-change head,
mini-batch training on user-parallel lanes with truncated back-propagation, and exact streaming
evaluation in blocks.

A user's sequence of ``n`` training events ``(i_1, t_1) .. (i_n, t_n)`` is stepped as ``n + 1``
*cells*: cell ``m`` reads item ``x_m`` (``x_0`` is a start token, the extra row ``n_items`` of the
input table) and the elapsed time ``dt_m = t_{m+1} - t_m`` (0 for the start token, which has no
time), and its output ``h`` scores item ``i_{m+1}``. Cell ``n`` has no target in training: its
output read at ``dt = 0`` is the user's embedding after the last event, which the state head reads.

Between events a user's state is ``(h, c, x, t)``: the recurrent state entering the next cell,
the last item and its time. ``score`` steps the pending cell with ``dt = t_query - t`` and ranks
items by the output layer; ``observe`` steps the same cell with the event's time and makes the
event's item the pending input. A user never seen starts from ``h = c = 0`` at the start token.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from harness.api import Model, progress, resolve_device
from harness.errors import UsageError
from harness.interactions import Interactions

__all__ = ["RecurrentRecommender", "flat_cells", "plan_lanes"]

_F = TypeVar("_F", bound=Callable[..., Any])
_HEAD = 50  # hidden units of the state head, as JODIE's
Params = Mapping[str, torch.Tensor]


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def with_threads(method: _F) -> _F:
    """Run a model method with ``self.num_threads`` torch threads (restored afterwards)."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        with _threads(self.num_threads):
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def flat_cells(user: np.ndarray, item: np.ndarray, t: np.ndarray, label: np.ndarray,
               n_users: int, start: int) -> dict[str, np.ndarray]:
    """Every training user's cells, user after user (users without events have none).

    Returns ``offset`` and ``length`` per user (``length = n + 1`` cells for ``n`` events, 0 for
    none) and per cell: ``inp`` (the item read, ``start`` for the first cell), ``tgt`` (the next
    item, -1 for the last cell), ``dt`` (raw seconds to the next event, 0 for the first and last
    cells), ``label`` (state label of the event whose item is read, -1 for the first cell), ``gap``
    (True where ``dt`` is a real gap between two events).
    """
    order = np.argsort(user, kind="stable")  # time order within a user
    su, si, st, sl = user[order], item[order], t[order], label[order]
    counts = np.bincount(su, minlength=n_users)
    length = np.where(counts > 0, counts + 1, 0)
    offset = np.cumsum(length) - length
    total = int(length.sum())
    first = np.cumsum(counts) - counts  # sorted position of each user's first event
    m = np.arange(len(su)) - first[su] + 1  # 1-based position within the user
    cell = offset[su] + m
    inp = np.full(total, start, np.int64)
    tgt = np.full(total, -1, np.int64)
    dt = np.zeros(total, np.float64)
    lab = np.full(total, -1, np.int64)
    inp[cell] = si
    tgt[cell - 1] = si
    lab[cell] = sl
    same = np.flatnonzero(su[1:] == su[:-1])
    dt[cell[same]] = st[same + 1] - st[same]
    gap = np.zeros(total, bool)
    gap[cell[same]] = True
    return {"offset": offset, "length": length, "inp": inp, "tgt": tgt, "dt": dt, "label": lab,
            "gap": gap}


def plan_lanes(offset: np.ndarray, length: np.ndarray, lanes: int,
               rng: np.random.Generator) -> np.ndarray:
    """A ``(steps, lanes)`` grid of cell indices (-1: idle) that walks every user's cells in
    order, one user after another in each lane.

    Users go to lanes longest first, each to the least loaded lane (ties broken at random), so
    the grid is about ``max(total / lanes, longest user)`` steps long; then each lane's users are
    shuffled, so that an epoch does not see all long users first.
    """
    users = np.flatnonzero(length > 0)
    users = users[rng.permutation(len(users))]
    users = users[np.argsort(-length[users], kind="stable")]
    lanes = max(1, min(lanes, len(users)))
    heap = [(0, k) for k in range(lanes)]
    members: list[list[int]] = [[] for _ in range(lanes)]
    for u in users.tolist():
        load, k = heapq.heappop(heap)
        members[k].append(u)
        heapq.heappush(heap, (load + int(length[u]), k))
    steps = max(load for load, _ in heap)
    grid = np.full((steps, lanes), -1, np.int64)
    for k, group in enumerate(members):
        if not group:
            continue
        group_arr = np.asarray(group)[rng.permutation(len(group))]
        col = np.concatenate([np.arange(offset[u], offset[u] + length[u]) for u in group_arr])
        grid[: len(col), k] = col
    return grid


class RecurrentRecommender(Model):
    """Base of the per-user recurrent recommenders (see the module docstring).

    Subclasses define the cell: ``_x_gates`` and ``_h_gates`` (how many ``d``-wide blocks the
    input table and the recurrent matrix have), ``_extra_params`` (further parameters),
    ``_cell`` and, when the cell reads time, ``_time_aware = True`` and ``_scale_dt``.
    """

    capabilities: ClassVar[frozenset[str]] = frozenset({"rank", "state"})
    supports_blocks: ClassVar[bool] = True
    iterative: ClassVar[bool] = True
    default_epochs: ClassVar[int] = 50  # the JODIE paper trains every model 50 epochs

    _display: ClassVar[str] = "recurrent model"
    _x_gates: ClassVar[int] = 4
    _h_gates: ClassVar[int] = 4
    _time_aware: ClassVar[bool] = False

    # parameters every subclass has (set by the subclass constructors)
    embedding_size: int
    learning_rate: float
    batch_size: int
    bptt: int
    optimizer: str
    weight_decay: float
    state_loss_weight: float
    device: str
    num_threads: int | None

    # -- the cell (subclasses) ------------------------------------------------------------------

    def _extra_params(self, d: int, g: torch.Generator) -> dict[str, torch.Tensor]:
        return {}

    def _cell(self, xg: torch.Tensor, dt: torch.Tensor, h: torch.Tensor, c: torch.Tensor,
              p: Params) -> tuple[torch.Tensor, torch.Tensor]:
        """One step: ``xg`` is the input's rows of ``x_table`` plus ``b`` (``(B, gates * d)``),
        ``dt`` the scaled elapsed time ``(B, 1)``; returns the output ``h`` and the carried
        ``c``."""
        raise NotImplementedError

    def _scale_dt(self, dt: np.ndarray) -> np.ndarray:
        """Raw seconds to the cell's time input (time-aware cells only)."""
        return np.zeros_like(dt, dtype=np.float64)

    def _fit_time_scale(self, raw: np.ndarray) -> None:
        """Learn what ``_scale_dt`` needs from the training part's gaps."""

    def _after_step(self) -> None:
        """Called after every optimizer step (projections)."""

    def _check_extra(self) -> None:
        """Subclass parameter checks."""

    # -- parameters ---------------------------------------------------------------------------

    def _fail(self, name: str, rule: str) -> None:
        raise UsageError(
            f"{self._display}: {name} {rule}, but got {name}={getattr(self, name)!r}"
        )

    def _check_params(self) -> None:
        for name in ("embedding_size", "batch_size", "bptt"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                self._fail(name, "must be an integer >= 1")
        for name in ("learning_rate", "weight_decay", "state_loss_weight"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                self._fail(name, "must be a finite number >= 0")
        if not self.learning_rate > 0:
            self._fail("learning_rate", "must be > 0")
        if self.optimizer not in ("adam", "adagrad"):
            self._fail("optimizer", "must be 'adam' or 'adagrad'")
        self._check_extra()

    # -- set-up ---------------------------------------------------------------------------------

    def _build(self, n_items: int, seed: int) -> nn.Module:
        d = self.embedding_size
        g = torch.Generator().manual_seed(int(seed))
        bound = 1.0 / math.sqrt(d)

        def uniform(*shape: int, b: float = bound) -> torch.Tensor:
            return (torch.rand(*shape, generator=g) * 2 - 1) * b

        # torch's LSTM initialisation (uniform in +-1/sqrt(d)) for the recurrent part and
        # nn.Linear's (+-1/sqrt(fan_in)) for the output layer and the state head.
        params = {
            "x_table": uniform(n_items + 1, self._x_gates * d),  # one-hot input weights + start
            "b": uniform(self._x_gates * d),
            "w_h": uniform(d, self._h_gates * d),
            "out_w": uniform(n_items, d),
            "out_b": uniform(n_items),
            "head1_w": uniform(_HEAD, d),
            "head1_b": uniform(_HEAD),
            "head2_w": uniform(2, _HEAD, b=1.0 / math.sqrt(_HEAD)),
            "head2_b": uniform(2, b=1.0 / math.sqrt(_HEAD)),
        }
        params.update(self._extra_params(d, g))
        net = nn.Module()
        for name, value in params.items():
            net.register_parameter(name, nn.Parameter(value.to(self._dev)))
        return net

    @with_threads
    def fit(self, train: Interactions, *, seed: int = 0) -> None:
        """Build the network (seeded) and every training user's cells; users' states start
        from the training sequences once an epoch has run (or from scratch without one)."""
        self._check_params()
        if len(train) == 0:
            raise UsageError(f"{self._display} needs at least one training event, but the "
                             "training part is empty")
        self._dev = resolve_device(self.device)
        self._n_users, self._n_items = train.n_users, train.n_items
        user = np.asarray(train.user, np.int64)
        cells = flat_cells(user, np.asarray(train.item, np.int64), np.asarray(train.t, np.float64),
                           np.asarray(train.label, np.int64), train.n_users, train.n_items)
        self._fit_time_scale(cells["dt"][cells["gap"]])
        self._cells = cells
        dev = self._dev
        self._inp = torch.as_tensor(cells["inp"], device=dev)
        self._tgt = torch.as_tensor(cells["tgt"], device=dev)
        self._dtc = torch.as_tensor(self._scale_dt(cells["dt"]), dtype=torch.float32, device=dev)
        self._lab = torch.as_tensor(cells["label"], device=dev)
        positives = int(np.asarray(train.label).sum())
        self._use_state = self.state_loss_weight > 0 and positives > 0
        # JODIE's weighting of the state-change cross-entropy: 1 for label 0, n / (1 + positives)
        # for label 1, a weighted mean over the mini-batch.
        self._class_weight = torch.tensor([1.0, len(train) / (1.0 + positives)], device=dev)
        self._net = self._build(train.n_items, seed)
        params = list(self._net.parameters())
        if self.optimizer == "adam":
            self._opt: torch.optim.Optimizer = torch.optim.Adam(
                params, lr=self.learning_rate, weight_decay=self.weight_decay)
        else:
            self._opt = torch.optim.Adagrad(params, lr=self.learning_rate,
                                            weight_decay=self.weight_decay)
        self._after_step()
        self._rng = np.random.default_rng(int(seed))
        self._epochs = 0
        self._p64: dict[str, torch.Tensor] | None = None
        last_t = np.full(self._n_users, np.nan)
        last_t[user] = np.asarray(train.t, np.float64)
        pending = np.full(self._n_users, self._n_items, np.int64)
        pending[user] = np.asarray(train.item, np.int64)
        self._train_end = (last_t, pending)
        self._refresh_states()
        self.fit_report = {
            "train_users": int((cells["length"] > 0).sum()),
            "cells": len(cells["inp"]),
            "longest_user_events": int(cells["length"].max()) - 1,
        }

    # -- training -------------------------------------------------------------------------------

    def _p32(self) -> dict[str, torch.Tensor]:
        return dict(self._net.named_parameters())

    @with_threads
    def train_epoch(self) -> dict[str, float]:
        """One pass over every training user's cells in user-parallel lanes: windows of ``bptt``
        steps, one optimizer step per window on the mean cross-entropy of the window's cells
        (plus the weighted state loss), the state carried (detached) into the next window. Then
        every user's state is recomputed with the epoch's final parameters."""
        if not hasattr(self, "_net"):
            raise UsageError(f"{self._display}.train_epoch() was called before fit()")
        out = self._epoch(update=True)
        self._epochs += 1
        self.fit_report.update(lanes=out["lanes"], lane_steps=out["grid_steps"],
                               optimizer_steps=-(-out["grid_steps"] // self.bptt))
        self._refresh_states()
        return out["losses"]

    def _epoch(self, update: bool, collect: bool = False) -> dict[str, Any]:
        """One pass over the lanes; ``collect`` also returns every cell's cross-entropy (in flat
        cell order, NaN for cells without a target) and state loss terms."""
        cells, dev, d = self._cells, self._dev, self.embedding_size
        grid = plan_lanes(cells["offset"], cells["length"], self.batch_size, self._rng)
        steps, lanes = grid.shape
        live = grid >= 0
        safe = torch.as_tensor(np.where(live, grid, 0), device=dev)
        inp_g = torch.where(torch.as_tensor(live, device=dev), self._inp[safe],
                            torch.full_like(safe, self._n_items))
        dt_g = self._dtc[safe] * torch.as_tensor(live, device=dev)
        first = np.zeros(len(cells["inp"]), bool)
        first[cells["offset"][cells["length"] > 0]] = True
        keep_g = torch.as_tensor(live & ~first[np.where(live, grid, 0)], dtype=torch.float32,
                                 device=dev)
        tgt_np = np.where(live, cells["tgt"][np.where(live, grid, 0)], -1)
        lab_np = np.where(live, cells["label"][np.where(live, grid, 0)], -1)
        ce_all = np.full(len(cells["inp"]), np.nan) if collect else None
        h = torch.zeros(lanes, d, device=dev)
        c = torch.zeros(lanes, d, device=dev)
        totals = {"loss": 0.0, "cross_entropy": 0.0, "state": 0.0}
        n_targets = 0
        need_in = self._use_state and self._time_aware
        ctx = contextlib.nullcontext() if update else torch.no_grad()
        with ctx:
            for s in progress(range(0, steps, self.bptt), unit="window"):
                e = min(s + self.bptt, steps)
                p = self._p32()
                xg = F.embedding(inp_g[s:e], p["x_table"]) + p["b"]
                dt, keep = dt_g[s:e, :, None], keep_g[s:e, :, None]
                outs, h_in, c_in = [], [], []
                for k in range(e - s):
                    h, c = h * keep[k], c * keep[k]
                    if need_in:
                        h_in.append(h)
                        c_in.append(c)
                    h, c = self._cell(xg[k], dt[k], h, c, p)
                    outs.append(h)
                hs = torch.stack(outs).reshape(-1, d)
                tg = tgt_np[s:e].reshape(-1)
                sel = np.flatnonzero(tg >= 0)
                loss = torch.zeros((), device=dev)
                if sel.size:
                    sel_t = torch.as_tensor(sel, device=dev)
                    logits = F.linear(hs[sel_t], p["out_w"], p["out_b"])
                    ce = F.cross_entropy(logits, torch.as_tensor(tg[sel], device=dev),
                                         reduction="none")
                    loss = ce.mean()
                    totals["cross_entropy"] += float(ce.detach().sum())
                    n_targets += sel.size
                    if ce_all is not None:
                        ce_all[grid[s:e].reshape(-1)[sel]] = ce.detach().cpu().numpy()
                lab = lab_np[s:e].reshape(-1)
                lsel = np.flatnonzero(lab >= 0)
                if self._use_state and lsel.size:
                    lsel_t = torch.as_tensor(lsel, device=dev)
                    if need_in:
                        zero = torch.as_tensor(self._scale_dt(np.zeros(lsel.size)),
                                               dtype=torch.float32, device=dev)[:, None]
                        emb, _ = self._cell(xg.reshape(-1, xg.shape[-1])[lsel_t], zero,
                                            torch.stack(h_in).reshape(-1, d)[lsel_t],
                                            torch.stack(c_in).reshape(-1, d)[lsel_t], p)
                    else:
                        emb = hs[lsel_t]
                    y = torch.as_tensor(lab[lsel], device=dev)
                    nll = F.cross_entropy(self._head(emb, p), y, reduction="none")
                    w = self._class_weight[y]
                    l_state = self.state_loss_weight * (w * nll).sum() / w.sum()
                    loss = loss + l_state
                    totals["state"] += float(l_state.detach())
                totals["loss"] += float(loss.detach())
                if update and loss.requires_grad:
                    self._opt.zero_grad(set_to_none=True)
                    loss.backward()
                    self._opt.step()
                    self._after_step()
                h, c = h.detach(), c.detach()
        self._p64 = None
        totals["cross_entropy_per_event"] = totals["cross_entropy"] / max(n_targets, 1)
        return {"losses": totals, "ce": ce_all, "grid_steps": steps, "lanes": lanes}

    def training_cross_entropy(self) -> np.ndarray:
        """Every training cell's cross-entropy under the current parameters, computed with the
        mini-batch machinery but without updating anything (flat cell order; NaN for cells
        without a target). For tests."""
        state = self._rng.bit_generator.state
        out = self._epoch(update=False, collect=True)["ce"]
        self._rng.bit_generator.state = state
        return out

    @staticmethod
    def _head(h: torch.Tensor, p: Params) -> torch.Tensor:
        """JODIE's state head: Linear(d, 50), ReLU, Linear(50, 2)."""
        return F.linear(F.relu(F.linear(h, p["head1_w"], p["head1_b"])), p["head2_w"],
                        p["head2_b"])

    @torch.no_grad()
    def _refresh_states(self) -> None:
        """Every training user's state after their last training event, with the current
        parameters: the cells before the last one stepped in one batch of users sorted by
        length (a shrinking prefix is active at each step)."""
        cells, dev, d = self._cells, self._dev, self.embedding_size
        nu = self._n_users
        self._h = torch.zeros(nu, d, device=dev)
        self._c = torch.zeros(nu, d, device=dev)
        last_t, pending = self._train_end
        self._last_t, self._x = last_t.copy(), pending.copy()
        steps_of = cells["length"] - 1  # cells 0 .. n-1 are stepped; the last one is pending
        users = np.flatnonzero(steps_of > 0)
        users = users[np.argsort(-steps_of[users], kind="stable")]
        if not users.size:
            return
        n_steps = steps_of[users]
        active = np.searchsorted(-n_steps, -np.arange(int(n_steps[0])), side="left")  # n > s
        off = torch.as_tensor(cells["offset"][users], device=dev)
        p = self._p32()
        h = torch.zeros(len(users), d, device=dev)
        c = torch.zeros(len(users), d, device=dev)
        for s in range(int(n_steps[0])):
            a = int(active[s])
            idx = off[:a] + s
            xg = F.embedding(self._inp[idx], p["x_table"]) + p["b"]
            h[:a], c[:a] = self._cell(xg, self._dtc[idx][:, None], h[:a], c[:a], p)
        u = torch.as_tensor(users, device=dev)
        self._h[u], self._c[u] = h, c

    # -- evaluation -----------------------------------------------------------------------------
    # Frozen evaluation computes in float64 from the float32 parameters and states and rounds
    # every stored state and score to float32, so that a row's numbers do not depend on how many
    # rows its matrix products had (block or one event at a time).

    def _params64(self) -> dict[str, torch.Tensor]:
        if self._p64 is None:
            self._p64 = {n: q.detach().double() for n, q in self._net.named_parameters()}
        return self._p64

    def _check_block(self, block: Interactions) -> None:
        if not hasattr(self, "_net"):
            raise UsageError(f"{self._display} was asked to predict before fit()")
        if block.n_users > self._n_users or block.n_items > self._n_items:
            raise UsageError(
                f"the block has {block.n_users} users and {block.n_items} items, more than the "
                f"{self._n_users} users and {self._n_items} items {self._display} was fitted with"
            )

    def _pending_step(self, users: np.ndarray, t: np.ndarray | None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """The users' pending cell at times ``t`` (``None``: at the time of their last event)."""
        dev = self._dev
        p = self._params64()
        u = torch.as_tensor(users, device=dev)
        x = torch.as_tensor(self._x[users], device=dev)
        if t is None:
            raw = np.zeros(len(users))
        else:
            last = self._last_t[users]
            raw = np.where(np.isnan(last), 0.0, t - np.nan_to_num(last))
        dt = torch.as_tensor(self._scale_dt(raw), dtype=torch.float64, device=dev)[:, None]
        xg = F.embedding(x, p["x_table"]) + p["b"]
        return self._cell(xg, dt, self._h[u].double(), self._c[u].double(), p)

    @with_threads
    def score(self, block: Interactions) -> np.ndarray:
        """Logits of every item from each user's pending cell at the event's time. Row ``j``
        uses only user ``j``'s state and ``t[j]`` (users are distinct within a block)."""
        self._check_block(block)
        with torch.no_grad():
            users = np.array(block.user, np.int64)
            h, _ = self._pending_step(users, np.array(block.t, np.float64))
            h = h.float().double()
            p = self._params64()
            return F.linear(h, p["out_w"], p["out_b"]).float().cpu().numpy()

    @with_threads
    def observe(self, block: Interactions) -> None:
        """Step each user's pending cell with the event's time; the event's item becomes the
        pending input (parameters stay frozen)."""
        self._check_block(block)
        users = np.array(block.user, np.int64)
        t = np.array(block.t, np.float64)
        with torch.no_grad():
            h, c = self._pending_step(users, t)
            u = torch.as_tensor(users, device=self._dev)
            self._h[u], self._c[u] = h.float(), c.float()
        self._x[users] = np.array(block.item, np.int64)
        self._last_t[users] = t

    @with_threads
    def predict_state(self, block: Interactions) -> np.ndarray:
        """Probability of state label 1 from each user's embedding after the event: the output
        of the pending cell (which reads the event's item) at ``dt = 0``."""
        self._check_block(block)
        with torch.no_grad():
            h, _ = self._pending_step(np.array(block.user, np.int64), None)
            logits = self._head(h.float().double(), self._params64())
            return torch.softmax(logits, 1)[:, 1].float().cpu().numpy()
