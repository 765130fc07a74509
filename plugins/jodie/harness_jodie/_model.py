"""JODIE (Kumar, Zhang, Leskovec, KDD 2019) as a harness model."""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from harness.api import Model, progress, resolve_device
from harness.errors import UsageError
from harness.interactions import Interactions
from harness_jodie._optim import StaticAdam
from harness_jodie._tbatch import Window, plan_windows, time_deltas

__all__ = ["JODIE"]

_F = TypeVar("_F", bound=Callable[..., Any])


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _with_threads(method: _F) -> _F:
    """Run a model method with ``self.num_threads`` torch threads (restored afterwards)."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        with _threads(self.num_threads):
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]

#: One-hot static embeddings need a prediction layer of (d + items + 1) x (users + items + 1)
#: weights; above this many the model asks for ``static_size`` (fixed random codes) instead.
MAX_ONE_HOT_WEIGHTS = 200_000_000


class _Net(nn.Module):
    """The parameters. The prediction layer is stored in blocks: the one-hot static inputs are
    tables whose rows are the columns the one-hot product would select."""

    def __init__(self, d: int, n_users: int, n_items: int, n_features: int, static_size: int | None,
                 generator: torch.Generator) -> None:
        super().__init__()
        self.d = d
        g = generator
        self.init_user = nn.Parameter(F.normalize(torch.rand(d, generator=g), dim=0))
        self.init_item = nn.Parameter(F.normalize(torch.rand(d, generator=g), dim=0))
        rnn_in = d + 1 + n_features
        bound = 1.0 / math.sqrt(d)

        def uniform(*shape: int, b: float) -> nn.Parameter:
            return nn.Parameter((torch.rand(*shape, generator=g) * 2 - 1) * b)

        # nn.RNNCell's shapes and initialisation (tanh cell, as the authors' code uses).
        self.user_w_ih, self.user_w_hh = uniform(d, rnn_in, b=bound), uniform(d, d, b=bound)
        self.user_b_ih, self.user_b_hh = uniform(d, b=bound), uniform(d, b=bound)
        self.item_w_ih, self.item_w_hh = uniform(d, rnn_in, b=bound), uniform(d, d, b=bound)
        self.item_b_ih, self.item_b_hh = uniform(d, b=bound), uniform(d, b=bound)
        # Projection layer 1 -> d, initialised N(0, 1) as the authors' NormalLinear.
        self.proj_w = nn.Parameter(torch.randn(d, generator=g))
        self.proj_b = nn.Parameter(torch.randn(d, generator=g))
        n_static_out = n_items + 1 if static_size is None else static_size
        out = d + n_static_out
        fan_in = 2 * d + (n_users + n_items + 1 if static_size is None else 2 * static_size)
        pb = 1.0 / math.sqrt(fan_in)
        self.pred_user = uniform(out, d, b=pb)
        self.pred_item = uniform(out, d, b=pb)
        self.pred_b = uniform(out, b=pb)
        if static_size is None:
            self.static_user = uniform(n_users, out, b=pb)
            self.static_item = uniform(n_items + 1, out, b=pb)
        else:
            self.static_user_w = uniform(out, static_size, b=pb)
            self.static_item_w = uniform(out, static_size, b=pb)
            self.register_buffer("code_user", F.normalize(
                torch.randn(n_users, static_size, generator=g), dim=1))
            self.register_buffer("code_item", F.normalize(
                torch.randn(n_items + 1, static_size, generator=g), dim=1))
        self.head1_w, self.head1_b = uniform(50, d, b=bound), uniform(50, b=bound)
        hb = 1.0 / math.sqrt(50)
        self.head2_w, self.head2_b = uniform(2, 50, b=hb), uniform(2, b=hb)

    def dense_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if n not in ("static_user", "static_item")]


class JODIE(Model):
    """JODIE: static one-hot and dynamic embeddings of users and items, a coupled user/item RNN
    update at every interaction, the projection ``u * (1 + W dt)`` and a prediction layer that
    outputs the next item's ``[dynamic, static]`` embedding; items are ranked by L2 distance.

    Trained with t-Batch inside ``windows`` time windows (one Adam step per window, as the authors
    run it, the final partial window included). Evaluation is exact in blocks: every row of a
    block is the score one-at-a-time evaluation gives.

    Parameters
    ----------
    embedding_size: dimension of the dynamic embeddings.
    learning_rate, weight_decay: Adam's (weight decay as L2 in the gradient, torch's Adam). The
        optimizer is the authors' ``torch.optim.Adam`` over every parameter, the one-hot static
        weights of the prediction layer included: those are updated lazily but exactly (a row
        untouched for ``k`` steps is caught up by replaying its ``k`` zero-gradient steps, momentum
        and weight decay included, when it is next read and at the end of every epoch), so the
        parameters are those of dense Adam (see ``harness_jodie._optim``). Dense parameters
        without a gradient in a window (the learned initial vectors after the first window) skip
        that step, as ``zero_grad()`` leaves them in the authors' code on current torch.
    windows: number of equal time windows the training stream is cut into.
    state_loss_weight: weight of the state-change cross-entropy (used when training has labels).
    static_size: ``None`` for one-hot static embeddings (the paper's); an integer for fixed random
        unit codes of that size instead, for catalogues where the one-hot layer is too large.
    lazy_static: ``True`` switches the one-hot static weights to the earlier approximation: only
        rows with a gradient take an Adam step (global-step bias correction), untouched rows keep
        their momentum unapplied and no weight decay. Faster by a few seconds per Wikipedia epoch
        but a different optimizer from the authors' (valid MRR after one Wikipedia epoch 0.305
        against 0.38-0.39); kept for comparison only. Default ``False``: the authors' dense Adam.
    first_delta: time difference of a node's first event. ``"since_start"`` (default, the
        authors'): seconds since the first event of the stream ``t0`` (their loader shifts the
        stream to start at 0 and reads a missing previous time as 0); ``"zero"``: 0. Differences
        are standardized as ``dt_statistics`` says.
    dt_statistics: ``"train"`` (default): time differences are standardised with the mean and
        std of the training part's differences. ``"stream"`` (the authors'): with those of the
        whole stream, evaluation part included; this needs the evaluator's summary of the whole
        stream, which it hands over only under ``harness run --preset jodie``.
    window_span: ``"train"`` (default): the ``windows`` time windows divide the training part's
        duration. ``"stream"`` (the authors'): they divide the whole stream's duration (fewer,
        equally long windows over the training part; needs the preset's summary, as above). The
        span also paces the optimizer steps of ``online_updates``.
    online_updates: keep training on evaluation events (the authors' protocol): loss accumulated
        per event and one Adam step per window of time. An event's state probability is read
        before the step that puts its label in the loss.
    device: torch device: ``auto`` (a GPU when torch sees one), ``cpu``, ``cuda`` or ``cuda:N``.
    num_threads: torch threads while the model works (``None``: leave torch's setting). Its
        operations are small (a t-batch is tens of rows), so one thread is fastest on a busy
        two-core machine.
    """

    capabilities: ClassVar[frozenset[str]] = frozenset({"rank", "state"})
    supports_blocks: ClassVar[bool] = True
    iterative: ClassVar[bool] = True
    default_epochs: ClassVar[int] = 50

    def __init__(
        self,
        embedding_size: int = 128,
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-5,
        windows: int = 500,
        state_loss_weight: float = 1.0,
        static_size: int | None = None,
        lazy_static: bool = False,
        first_delta: str = "since_start",
        dt_statistics: str = "train",
        window_span: str = "train",
        online_updates: bool = False,
        device: str = "auto",
        num_threads: int | None = 1,
    ) -> None:
        self.embedding_size = embedding_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.windows = windows
        self.state_loss_weight = state_loss_weight
        self.static_size = static_size
        self.lazy_static = lazy_static
        self.first_delta = first_delta
        self.dt_statistics = dt_statistics
        self.window_span = window_span
        self.online_updates = online_updates
        self.device = device
        self.num_threads = num_threads

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        return {
            "embedding_size": trial.suggest_categorical("embedding_size", [32, 64, 128, 256]),
            "learning_rate": trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True),
            "weight_decay": trial.suggest_float("weight_decay", 1e-7, 1e-3, log=True),
            "windows": trial.suggest_categorical("windows", [100, 250, 500, 1000, 2000]),
        }

    # -- set-up ---------------------------------------------------------------------------------

    def _check_params(self) -> None:
        for name in ("embedding_size", "windows"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise UsageError(f"JODIE {name} must be a positive integer, but got {value!r}")
        for name in ("learning_rate", "weight_decay", "state_loss_weight"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0 or not math.isfinite(value):
                raise UsageError(f"JODIE {name} must be a finite number >= 0, but got {value!r}")
        if self.first_delta not in ("since_start", "zero"):
            raise UsageError(
                f"JODIE first_delta must be 'since_start' or 'zero', but got {self.first_delta!r}"
            )
        for name in ("dt_statistics", "window_span"):
            if getattr(self, name) not in ("train", "stream"):
                raise UsageError(
                    f"JODIE {name} must be 'train' or 'stream', but got {getattr(self, name)!r}"
                )
        if "stream" in (self.dt_statistics, self.window_span) and self._summary() is None:
            which = "dt_statistics" if self.dt_statistics == "stream" else "window_span"
            raise UsageError(
                f"JODIE {which}='stream' needs the whole stream's summary statistics, which the "
                "evaluator hands over only under `harness run --preset jodie` (protocol "
                f"stream_summary=true); use {which}='train' otherwise"
            )
        if self.static_size is not None and (
            not isinstance(self.static_size, (int, np.integer)) or self.static_size < 1
        ):
            raise UsageError(
                f"JODIE static_size must be None (one-hot) or a positive integer, "
                f"but got {self.static_size!r}"
            )

    def use_stream_summary(self, summary: dict[str, Any]) -> None:
        """Keep the whole stream's summary for ``dt_statistics``/``window_span`` ``"stream"``."""
        self._stream_summary = dict(summary)

    def _summary(self) -> dict[str, Any] | None:
        return getattr(self, "_stream_summary", None)

    def _stream_dt_stats(self, summary: dict[str, Any]) -> tuple[float, ...]:
        """Mean and std of ``dt + 1`` over the whole stream, users then items, pooled from the
        summary's gaps and first-event offsets (0 for ``first_delta="zero"``)."""
        out: list[float] = []
        for node in ("user", "item"):
            gap, first = summary[f"{node}_gap"], dict(summary[f"{node}_first"])
            if self.first_delta == "zero":
                first.update(mean=0.0, std=0.0)
            n = gap["count"] + first["count"]
            mean = (gap["count"] * gap["mean"] + first["count"] * first["mean"]) / n
            square = (gap["count"] * (gap["std"] ** 2 + gap["mean"] ** 2)
                      + first["count"] * (first["std"] ** 2 + first["mean"] ** 2)) / n
            std = math.sqrt(max(square - mean**2, 0.0))
            out += [mean + 1.0, std if std > 0 else 1.0]
        return tuple(out)

    @_with_threads
    def fit(self, train: Interactions, *, seed: int = 0) -> None:
        """Build the network (seeded), the time differences and the t-Batch plans of ``train``."""
        self._check_params()
        if len(train) == 0:
            raise UsageError("JODIE needs at least one training event, but the training part is empty")
        d, nu, ni, nf = self.embedding_size, train.n_users, train.n_items, train.n_features
        if self.static_size is None:
            weights = (d + ni + 1) * (nu + ni + 1 + 2 * d)
            if weights > MAX_ONE_HOT_WEIGHTS:
                raise UsageError(
                    f"one-hot static embeddings for {nu:,} users and {ni:,} items need a prediction "
                    f"layer of {weights:,} weights ({weights * 4 / 2**30:.1f} GiB, about three "
                    "times that while training); pass static_size=128 (fixed random codes) instead"
                )
        self._dev = resolve_device(self.device)
        self._n_users, self._n_items, self._n_features = nu, ni, nf
        user, item, t = train.user.astype(np.int64), train.item.astype(np.int64), train.t
        self._t0 = float(t[0]) if self.first_delta == "since_start" else None
        dt_u, dt_i, prev = time_deltas(user, item, t, ni, first=self._t0)
        summary = self._summary()
        if self.dt_statistics == "stream":
            assert summary is not None
            self._dt_stats = self._stream_dt_stats(summary)
        else:
            self._dt_stats = tuple(
                float(v) for x in (dt_u + 1, dt_i + 1)
                for v in (x.mean(), x.std() if x.std() > 0 else 1)
            )
        if self.window_span == "stream":
            assert summary is not None
            self._span = (summary["t_end"] - summary["t_start"]) / self.windows
        else:
            self._span = (t[-1] - t[0]) / self.windows
        plans = plan_windows(user, item, t, prev, self.windows, self._span)
        dev = self._dev
        as_long = lambda a: torch.tensor(a, dtype=torch.long, device=dev)  # noqa: E731
        self._train_user_np = user
        self._user_t = as_long(user)
        self._plans = [self._plan_tensors(p, prev, as_long) for p in plans]
        dts = np.stack([self._standardize(dt_u, 0), self._standardize(dt_i, 1)], axis=1)
        self._dt = torch.as_tensor(dts, dtype=torch.float32, device=dev)
        self._features = torch.tensor(train.features, dtype=torch.float32, device=dev)
        self._item = as_long(item)
        self._label = as_long(train.label)
        positives = int(train.label.sum())
        self._use_state = self.state_loss_weight > 0 and positives > 0
        self._class_weight = torch.tensor([1.0, len(train) / (1.0 + positives)], device=dev)
        gen = torch.Generator().manual_seed(int(seed))
        self._net = _Net(d, nu, ni, nf, self.static_size, gen).to(dev)
        # torch's fused Adam: the same update as the default one in one kernel (1-2 s less per
        # Wikipedia epoch than a loop over the 20 small parameters).
        self._opt = torch.optim.Adam(self._net.dense_parameters(), lr=self.learning_rate,
                                     weight_decay=self.weight_decay,
                                     fused=True if self._dev.type in ("cpu", "cuda") else None)
        self._static: StaticAdam | None = None
        if self.static_size is None:
            self._static = StaticAdam(
                {"static_user": self._net.static_user, "static_item": self._net.static_item},
                self.learning_rate, self.weight_decay,
                mode="sparse" if self.lazy_static else "exact")
        # State at the end of the training stream (times and previous items are known from it).
        last_u = np.full(nu, np.nan)
        last_u[user] = t
        last_i = np.full(ni, np.nan)
        last_i[item] = t
        prev_item = np.full(nu, ni, np.int64)
        prev_item[user] = item
        self._train_end = (last_u, last_i, prev_item)
        self._reset_state()
        self._epochs = 0
        self.fit_report = {
            "static": "one-hot" if self.static_size is None else f"codes({self.static_size})",
            "windows": len(plans),
            "tbatches": int(sum(len(p.bounds) - 1 for p in plans)),
            "final_window_events": int(plans[-1].size),
            "note": "the final partial window is trained on (the authors' code drops it)",
            "first_delta": self.first_delta,
            "dt_statistics": self.dt_statistics,
            "dt_mean_std": {"user": list(self._dt_stats[:2]), "item": list(self._dt_stats[2:])},
            "window_span": self.window_span,
            "window_span_seconds": self._span,
            **(self._static.describe() if self._static is not None else {}),
        }

    def _plan_tensors(self, p: Window, prev: np.ndarray, as_long: Any) -> dict[str, Any]:
        sizes = np.diff(p.bounds)
        s_items, s_inv = np.unique(prev[p.order], return_inverse=True)
        return {
            "order": as_long(p.order),
            "bounds": p.bounds.tolist(),
            "tbatch": as_long(p.tbatch),
            "n_tbatches": len(sizes),
            "inv_size": torch.as_tensor(1.0 / sizes[p.tbatch], dtype=torch.float32,
                                        device=self._dev),
            "reads": as_long(p.reads),
            "reads_ui": as_long(p.reads[:, :2].reshape(-1)),
            "init_users": as_long(p.init_users),
            "init_items": as_long(p.init_items),
            "user_inv": as_long(np.searchsorted(p.init_users, self._users_of(p))),
            "prev_items": as_long(s_items),
            "prev_inv": as_long(s_inv),
            "prev": as_long(prev[p.order]),
            "final_users": as_long(p.final_users),
            "final_user_rows": as_long(p.final_user_rows),
            "final_items": as_long(p.final_items),
            "final_item_rows": as_long(p.final_item_rows),
        }

    def _users_of(self, p: Window) -> np.ndarray:
        return self._train_user_np[p.order]

    def _standardize(self, dt: np.ndarray, which: int) -> np.ndarray:
        mu, sd = self._dt_stats[2 * which], self._dt_stats[2 * which + 1]
        return (dt + 1.0 - mu) / sd

    def _reset_state(self) -> None:
        """Dynamic embeddings back to the learned initial vectors (start of every epoch)."""
        net = self._net
        self._U = net.init_user.detach().repeat(self._n_users, 1)
        self._I = net.init_item.detach().repeat(self._n_items + 1, 1)
        last_u, last_i, prev = self._train_end
        self._last_u, self._last_i, self._prev = last_u.copy(), last_i.copy(), prev.copy()
        self._cache: dict[str, torch.Tensor] | None = None
        self._live_u: dict[int, torch.Tensor] = {}
        self._live_i: dict[int, torch.Tensor] = {}
        self._static_rows: list[tuple[str, int, torch.Tensor]] = []
        self._online_loss: torch.Tensor | None = None
        self._online_start: float | None = None
        self._online_done: int | None = None
        self._online_scores: tuple[int, np.ndarray] | None = None

    # -- training -------------------------------------------------------------------------------

    @_with_threads
    def train_epoch(self) -> dict[str, float]:
        """One pass over the training windows; returns the summed losses of the epoch."""
        if not hasattr(self, "_net"):
            raise UsageError("JODIE.train_epoch() was called before fit()")
        self._reset_state()
        totals = dict.fromkeys(("loss", "prediction", "user_drift", "item_drift", "state"), 0.0)
        for w, plan in enumerate(progress(self._plans, unit="window")):
            parts = self._train_window(plan, first=w == 0)
            for k, v in parts.items():
                totals[k] += v
        if self._static is not None:
            self._static.sync()
        self._epochs += 1
        return totals

    def _train_window(self, plan: dict[str, Any], first: bool) -> dict[str, float]:
        net, d = self._net, self.embedding_size
        ev = plan["order"]
        m = len(ev)
        dt, feat = self._dt[ev], self._features[ev]
        cu = torch.addmm(net.user_b_ih + net.user_b_hh, torch.cat([dt[:, :1], feat], 1),
                         net.user_w_ih[:, d:].t())
        ci = torch.addmm(net.item_b_ih + net.item_b_hh, torch.cat([dt[:, 1:], feat], 1),
                         net.item_w_ih[:, d:].t())
        const = torch.cat([cu, ci], 1)
        coupled = torch.cat([
            torch.cat([net.user_w_hh.t(), net.item_w_ih[:, :d].t()], 1),
            torch.cat([net.user_w_ih[:, :d].t(), net.item_w_hh.t()], 1),
        ], 0)
        if first:  # the learned initial vectors get their gradient in the first window
            start_u = net.init_user.expand(len(plan["init_users"]), d)
            start_i = net.init_item.expand(len(plan["init_items"]), d)
        else:
            start_u, start_i = self._U[plan["init_users"]], self._I[plan["init_items"]]
        ext = torch.cat([torch.zeros(2 * m, d, device=self._dev), start_u, start_i])
        reads_ui, bounds = plan["reads_ui"], plan["bounds"]
        for k in range(plan["n_tbatches"]):
            s, e = bounds[k], bounds[k + 1]
            x = ext.index_select(0, reads_ui[2 * s:2 * e]).view(e - s, 2 * d)
            y = torch.tanh(torch.addmm(const[s:e], x, coupled))
            out = F.normalize(y.view(e - s, 2, d), dim=2).view(2 * (e - s), d)
            ext = ext.slice_scatter(out, 0, 2 * s, 2 * e)

        new = ext[: 2 * m].view(m, 2, d)
        u_new, i_new = new[:, 0], new[:, 1]
        reads = plan["reads"]
        u_prev, i_prev, p_dyn = ext[reads[:, 0]], ext[reads[:, 1]], ext[reads[:, 2]]
        proj = u_prev * (1 + dt[:, :1] * net.proj_w + net.proj_b)
        pred = proj @ net.pred_user.t() + p_dyn @ net.pred_item.t() + net.pred_b
        items = self._item[ev]
        rows: list[tuple[str, torch.Tensor, torch.Tensor]] = []
        if self._static is not None:
            self._static.read("static_user", plan["init_users"])
            self._static.read("static_item", plan["prev_items"])
            ru = net.static_user.detach()[plan["init_users"]].requires_grad_()
            ri = net.static_item.detach()[plan["prev_items"]].requires_grad_()
            rows = [("static_user", plan["init_users"], ru), ("static_item", plan["prev_items"], ri)]
            pred = pred + ru[plan["user_inv"]] + ri[plan["prev_inv"]]
            pd, ps = pred[:, :d], pred[:, d:]
            err = (((pd - i_prev.detach()) ** 2).sum(1) + (ps ** 2).sum(1)
                   - 2 * ps.gather(1, items[:, None]).squeeze(1) + 1)
        else:
            users = self._user_t[ev]
            pred = (pred + net.code_user[users] @ net.static_user_w.t()
                    + net.code_item[plan["prev"]] @ net.static_item_w.t())
            pd, ps = pred[:, :d], pred[:, d:]
            err = ((pd - i_prev.detach()) ** 2).sum(1) + ((ps - net.code_item[items]) ** 2).sum(1)
        w = plan["inv_size"]
        l_pred = (err * w).sum() / pred.shape[1]
        l_du = (((u_new - u_prev.detach()) ** 2).sum(1) * w).sum() / d
        l_di = (((i_new - i_prev.detach()) ** 2).sum(1) * w).sum() / d
        loss = l_pred + l_du + l_di
        l_state = torch.zeros((), device=self._dev)
        if self._use_state:
            y = self._label[ev]
            nll = F.cross_entropy(self._head(u_new), y, reduction="none")
            cw = self._class_weight[y]
            k = plan["n_tbatches"]
            num = torch.zeros(k, device=self._dev).index_add(0, plan["tbatch"], cw * nll)
            den = torch.zeros(k, device=self._dev).index_add(0, plan["tbatch"], cw)
            l_state = self.state_loss_weight * (num / den).sum()
            loss = loss + l_state
        loss.backward()
        self._apply_step([(n, idx, r.grad) for n, idx, r in rows])
        with torch.no_grad():
            self._U[plan["final_users"]] = ext[plan["final_user_rows"]]
            self._I[plan["final_items"]] = ext[plan["final_item_rows"]]
        return {k: float(v.detach()) for k, v in (("loss", loss), ("prediction", l_pred),
                ("user_drift", l_du), ("item_drift", l_di), ("state", l_state))}

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        net = self._net
        return F.linear(F.relu(F.linear(h, net.head1_w, net.head1_b)), net.head2_w, net.head2_b)

    @torch.no_grad()
    def _apply_step(self, static_grads: list[tuple[str, torch.Tensor, torch.Tensor | None]]) -> None:
        """One Adam step: torch's Adam for the dense parameters, :class:`StaticAdam` for the
        one-hot static tables (``static_grads``: their gradient rows)."""
        self._opt.step()
        self._opt.zero_grad(set_to_none=True)
        self._cache = None
        if self._static is not None:
            self._static.step(static_grads)

    def __getstate__(self) -> dict[str, Any]:
        if getattr(self, "_static", None) is not None:
            self._static.sync()  # a copy holds the dense optimizer's parameters
        return self.__dict__.copy()

    # -- evaluation -----------------------------------------------------------------------------
    # Frozen evaluation computes in float64 from the float32 parameters and states and rounds
    # every stored state and score to float32, so that a row's numbers do not depend on how many
    # rows its matrix products had (block or one event at a time).

    def _params64(self) -> dict[str, torch.Tensor]:
        if self._cache is None:
            net = self._net
            if self._static is not None:
                self._static.sync()
            c = {n: p.detach().double() for n, p in net.named_parameters()
                 if n not in ("static_user", "static_item")}
            c["user_b"] = c["user_b_ih"] + c["user_b_hh"]
            c["item_b"] = c["item_b_ih"] + c["item_b_hh"]
            if self.static_size is not None:
                c["code_user"] = net.code_user.double()
                c["code_item"] = net.code_item.double()
            c["cand"] = self._candidates(torch.arange(self._n_items, device=self._dev))
            c["cand_sq"] = (c["cand"] ** 2).sum(1)
            self._cache = c
        return self._cache

    def _candidates(self, items: torch.Tensor, dyn: torch.Tensor | None = None) -> torch.Tensor:
        """Rows of the candidate matrix: ``[dynamic]`` (one-hot statics enter through the
        prediction's own static part) or ``[dynamic, code]``."""
        dyn = (self._I[items] if dyn is None else dyn).double()
        if self.static_size is None:
            return dyn
        return torch.cat([dyn, self._net.code_item[items].double()], 1)

    def _check_block(self, block: Interactions) -> None:
        if not hasattr(self, "_net"):
            raise UsageError("JODIE was asked to predict before fit()")
        if block.n_features != self._n_features:
            raise UsageError(
                f"JODIE was trained with {self._n_features} features per event, but this block has "
                f"{block.n_features}; evaluate on the stream it was trained on"
            )
        if block.n_users > self._n_users or block.n_items > self._n_items:
            raise UsageError(
                f"the block has {block.n_users} users and {block.n_items} items, more than the "
                f"{self._n_users} users and {self._n_items} items JODIE was fitted with"
            )

    def _dt64(self, t: np.ndarray, last: np.ndarray, which: int) -> torch.Tensor:
        first = 0.0 if self._t0 is None else t - self._t0
        dt = np.where(np.isnan(last), first, t - last)
        return torch.as_tensor(self._standardize(dt, which), dtype=torch.float64,
                               device=self._dev)[:, None]

    def _update64(self, u_in: torch.Tensor, i_in: torch.Tensor, dtu: torch.Tensor,
                  dti: torch.Tensor, f: torch.Tensor, which: str) -> torch.Tensor:
        c = self._params64()
        if which == "user":
            x = torch.cat([i_in, dtu, f], 1)
            pre = x @ c["user_w_ih"].t() + u_in @ c["user_w_hh"].t() + c["user_b"]
        else:
            x = torch.cat([u_in, dti, f], 1)
            pre = x @ c["item_w_ih"].t() + i_in @ c["item_w_hh"].t() + c["item_b"]
        return F.normalize(torch.tanh(pre), dim=1).float()

    def _predict64(self, users: torch.Tensor, prev: torch.Tensor, u_in: torch.Tensor,
                   p_dyn: torch.Tensor, dtu: torch.Tensor) -> torch.Tensor:
        c = self._params64()
        proj = u_in * (1 + dtu * c["proj_w"] + c["proj_b"])
        pred = proj @ c["pred_user"].t() + p_dyn @ c["pred_item"].t() + c["pred_b"]
        if self.static_size is None:
            net = self._net
            pred = pred + net.static_user.detach()[users].double()
            pred = pred + net.static_item.detach()[prev].double()
        else:
            pred = (pred + c["code_user"][users] @ c["static_user_w"].t()
                    + c["code_item"][prev] @ c["static_item_w"].t())
        return pred.float().double()

    @_with_threads
    def score(self, block: Interactions) -> np.ndarray:
        """``-distance`` of every item's ``[dynamic, static]`` embedding to the predicted one."""
        self._check_block(block)
        if self.online_updates:
            return self._online_block(block, want_scores=True)
        with torch.no_grad():
            return self._score_frozen(block)

    def _score_frozen(self, block: Interactions) -> np.ndarray:
        c, d, n, dev = self._params64(), self.embedding_size, self._n_items, self._dev
        b = len(block)
        users_np = block.user.astype(np.int64)
        users = torch.as_tensor(users_np, device=dev)
        prev_np = self._prev[users_np]
        prev = torch.as_tensor(prev_np, device=dev)
        u_in = self._U[users].double()
        dtu = self._dt64(block.t, self._last_u[users_np], 0)
        p_dyn = self._I[prev].double()
        earlier = b - 1  # events whose item update row j may use (i < j)
        items_np = block.item[:earlier].astype(np.int64)
        if earlier:
            items = torch.as_tensor(items_np, device=dev)
            i_new = self._update64(
                self._U[users[:earlier]].double(), self._I[items].double(), dtu[:earlier],
                self._dt64(block.t[:earlier], self._last_i[items_np], 1),
                torch.tensor(block.features[:earlier], device=dev).double(), "item",
            ).double()
            # A user's previous item updated earlier in the block enters with its new state.
            sorter = np.argsort(items_np)
            pos = np.clip(np.searchsorted(items_np, prev_np, sorter=sorter), 0, earlier - 1)
            src = sorter[pos]
            hit = (items_np[src] == prev_np) & (src < np.arange(b))
            if hit.any():
                rows = torch.as_tensor(np.flatnonzero(hit), device=dev)
                p_dyn[rows] = i_new[torch.as_tensor(src[hit], device=dev)]
        pred = self._predict64(users, prev, u_in, p_dyn, dtu)
        if self.static_size is None:
            q, ps = pred[:, :d], pred[:, d:]
            row_sq = (q ** 2).sum(1) + (ps ** 2).sum(1) + 1
            extra = -2 * ps[:, :n]
        else:
            q, row_sq, extra = pred, (pred ** 2).sum(1), None
        d2 = row_sq[:, None] - 2 * (q @ c["cand"].t()) + c["cand_sq"][None, :]
        if extra is not None:
            d2 = d2 + extra
        if earlier:
            jj, ii = np.tril_indices(b, -1)
            new_c = self._candidates(items, i_new.float())
            g2 = q @ new_c.t()
            jt, it = torch.as_tensor(jj, device=dev), torch.as_tensor(ii, device=dev)
            cols = items[it]
            patch = row_sq[jt] - 2 * g2[jt, it] + (new_c ** 2).sum(1)[it]
            if extra is not None:
                patch = patch + extra[jt, cols]
            d2[jt, cols] = patch
        return (-d2.clamp_min(0).sqrt()).float().cpu().numpy()

    @_with_threads
    def observe(self, block: Interactions) -> None:
        """Coupled RNN updates of the block's users and items (frozen parameters unless
        ``online_updates``)."""
        self._check_block(block)
        if self.online_updates:
            if self._online_done == self._fingerprint(block):
                self._online_done = None
                return
            self._online_block(block, want_scores=False)
            return
        with torch.no_grad():
            dev = self._dev
            users_np, items_np = block.user.astype(np.int64), block.item.astype(np.int64)
            users = torch.as_tensor(users_np, device=dev)
            items = torch.as_tensor(items_np, device=dev)
            u_in, i_in = self._U[users].double(), self._I[items].double()
            dtu = self._dt64(block.t, self._last_u[users_np], 0)
            dti = self._dt64(block.t, self._last_i[items_np], 1)
            f = torch.tensor(block.features, device=dev).double()
            u_new = self._update64(u_in, i_in, dtu, dti, f, "user")
            i_new = self._update64(u_in, i_in, dtu, dti, f, "item")
            self._U[users], self._I[items] = u_new, i_new
            c = self._params64()
            new_c = self._candidates(items, i_new)
            c["cand"][items] = new_c
            c["cand_sq"][items] = (new_c ** 2).sum(1)
        self._last_u[users_np] = block.t
        self._last_i[items_np] = block.t
        self._prev[users_np] = items_np

    @_with_threads
    def predict_state(self, block: Interactions) -> np.ndarray:
        """Probability of state label 1 from each user's embedding after the event."""
        self._check_block(block)
        cached = getattr(self, "_online_states", None)
        if self.online_updates and cached is not None and cached[0] == self._fingerprint(block):
            return cached[1]  # each event's probability right after it, as one at a time
        return self._state_probs(block.user)

    def _state_probs(self, user: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            users = torch.as_tensor(user.astype(np.int64), device=self._dev)
            c = self._params64()
            h = self._U[users].double()
            logits = F.linear(F.relu(F.linear(h, c["head1_w"], c["head1_b"])),
                              c["head2_w"], c["head2_b"])
            return torch.softmax(logits, 1)[:, 1].float().cpu().numpy()

    # -- online updates (the authors' evaluation) -----------------------------------------------

    @staticmethod
    def _fingerprint(block: Interactions) -> int:
        return hash((block.user.tobytes(), block.item.tobytes(), block.t.tobytes()))

    def _online_block(self, block: Interactions, want_scores: bool) -> np.ndarray:
        """Events one at a time, as the authors evaluate: score (row ``j`` sees events before
        ``j`` only), update the states with gradients, note the state probability, add the
        event's loss, and take an Adam step whenever a window of time has passed. The state
        probability of an event comes from the state after the event and the parameters before
        any step that used its label. ``score`` does this for its block and the following
        ``observe`` of the same block then has nothing left to do, and scoring it again (as the
        evaluator's audit does) returns the same rows without training on it twice."""
        fingerprint = self._fingerprint(block)
        done = getattr(self, "_online_scores", None)
        if want_scores and self._online_done == fingerprint and done is not None \
                and done[0] == fingerprint:
            return done[1].copy()
        scores = np.empty((len(block), self._n_items), np.float32) if want_scores else None
        states = np.empty(len(block), np.float32)
        for j in range(len(block)):
            row, states[j] = self._online_event(block, j, want_scores)
            if scores is not None:
                scores[j] = row
        self._online_done = fingerprint if want_scores else None
        self._online_states = (fingerprint, states)
        self._online_scores = (fingerprint, scores) if scores is not None else None
        return scores if scores is not None else np.empty((len(block), 0), np.float32)

    def _online_event(self, block: Interactions, j: int,
                      want_score: bool) -> tuple[np.ndarray | None, float]:
        net, d, dev, n = self._net, self.embedding_size, self._dev, self._n_items
        u, i, t = int(block.user[j]), int(block.item[j]), float(block.t[j])
        p = int(self._prev[u])
        if self._online_start is None:
            self._online_start = t
        u_in = self._live_u.get(u, self._U[u].clone())[None]
        i_in = self._live_i.get(i, self._I[i].clone())[None]
        p_dyn = self._live_i.get(p, self._I[p].clone())[None]
        dtu = self._dt64(block.t[j:j + 1], self._last_u[u:u + 1], 0).float()
        dti = self._dt64(block.t[j:j + 1], self._last_i[i:i + 1], 1).float()
        f = torch.tensor(block.features[j:j + 1], device=dev)
        proj = u_in * (1 + dtu * net.proj_w + net.proj_b)
        pred = proj @ net.pred_user.t() + p_dyn @ net.pred_item.t() + net.pred_b
        if self._static is not None:
            self._static.read("static_user", torch.tensor([u]))
            self._static.read("static_item", torch.tensor([p]))
            ru = net.static_user.detach()[u][None].requires_grad_()
            ri = net.static_item.detach()[p][None].requires_grad_()
            self._static_rows += [("static_user", u, ru), ("static_item", p, ri)]
            pred = pred + ru + ri
            target_static = F.one_hot(torch.tensor([i], device=dev), n + 1).float()
        else:
            pred = (pred + net.code_user[u][None] @ net.static_user_w.t()
                    + net.code_item[p][None] @ net.static_item_w.t())
            target_static = net.code_item[i][None]
        row = None
        if want_score:
            with torch.no_grad():
                q = pred.detach().double()
                cand = self._candidates(torch.arange(n, device=dev))
                if self.static_size is None:
                    qd, qs = q[:, :d], q[:, d:]
                    d2 = ((qd ** 2).sum(1, keepdim=True) - 2 * qd @ cand.t() + (cand ** 2).sum(1)
                          + (qs ** 2).sum(1, keepdim=True) - 2 * qs[:, :n] + 1)
                else:
                    d2 = (q ** 2).sum(1, keepdim=True) - 2 * q @ cand.t() + (cand ** 2).sum(1)
                row = (-d2.clamp_min(0).sqrt()).float()[0].cpu().numpy()
        target = torch.cat([i_in.detach(), target_static], 1)
        loss = F.mse_loss(pred, target)
        x_u = torch.cat([i_in, dtu, f], 1)
        u_new = F.normalize(torch.tanh(x_u @ net.user_w_ih.t() + u_in @ net.user_w_hh.t()
                                       + net.user_b_ih + net.user_b_hh), dim=1)
        x_i = torch.cat([u_in, dti, f], 1)
        i_new = F.normalize(torch.tanh(x_i @ net.item_w_ih.t() + i_in @ net.item_w_hh.t()
                                       + net.item_b_ih + net.item_b_hh), dim=1)
        loss = loss + F.mse_loss(i_new, i_in.detach()) + F.mse_loss(u_new, u_in.detach())
        if self._use_state:
            y = torch.tensor([int(block.label[j])], device=dev)
            loss = loss + self.state_loss_weight * F.cross_entropy(self._head(u_new), y)
        self._online_loss = loss if self._online_loss is None else self._online_loss + loss
        self._live_u[u], self._live_i[i] = u_new[0], i_new[0]
        with torch.no_grad():
            self._U[u], self._I[i] = u_new[0], i_new[0]
            if self._cache is not None and i < n:
                new_c = self._candidates(torch.tensor([i], device=dev))
                self._cache["cand"][i] = new_c[0]
                self._cache["cand_sq"][i] = (new_c ** 2).sum()
        self._last_u[u], self._last_i[i], self._prev[u] = t, t, i
        state = float(self._state_probs(block.user[j:j + 1])[0])  # before the step below
        if t - self._online_start > self._span:
            self._online_start = t
            self._online_loss.backward()
            grads: dict[str, list[tuple[int, torch.Tensor]]] = {}
            for name, idx, r in self._static_rows:
                if r.grad is not None:
                    grads.setdefault(name, []).append((idx, r.grad))
            self._apply_step([
                (name, torch.tensor([x for x, _ in gs], device=dev), torch.cat([g for _, g in gs]))
                for name, gs in grads.items()
            ])
            self._online_loss, self._live_u, self._live_i, self._static_rows = None, {}, {}, []
        return row, state
