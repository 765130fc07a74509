"""RRN (Wu, Ahmed, Beutel, Smola, Jing, WSDM 2017) as the JODIE paper (KDD 2019) ran it."""

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
from harness_rrn._tbatch import Plan, item_patches, log_gaps, plan_window, time_windows

__all__ = ["RRN"]

#: Tables with a row per user: updated by a lazy Adam on the rows a window touches.
_USER_TABLES = ("user_in", "static_user")
_B1, _B2, _EPS = 0.9, 0.999, 1e-8

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


def _lstm(gates: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An LSTM cell's output from its pre-activations (torch's gate order i, f, g, o)."""
    i, f, g, o = gates.chunk(4, 1)
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c_new), c_new


def coupled_lstm_reference(gx: torch.Tensor, w_hh: torch.Tensor, init: torch.Tensor,
                           reads: torch.Tensor, bounds: list[int]) -> torch.Tensor:
    """The t-batch recurrence written plainly with autograd (the reference :class:`_CoupledLSTM`
    is tested against). ``gx``: ``(m, 2, 4d)`` input parts of the user (0) and item (1) gates by
    position; ``w_hh``: ``(2, d, 4d)``; ``init``: start states ``[h | c]`` of the window's users
    then items; ``reads``: for position ``p``, rows ``2p`` and ``2p+1`` the table rows its user
    and item start from. Returns the table: row ``2p`` (``2p+1``) the user's (item's) state after
    position ``p``, then ``init``."""
    m, d = gx.shape[0], w_hh.shape[1]
    ext = torch.cat([torch.zeros(2 * m, 2 * d, dtype=init.dtype, device=init.device), init])
    for k in range(len(bounds) - 1):
        a, b = bounds[k], bounds[k + 1]
        x = ext.index_select(0, reads[2 * a:2 * b]).view(b - a, 2, 2 * d)
        gates = gx[a:b] + torch.bmm(x[..., :d].transpose(0, 1), w_hh).transpose(0, 1)
        i, f, g, o = gates.chunk(4, 2)
        c_new = torch.sigmoid(f) * x[..., d:] + torch.sigmoid(i) * torch.tanh(g)
        h_new = torch.sigmoid(o) * torch.tanh(c_new)
        ext = ext.slice_scatter(torch.cat([h_new, c_new], 2).view(2 * (b - a), 2 * d), 0, 2 * a, 2 * b)
    return ext


class _CoupledLSTM(torch.autograd.Function):
    """:func:`coupled_lstm_reference` with a hand-written backward pass through the t-batches.

    Autograd on the plain loop copies (and back-propagates) the whole window table at every
    t-batch, which makes a window's cost grow with the square of its size; here every t-batch
    reads and writes its own rows only, forward and backward."""

    @staticmethod
    def forward(ctx: Any, gx: torch.Tensor, w_hh: torch.Tensor, init: torch.Tensor,
                reads: torch.Tensor, bounds: list[int]) -> torch.Tensor:
        m, d = gx.shape[0], w_hh.shape[1]
        ext = torch.empty(2 * m + init.shape[0], 2 * d, dtype=gx.dtype, device=gx.device)
        ext[2 * m:] = init
        acts = torch.empty_like(gx)  # gate activations sigmoid(i), sigmoid(f), tanh(g), sigmoid(o)
        for k in range(len(bounds) - 1):
            a, b = bounds[k], bounds[k + 1]
            x = ext.index_select(0, reads[2 * a:2 * b]).view(b - a, 2, 2 * d)
            gates = gx[a:b] + torch.bmm(x[..., :d].transpose(0, 1), w_hh).transpose(0, 1)
            act = acts[a:b]
            torch.sigmoid(gates, out=act)
            act[..., 2 * d:3 * d] = torch.tanh(gates[..., 2 * d:3 * d])
            i, f, g, o = act.chunk(4, 2)
            c_new = f * x[..., d:] + i * g
            out = ext[2 * a:2 * b].view(b - a, 2, 2 * d)
            out[..., d:] = c_new
            out[..., :d] = o * torch.tanh(c_new)
        ctx.save_for_backward(w_hh, reads, ext, acts)
        ctx.bounds = bounds
        return ext

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        w_hh, reads, ext, acts = ctx.saved_tensors
        bounds = ctx.bounds
        m, d = acts.shape[0], w_hh.shape[1]
        grad = grads[0].clone()
        d_gx = torch.empty_like(acts)
        d_w = torch.zeros_like(w_hh)
        w_t = w_hh.transpose(1, 2)
        for k in range(len(bounds) - 2, -1, -1):
            a, b = bounds[k], bounds[k + 1]
            n = b - a
            rows = reads[2 * a:2 * b]
            x = ext.index_select(0, rows).view(n, 2, 2 * d)
            c_prev = x[..., d:]
            c_new = ext[2 * a:2 * b, d:].view(n, 2, d)
            gy = grad[2 * a:2 * b].view(n, 2, 2 * d)
            gh, gc = gy[..., :d], gy[..., d:]
            i, f, g, o = acts[a:b].chunk(4, 2)
            tc = torch.tanh(c_new)
            dc = gc + gh * o * (1 - tc * tc)
            dz = d_gx[a:b]
            dz[..., :d] = dc * g * i * (1 - i)
            dz[..., d:2 * d] = dc * c_prev * f * (1 - f)
            dz[..., 2 * d:3 * d] = dc * i * (1 - g * g)
            dz[..., 3 * d:] = gh * tc * o * (1 - o)
            dz_t = dz.transpose(0, 1)  # (2, n, 4d)
            d_w.baddbmm_(x[..., :d].transpose(0, 1).transpose(1, 2), dz_t)
            dh_prev = torch.bmm(dz_t, w_t).transpose(0, 1)  # (n, 2, d)
            grad.index_add_(0, rows, torch.cat([dh_prev, dc * f], 2).view(2 * n, 2 * d))
        return d_gx, d_w, grad[2 * m:], None, None


class _Net(nn.Module):
    def __init__(self, d: int, s: int, n_users: int, n_items: int, n_in: int,
                 generator: torch.Generator) -> None:
        super().__init__()
        g = generator
        b = 1.0 / math.sqrt(d)

        def uniform(*shape: int, bound: float = b) -> nn.Parameter:
            return nn.Parameter((torch.rand(*shape, generator=g) * 2 - 1) * bound)

        def normal(*shape: int, std: float) -> nn.Parameter:
            return nn.Parameter(torch.randn(*shape, generator=g) * std)

        # One-hot inputs as lookups: the user LSTM reads the item's row, the item LSTM the user's.
        self.item_in = normal(n_items, d, std=0.1)
        self.user_in = normal(n_users, d, std=0.1)
        # LSTM weights as torch's nn.LSTMCell (one bias: b_ih + b_hh), inputs [lookup, log gap, f].
        self.u_w_ih, self.u_w_hh, self.u_b = uniform(4 * d, d + n_in), uniform(4 * d, d), uniform(4 * d)
        self.i_w_ih, self.i_w_hh, self.i_b = uniform(4 * d, d + n_in), uniform(4 * d, d), uniform(4 * d)
        # Dynamic part of the score: <W_u u_t + b_u, W_m m_t + b_m>.
        self.w_u, self.b_u = uniform(d, d), uniform(d)
        self.w_m, self.b_m = uniform(d, d), uniform(d)
        # Stationary part: <u, m>, one-hot users and items times weights (lookups).
        self.static_user = normal(n_users, s, std=0.1)
        self.static_item = normal(n_items, s, std=0.1)
        # State-change head, JODIE's: Linear(d, 50) - ReLU - Linear(50, 2).
        self.head1_w, self.head1_b = uniform(50, d), uniform(50)
        hb = 1.0 / math.sqrt(50)
        self.head2_w, self.head2_b = uniform(2, 50, bound=hb), uniform(2, bound=hb)


class RRN(Model):
    """Recurrent Recommender Networks: a user LSTM and an item LSTM, each over its own history,
    and ``score(u, i) = <W_u u_t + b_u, W_m m_t + b_m> + <u, m>`` (dynamic plus stationary).

    What is the paper's (Wu et al., WSDM 2017) and what JODIE's experiment set (Kumar et al., KDD
    2019, section 4): LSTM cells for users and items, the score's dynamic and stationary parts,
    128-d embeddings, one-hot item (user) inputs, 50 epochs. RRN steps through fixed time steps of
    ratings; JODIE adapted it to interactions without publishing how. Chosen here, each one a
    parameter or stated:

    - a step per interaction: the user's input is the item (its lookup embedding), the item's is
      the user, each with ``log(1 + seconds since its own previous event)`` (standardised on the
      training part) and, with ``use_features``, the event's features;
    - training ranks the true item over all items with softmax cross-entropy
      (``n_negatives=None``), or over the true item and ``n_negatives`` uniformly sampled items
      shared by a window (sampled softmax without correction);
    - t-Batch inside ``windows`` equal time windows, one Adam step per window with
      backpropagation through the window's t-batches (states at a window's start are constants),
      as JODIE trains. In the loss, every item's state is the one after the t-batches before the
      query's (exact for the true item, whose earlier events all lie in earlier t-batches);
    - Adam (torch's, fused) on the dense parameters; on the per-user tables (user input lookups,
      stationary user embeddings) a lazy Adam updates only the rows a window touches, as JODIE's
      plugin does for its one-hot tables (torch's dense Adam would also decay every other row);
    - initial LSTM states are zeros; the state-change head is JODIE's (Linear-ReLU-Linear on the
      user's dynamic embedding ``u_t``, cross-entropy weighted by the class ratio);
    - the stationary embeddings have ``static_size`` dimensions (one-hot inputs times a weight
      matrix, i.e. learned lookups).

    A score uses the states before the event; the query's time does not enter (RRN's state only
    moves with events here). Evaluation is exact in blocks: items updated by earlier events of a
    block are patched into later rows, so every row equals one-at-a-time evaluation.

    Parameters
    ----------
    embedding_size: dimension of the LSTM states and input lookups.
    static_size: dimension of the stationary user and item embeddings (0: none).
    learning_rate, weight_decay: Adam's (weight decay as L2 in the gradient, torch's Adam).
    windows: number of equal time windows of the training stream (one Adam step each).
    n_negatives: ``None`` for softmax over all items; an integer for sampled softmax.
    use_features: feed the events' features into both LSTMs.
    state_loss_weight: weight of the state-change loss (used when training has labels).
    device: torch device: ``auto`` (a GPU when torch sees one), ``cpu``, ``cuda`` or ``cuda:N``.
    num_threads: torch threads while the model works (``None``: leave torch's setting).
    """

    capabilities: ClassVar[frozenset[str]] = frozenset({"rank", "state"})
    supports_blocks: ClassVar[bool] = True
    iterative: ClassVar[bool] = True
    default_epochs: ClassVar[int] = 50

    def __init__(
        self,
        embedding_size: int = 128,
        static_size: int = 128,
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-5,
        windows: int = 500,
        n_negatives: int | None = None,
        use_features: bool = True,
        state_loss_weight: float = 1.0,
        device: str = "auto",
        num_threads: int | None = 1,
    ) -> None:
        self.embedding_size = embedding_size
        self.static_size = static_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.windows = windows
        self.n_negatives = n_negatives
        self.use_features = use_features
        self.state_loss_weight = state_loss_weight
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
                raise UsageError(f"RRN {name} must be a positive integer, but got {value!r}")
        if not isinstance(self.static_size, (int, np.integer)) or self.static_size < 0:
            raise UsageError(f"RRN static_size must be an integer >= 0, but got {self.static_size!r}")
        if self.n_negatives is not None and (
            not isinstance(self.n_negatives, (int, np.integer)) or self.n_negatives < 1
        ):
            raise UsageError(
                f"RRN n_negatives must be None (softmax over all items) or a positive integer, "
                f"but got {self.n_negatives!r}"
            )
        for name in ("learning_rate", "weight_decay", "state_loss_weight"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0 or not math.isfinite(value):
                raise UsageError(f"RRN {name} must be a finite number >= 0, but got {value!r}")

    @_with_threads
    def fit(self, train: Interactions, *, seed: int = 0) -> None:
        """Build the network (seeded), the time features and the t-Batch plans of ``train``."""
        self._check_params()
        if len(train) == 0:
            raise UsageError("RRN needs at least one training event, but the training part is empty")
        d, s = self.embedding_size, self.static_size
        nu, ni = train.n_users, train.n_items
        nf = train.n_features if self.use_features else 0
        self._n_users, self._n_items, self._n_features = nu, ni, train.n_features
        self._dev = dev = resolve_device(self.device)
        user, item, t = train.user.astype(np.int64), train.item.astype(np.int64), train.t
        gu, _ = log_gaps(user, t)
        gi, _ = log_gaps(item, t)
        self._gap_stats = tuple(float(v) for g in (gu, gi)
                                for v in (g.mean(), g.std() if g.std() > 0 else 1.0))
        as_long = lambda a: torch.as_tensor(np.array(a, dtype=np.int64), device=dev)  # noqa: E731
        self._item_t, self._label_t = as_long(item), as_long(train.label)
        self._item_np, self._user_np = item, user
        cols = [self._std(gu, 0)[:, None], self._std(gi, 1)[:, None]]
        self._gaps = torch.as_tensor(np.concatenate(cols, 1), dtype=torch.float32, device=dev)
        self._features = torch.as_tensor(np.array(train.features[:, :nf]), dtype=torch.float32,
                                         device=dev)
        self._plans = [plan_window(user[a:b], item[a:b], a, item_state=True)
                       for a, b in time_windows(t, self.windows)]
        positives = int(train.label.sum())
        self._use_state = self.state_loss_weight > 0 and positives > 0
        self._class_weight = torch.tensor([1.0, len(train) / (1.0 + positives)], device=dev)
        gen = torch.Generator().manual_seed(int(seed))
        self._net = _Net(d, s, nu, ni, 1 + nf, gen).to(dev)
        dense = [p for n, p in self._net.named_parameters() if n not in _USER_TABLES]
        self._opt = torch.optim.Adam(dense, lr=self.learning_rate,
                                     weight_decay=self.weight_decay,
                                     fused=dev.type in ("cpu", "cuda"))
        self._moments = {n: (torch.zeros_like(getattr(self._net, n)),
                             torch.zeros_like(getattr(self._net, n))) for n in _USER_TABLES}
        self._step = 0
        self._seed = int(seed)
        self._epochs = 0
        last_u = np.full(nu, np.nan)
        last_u[user] = t
        last_i = np.full(ni, np.nan)
        last_i[item] = t
        self._train_end = (last_u, last_i)
        self._reset_state()
        self.fit_report = {
            "loss": "softmax over all items" if self.n_negatives is None
            else f"sampled softmax, {self.n_negatives} uniform negatives per window",
            "windows": len(self._plans),
            "tbatches": int(sum(len(p.bounds) - 1 for p in self._plans)),
        }

    def _std(self, g: np.ndarray, which: int) -> np.ndarray:
        mu, sd = self._gap_stats[2 * which], self._gap_stats[2 * which + 1]
        return (g - mu) / sd

    def _reset_state(self) -> None:
        """Zero LSTM states for every user and item (start of every epoch)."""
        d, dev = self.embedding_size, self._dev
        self._U = torch.zeros(self._n_users, 2 * d, device=dev)  # [h | c]
        self._I = torch.zeros(self._n_items, 2 * d, device=dev)
        last_u, last_i = self._train_end
        self._last_u, self._last_i = last_u.copy(), last_i.copy()
        self._cache: dict[str, torch.Tensor] | None = None

    # -- training -------------------------------------------------------------------------------

    @_with_threads
    def train_epoch(self) -> dict[str, float]:
        """One pass over the training windows; returns the summed losses of the epoch."""
        if not hasattr(self, "_net"):
            raise UsageError("RRN.train_epoch() was called before fit()")
        self._reset_state()
        rng = np.random.default_rng([self._seed, self._epochs])
        totals = {"loss": 0.0, "ranking": 0.0, "state": 0.0}
        for plan in progress(self._plans, unit="window"):
            for k, v in self._train_window(plan, rng).items():
                totals[k] += v
        self._epochs += 1
        return totals

    def _train_window(self, plan: Plan, rng: np.random.Generator) -> dict[str, float]:
        net, d, dev = self._net, self.embedding_size, self._dev
        as_long = lambda a: torch.as_tensor(a, dtype=torch.long, device=dev)  # noqa: E731
        ev = as_long(plan.order)
        m = plan.size
        items = self._item_t[ev]
        init_u, init_i = as_long(plan.init_users), as_long(plan.init_items)
        # Rows of the user tables this window touches, as leaves (lazy Adam after backward).
        u_inv = as_long(np.searchsorted(plan.init_users, self._user_np[plan.order]))
        rows = {n: getattr(net, n).detach()[init_u].requires_grad_() for n in _USER_TABLES}
        extra = torch.cat([self._gaps[ev], self._features[ev]], 1)
        # Input parts of the gates for the whole window: [lookup, log gap, features].
        gx_u = torch.addmm(net.u_b, torch.cat([net.item_in[items], extra[:, :1], extra[:, 2:]], 1),
                           net.u_w_ih.t())
        gx_i = torch.addmm(net.i_b, torch.cat([rows['user_in'][u_inv], extra[:, 1:2], extra[:, 2:]], 1),
                           net.i_w_ih.t())
        gx = torch.stack([gx_u, gx_i], 1)  # (m, 2, 4d)
        w_hh = torch.stack([net.u_w_hh.t(), net.i_w_hh.t()])  # (2, d, 4d)
        init = torch.cat([self._U[init_u], self._I[init_i]])
        assert plan.read_item is not None
        reads = as_long(np.stack([plan.read_user, plan.read_item], 1).reshape(-1))
        ext = self._recurrence(gx, w_hh, init, reads, plan.bounds.tolist())
        # Scores of every query over all items, items at their state after earlier t-batches.
        u_prev = ext.index_select(0, as_long(plan.read_user))[:, :d]
        q = torch.addmm(net.b_u, u_prev, net.w_u.t())
        table = torch.addmm(net.b_m, self._I[:, :d], net.w_m.t())
        logits = q @ table.t()
        pj, px, psrc = item_patches(plan, self._item_np[plan.order])
        if len(pj):
            new_items = torch.addmm(net.b_m, ext[1:2 * m:2, :d], net.w_m.t())
            vals = (q @ new_items.t()).view(-1)[as_long(pj * m + psrc)]
            logits = logits.index_put((as_long(pj), as_long(px)), vals)
        if self.static_size:
            logits = logits + rows['static_user'][u_inv] @ net.static_item.t()
        target = items
        if self.n_negatives is not None:
            neg = rng.choice(self._n_items, size=min(self.n_negatives, self._n_items), replace=False)
            cols = np.unique(np.concatenate([self._item_np[plan.order], neg]))
            logits = logits[:, as_long(cols)]
            target = as_long(np.searchsorted(cols, self._item_np[plan.order]))
        l_rank = F.cross_entropy(logits, target)
        loss = l_rank
        l_state = torch.zeros((), device=dev)
        if self._use_state:
            y = self._label_t[ev]
            l_state = self.state_loss_weight * F.cross_entropy(
                self._head(ext[0:2 * m:2, :d]), y, weight=self._class_weight)
            loss = loss + l_state
        loss.backward()
        self._opt.step()
        self._opt.zero_grad(set_to_none=True)
        self._lazy_adam(init_u, rows)
        with torch.no_grad():
            self._U[as_long(plan.final_users)] = ext[as_long(plan.final_user_rows)]
            self._I[as_long(plan.final_items)] = ext[as_long(plan.final_item_rows)]
        return {"loss": float(loss.detach()), "ranking": float(l_rank.detach()),
                "state": float(l_state.detach())}

    @torch.no_grad()
    def _lazy_adam(self, idx: torch.Tensor, rows: dict[str, torch.Tensor]) -> None:
        """Adam (torch's update, L2 weight decay in the gradient) on the touched rows of the
        per-user tables only; untouched rows keep their values and moments."""
        self._step += 1
        lr, wd, t = self.learning_rate, self.weight_decay, self._step
        bias1, bias2 = 1 - _B1 ** t, 1 - _B2 ** t
        for name, r in rows.items():
            if r.grad is None:
                continue
            p = getattr(self._net, name)
            m, v = self._moments[name]
            g = r.grad + wd * r.detach()
            mi = m[idx].mul_(_B1).add_(g, alpha=1 - _B1)
            vi = v[idx].mul_(_B2).addcmul_(g, g, value=1 - _B2)
            m[idx], v[idx] = mi, vi
            denom = (vi.sqrt() / math.sqrt(bias2)).add_(_EPS)
            p[idx] = r.detach().addcdiv(mi, denom, value=-lr / bias1)

    def _recurrence(self, gx: torch.Tensor, w_hh: torch.Tensor, init: torch.Tensor,
                    reads: torch.Tensor, bounds: list[int]) -> torch.Tensor:
        return _CoupledLSTM.apply(gx, w_hh, init, reads, bounds)  # type: ignore[no-any-return]

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        net = self._net
        return F.linear(F.relu(F.linear(h, net.head1_w, net.head1_b)), net.head2_w, net.head2_b)

    # -- evaluation -----------------------------------------------------------------------------
    # Frozen evaluation computes in float64 from the float32 parameters and states, and rounds
    # every stored state and score to float32, so that a row's numbers do not depend on how many
    # rows its matrix products had (a block or one event at a time).

    def _params64(self) -> dict[str, torch.Tensor]:
        if self._cache is None:
            c = {n: p.detach().double() for n, p in self._net.named_parameters()}
            self._cache = c
            c["table"] = self._item_table(self._I[:, :self.embedding_size])
        return self._cache

    def _item_table(self, h: torch.Tensor) -> torch.Tensor:
        c = self._params64()
        return (h.double() @ c["w_m"].t() + c["b_m"]).float().double()

    def _check_block(self, block: Interactions) -> None:
        if not hasattr(self, "_net"):
            raise UsageError("RRN was asked to predict before fit()")
        if block.n_features != self._n_features:
            raise UsageError(
                f"RRN was trained with {self._n_features} features per event, but this block has "
                f"{block.n_features}; evaluate on the stream it was trained on"
            )
        if block.n_users > self._n_users or block.n_items > self._n_items:
            raise UsageError(
                f"the block has {block.n_users} users and {block.n_items} items, more than the "
                f"{self._n_users} users and {self._n_items} items RRN was fitted with"
            )

    def _gap64(self, t: np.ndarray, last: np.ndarray, which: int) -> torch.Tensor:
        g = np.where(np.isnan(last), 0.0, np.log1p(np.maximum(t - np.nan_to_num(last), 0.0)))
        return torch.as_tensor(self._std(g, which), dtype=torch.float64, device=self._dev)[:, None]

    def _step64(self, which: str, lookup: torch.Tensor, gap: torch.Tensor, feats: torch.Tensor,
                state: torch.Tensor) -> torch.Tensor:
        """One LSTM step of users (``which="u"``) or items in float64; the new ``[h | c]`` rounded
        to float32."""
        c, d = self._params64(), self.embedding_size
        x = torch.cat([lookup, gap, feats], 1)
        s = state.double()
        gates = x @ c[f"{which}_w_ih"].t() + s[:, :d] @ c[f"{which}_w_hh"].t() + c[f"{which}_b"]
        h, cell = _lstm(gates, s[:, d:])
        return torch.cat([h, cell], 1).float()

    def _feats(self, block: Interactions) -> torch.Tensor:
        nf = self._n_features if self.use_features else 0
        return torch.as_tensor(np.array(block.features[:, :nf]), dtype=torch.float64,
                               device=self._dev)

    def _item_steps(self, block: Interactions, n: int) -> tuple[torch.Tensor, np.ndarray]:
        """Item states after the first ``n`` events of a block (items distinct)."""
        c, dev = self._params64(), self._dev
        users_np, items_np = block.user[:n].astype(np.int64), block.item[:n].astype(np.int64)
        items = torch.as_tensor(items_np, device=dev)
        new = self._step64("i", c["user_in"][torch.as_tensor(users_np, device=dev)],
                           self._gap64(block.t[:n], self._last_i[items_np], 1),
                           self._feats(block)[:n], self._I[items])
        return new, items_np

    @_with_threads
    def score(self, block: Interactions) -> np.ndarray:
        """``<W_u u + b_u, W_m m + b_m> + <u_static, m_static>`` for every item."""
        self._check_block(block)
        with torch.no_grad():
            c, d, dev, b = self._params64(), self.embedding_size, self._dev, len(block)
            users = torch.as_tensor(block.user.astype(np.int64), device=dev)
            q = (self._U[users, :d].double() @ c["w_u"].t() + c["b_u"]).float().double()
            out = q @ c["table"].t()
            static = None
            if self.static_size:
                static = c["static_user"][users] @ c["static_item"].t()
                out = out + static
            if b > 1:  # items updated by earlier events of the block, patched into later rows
                new, items_np = self._item_steps(block, b - 1)
                rows = self._item_table(new[:, :d])
                jj, ii = np.tril_indices(b, -1)
                jt, it = torch.as_tensor(jj, device=dev), torch.as_tensor(ii, device=dev)
                cols = torch.as_tensor(items_np, device=dev)[it]
                patch = (q @ rows.t())[jt, it]
                if static is not None:
                    patch = patch + static[jt, cols]
                out[jt, cols] = patch
            return out.float().cpu().numpy()

    @_with_threads
    def observe(self, block: Interactions) -> None:
        """One LSTM step of the block's users and items (frozen parameters)."""
        self._check_block(block)
        with torch.no_grad():
            c, d, dev = self._params64(), self.embedding_size, self._dev
            users_np, items_np = block.user.astype(np.int64), block.item.astype(np.int64)
            users = torch.as_tensor(users_np, device=dev)
            items = torch.as_tensor(items_np, device=dev)
            u_new = self._step64("u", c["item_in"][items],
                                 self._gap64(block.t, self._last_u[users_np], 0),
                                 self._feats(block), self._U[users])
            i_new, _ = self._item_steps(block, len(block))
            self._U[users], self._I[items] = u_new, i_new
            c["table"][items] = self._item_table(i_new[:, :d])
        self._last_u[users_np] = block.t
        self._last_i[items_np] = block.t

    @_with_threads
    def predict_state(self, block: Interactions) -> np.ndarray:
        """Probability of state label 1 from each user's dynamic embedding after the event."""
        self._check_block(block)
        with torch.no_grad():
            c = self._params64()
            users = torch.as_tensor(block.user.astype(np.int64), device=self._dev)
            h = self._U[users, :self.embedding_size].double()
            logits = F.linear(F.relu(F.linear(h, c["head1_w"], c["head1_b"])),
                              c["head2_w"], c["head2_b"])
            return torch.softmax(logits, 1)[:, 1].float().cpu().numpy()
