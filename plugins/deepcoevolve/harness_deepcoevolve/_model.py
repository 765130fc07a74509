"""DeepCoevolve (Dai, Wang, Trivedi, Song, 2016) as the JODIE paper (KDD 2019) ran it."""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from harness_rrn import Plan, log_gaps, plan_window, time_windows
from torch import nn

from harness.api import Model
from harness.errors import UsageError
from harness.interactions import Interactions

__all__ = ["DeepCoevolve", "max_norm", "pair_scores", "recurrence_reference"]

_F = TypeVar("_F", bound=Callable[..., Any])
CELLS = ("gru", "rnn")
RANK_BY = ("intensity", "rate", "density")


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


def max_norm(x: torch.Tensor, radius: float | None) -> torch.Tensor:
    """Rows of ``x`` scaled down to L2 norm ``radius`` where longer (``None``: unchanged)."""
    if radius is None:
        return x
    norm = x.norm(dim=-1, keepdim=True)
    return x * torch.clamp(radius / norm.clamp_min(1e-12), max=1.0)


def pair_scores(rate: torch.Tensor, gap: torch.Tensor, rank_by: str) -> torch.Tensor:
    """Ranking scores of user-item pairs from ``rate = u . i`` (the log of ``c``) and ``gap``, the
    time since the later of the pair's last events (in time units, floored above 0).

    ``intensity``: ``log lambda = log c + log gap`` (the Rayleigh intensity ``c * gap``);
    ``rate``: ``log c``; ``density``: ``log c + log gap - c gap^2 / 2``, the log-density of the
    pair's next event at this time."""
    if rank_by == "rate":
        return rate
    out = rate + torch.log(gap)
    if rank_by == "density":
        out = out - torch.exp(rate) * gap * gap / 2
    return out


def _cell(kind: str, gx: torch.Tensor, h: torch.Tensor, w_hh: torch.Tensor,
          b_hh: torch.Tensor) -> torch.Tensor:
    """One update from the input part ``gx`` of the pre-activations (``b_ih`` included) and the
    node's own previous embedding ``h``: a GRU (torch's gate order r, z, n) or the paper's
    ``sigmoid(W [own, other, drift, features] + b)``."""
    gh = h @ w_hh.t() + b_hh
    if kind == "rnn":
        return torch.sigmoid(gx + gh)
    xr, xz, xn = gx.chunk(3, 1)
    hr, hz, hn = gh.chunk(3, 1)
    r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
    n = torch.tanh(xn + r * hn)
    return (1 - z) * n + z * h


def _tbatch_step(kind: str, radius: float | None, gx_u: torch.Tensor, gx_i: torch.Tensor,
                 u: torch.Tensor, i: torch.Tensor, w_u: torch.Tensor, w_i: torch.Tensor,
                 u_w_hh: torch.Tensor, u_b_hh: torch.Tensor, i_w_hh: torch.Tensor,
                 i_b_hh: torch.Tensor) -> torch.Tensor:
    """One t-batch: users from ``[item, drift, features]``, items from ``[user, drift,
    features]``, both from the embeddings before it; ``(n, 2, d)`` projected embeddings."""
    u_new = _cell(kind, torch.addmm(gx_u, i, w_u.t()), u, u_w_hh, u_b_hh)
    i_new = _cell(kind, torch.addmm(gx_i, u, w_i.t()), i, i_w_hh, i_b_hh)
    return torch.stack([max_norm(u_new, radius), max_norm(i_new, radius)], 1)


def recurrence_reference(gx_u: torch.Tensor, gx_i: torch.Tensor, init: torch.Tensor,
                         read_u: torch.Tensor, read_i: torch.Tensor, bounds: list[int], kind: str,
                         radius: float | None, *weights: torch.Tensor) -> torch.Tensor:
    """The t-batch recurrence written plainly with autograd (the reference :class:`_Recurrence`
    is tested against). ``gx_u``, ``gx_i``: input parts (drift, features, bias) of the updates by
    position; ``read_u[p]``, ``read_i[p]``: the table rows position ``p``'s user and item start
    from; ``weights``: see :func:`_tbatch_step`. Returns the table: row ``2p`` (``2p+1``) the
    user's (item's) embedding after position ``p``, then ``init``."""
    m, d = gx_u.shape[0], init.shape[1]
    ext = torch.cat([torch.zeros(2 * m, d, dtype=init.dtype, device=init.device), init])
    for k in range(len(bounds) - 1):
        a, b = bounds[k], bounds[k + 1]
        new = _tbatch_step(kind, radius, gx_u[a:b], gx_i[a:b], ext.index_select(0, read_u[a:b]),
                           ext.index_select(0, read_i[a:b]), *weights)
        ext = ext.slice_scatter(new.view(2 * (b - a), d), 0, 2 * a, 2 * b)
    return ext


class _Recurrence(torch.autograd.Function):
    """:func:`recurrence_reference` with a backward pass that walks the t-batches one at a time.

    Autograd on the plain loop copies (and back-propagates) the whole window table at every
    t-batch, so a window costs the square of its size. Here each t-batch's step is a small graph
    of its own, on detached copies of the rows it reads; its output is written into the table in
    place, and the backward pass runs the t-batches' graphs in reverse, adding the gradients of
    their inputs to the rows they read."""

    @staticmethod
    def forward(ctx: Any, gx_u: torch.Tensor, gx_i: torch.Tensor, init: torch.Tensor,
                read_u: torch.Tensor, read_i: torch.Tensor, bounds: list[int], kind: str,
                radius: float | None, *weights: torch.Tensor) -> torch.Tensor:
        m, d = gx_u.shape[0], init.shape[1]
        ext = torch.empty(2 * m + init.shape[0], d, dtype=init.dtype, device=init.device)
        ext[2 * m:] = init
        leaves = [w.detach().requires_grad_() for w in weights]
        steps = []
        with torch.enable_grad():
            for k in range(len(bounds) - 1):
                a, b = bounds[k], bounds[k + 1]
                inputs = [gx_u[a:b].detach().requires_grad_(), gx_i[a:b].detach().requires_grad_(),
                          ext.index_select(0, read_u[a:b]).requires_grad_(),
                          ext.index_select(0, read_i[a:b]).requires_grad_()]
                out = _tbatch_step(kind, radius, *inputs, *leaves)
                ext[2 * a:2 * b] = out.detach().view(2 * (b - a), d)
                steps.append((inputs, out))
        ctx.save_for_backward(read_u, read_i)
        ctx.steps, ctx.leaves, ctx.bounds, ctx.shape = steps, leaves, bounds, (m, d)
        return ext

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        read_u, read_i = ctx.saved_tensors
        bounds, leaves, (m, d) = ctx.bounds, ctx.leaves, ctx.shape
        grad = grads[0].clone()
        d_gx = [torch.empty(m, leaves[0].shape[0], dtype=grad.dtype, device=grad.device)
                for _ in range(2)]
        d_w = [torch.zeros_like(w) for w in leaves]
        for k in range(len(bounds) - 2, -1, -1):
            a, b = bounds[k], bounds[k + 1]
            inputs, out = ctx.steps[k]
            got = torch.autograd.grad(out, inputs + leaves, grad[2 * a:2 * b].view(b - a, 2, d))
            d_gx[0][a:b], d_gx[1][a:b] = got[0], got[1]
            grad.index_add_(0, read_u[a:b], got[2])
            grad.index_add_(0, read_i[a:b], got[3])
            for acc, g in zip(d_w, got[4:]):
                acc += g
        ctx.steps = None
        return (d_gx[0], d_gx[1], grad[2 * m:], None, None, None, None, None, *d_w)


class _Net(nn.Module):
    def __init__(self, d: int, n_in: int, cell: str, generator: torch.Generator) -> None:
        super().__init__()
        g = generator
        b = 1.0 / math.sqrt(d)

        def uniform(*shape: int, bound: float = b) -> nn.Parameter:
            return nn.Parameter((torch.rand(*shape, generator=g) * 2 - 1) * bound)

        gates = 3 if cell == "gru" else 1
        # Inputs of an update: [other side's embedding (d), drift (1), features]; hidden: own.
        self.u_w_ih, self.u_w_hh = uniform(gates * d, d + n_in), uniform(gates * d, d)
        self.u_b_ih, self.u_b_hh = uniform(gates * d), uniform(gates * d)
        self.i_w_ih, self.i_w_hh = uniform(gates * d, d + n_in), uniform(gates * d, d)
        self.i_b_ih, self.i_b_hh = uniform(gates * d), uniform(gates * d)
        # One learned initial embedding for all users and one for all items.
        self.u0, self.i0 = uniform(d, bound=1.0), uniform(d, bound=1.0)
        self.head1_w, self.head1_b = uniform(50, d), uniform(50)
        hb = 1.0 / math.sqrt(50)
        self.head2_w, self.head2_b = uniform(2, 50, bound=hb), uniform(2, bound=hb)


def _previous(key: np.ndarray) -> np.ndarray:
    """Index of the previous event with the same key (or -1)."""
    order = np.argsort(key, kind="stable")
    prev = np.full(len(key), -1, np.int64)
    same = key[order][1:] == key[order][:-1]
    prev[order[1:][same]] = order[:-1][same]
    return prev


class _LastBefore:
    """Index of a node's last training event before a given event (vectorised lookups)."""

    def __init__(self, key: np.ndarray) -> None:
        self._n = max(len(key), 1)
        self._keys = np.sort(key.astype(np.int64) * self._n + np.arange(len(key)))

    def __call__(self, node: np.ndarray, event: np.ndarray) -> np.ndarray:
        p = np.searchsorted(self._keys, node * self._n + event) - 1
        found = self._keys[np.maximum(p, 0)]
        return np.where((p >= 0) & (found // self._n == node), found % self._n, -1)


class DeepCoevolve(Model):
    """DeepCoevolve: user and item embeddings that evolve together, each updated at an
    interaction from its own previous embedding, the other side's, the time since its own last
    event and the event's features; the pair ``(u, i)`` interacts at the Rayleigh intensity
    ``lambda(t) = exp(u . i) * (t - t')``, ``t'`` the later of their last events. Items are
    ranked by that intensity at the request's time (``rank_by``).

    What is the paper's (Dai et al., 2016, as summarised in MODELS.md): the mutually recursive
    updates ``u(t) = sigmoid(W1 u(t-) + W2 i(t-) + W3 (t - t_u) + W4 q)`` (symmetric for items),
    the intensity above, training by log-likelihood with the survival integral estimated on
    sampled pairs. What JODIE's experiment set (section 4): 128-d embeddings, 10 negative
    samples per interaction, 50 epochs. Chosen here, each a parameter or stated:

    - ``cell="gru"`` (default, as the public PyTorch forks) or ``"rnn"`` (the paper's sigmoid
      update); the drift input is the standardised ``log(1 + seconds since the node's last
      event)`` (0 at a node's first event), not raw seconds;
    - embeddings are projected to L2 norm at most ``max_norm`` after every update (the forks'
      max-norm projection), which bounds ``log c = u . i`` to ``[-max_norm^2, max_norm^2]``;
    - time in units of ``time_unit`` seconds (default a day; ``None``: the root mean square of
      the training events' pair gaps ``t - t'``), gaps floored at ``gap_floor`` seconds so that
      ``log gap`` is finite. The paper does not state its unit, and the unit sets the balance of
      the likelihood: with ``log c`` bounded, the survival terms ``c gap^2 / 2`` of long-idle
      sampled pairs dominate the loss when the unit is small (Wikipedia, 1 epoch, seed 0, MRR on
      the first 3,000 validation events: an hour 0.077, the RMS gap of 0.65 days 0.362, a day
      0.434, a week 0.441);
      a node without an earlier event counts from the first training event's time;
    - per event the loss is ``-log lambda(t) + c gap^2 / 2`` of the true pair (its survival since
      ``t'``) plus ``c gap^2 / 2`` of ``n_negatives`` pairs of the user with uniformly sampled
      items and ``n_negatives`` pairs of the item with uniformly sampled users (the forks'
      estimate, unscaled), every sampled node read at its state just before the event;
    - training: t-Batch inside ``windows`` equal time windows, the window's mean loss, one Adam
      step per window and backpropagation through the window, as JODIE trains; the initial
      embeddings are one learned vector per side (reset every epoch, as JODIE's);
    - the state-change head is JODIE's (Linear-ReLU-Linear on the user's embedding after the
      event, cross-entropy weighted by the class ratio).

    Block evaluation is exact: a block's users and items are distinct, so row ``j`` reads every
    item at the block's start except the items of events ``0..j-1``, whose updated embeddings and
    times are patched in.

    Parameters
    ----------
    embedding_size: dimension of the user and item embeddings.
    cell: ``"gru"`` or ``"rnn"`` (see above).
    n_negatives: sampled items (and, apart, sampled users) per event for the survival term.
    rank_by: ``"intensity"``, ``"rate"`` or ``"density"`` (see :func:`pair_scores`).
    max_norm: radius of the max-norm projection (``None``: no projection).
    time_unit: seconds per time unit (``None``: the root mean square training pair gap).
    gap_floor: smallest gap in seconds.
    learning_rate, weight_decay: Adam's (weight decay as L2 in the gradient, torch's Adam).
    windows: number of equal time windows of the training stream (one Adam step each).
    use_features: feed the events' features into the updates.
    state_loss_weight: weight of the state-change loss (used when training has labels).
    device: torch device for training.
    num_threads: torch threads while the model works (``None``: leave torch's setting).
    """

    capabilities: ClassVar[frozenset[str]] = frozenset({"rank", "state"})
    supports_blocks: ClassVar[bool] = True
    iterative: ClassVar[bool] = True
    default_epochs: ClassVar[int] = 50

    def __init__(
        self,
        embedding_size: int = 128,
        cell: str = "gru",
        n_negatives: int = 10,
        rank_by: str = "intensity",
        max_norm: float | None = 4.0,
        time_unit: float | None = 86400.0,
        gap_floor: float = 1.0,
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-5,
        windows: int = 500,
        use_features: bool = True,
        state_loss_weight: float = 1.0,
        device: str = "cpu",
        num_threads: int | None = 1,
    ) -> None:
        self.embedding_size = embedding_size
        self.cell = cell
        self.n_negatives = n_negatives
        self.rank_by = rank_by
        self.max_norm = max_norm
        self.time_unit = time_unit
        self.gap_floor = gap_floor
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.windows = windows
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
            "max_norm": trial.suggest_float("max_norm", 1.0, 8.0),
            "n_negatives": trial.suggest_categorical("n_negatives", [5, 10, 20, 50]),
        }

    # -- set-up ---------------------------------------------------------------------------------

    def _check_params(self) -> None:
        for name in ("embedding_size", "windows", "n_negatives"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise UsageError(f"DeepCoevolve {name} must be a positive integer, but got {value!r}")
        if self.cell not in CELLS:
            raise UsageError(f"DeepCoevolve cell must be one of {CELLS}, but got {self.cell!r}")
        if self.rank_by not in RANK_BY:
            raise UsageError(f"DeepCoevolve rank_by must be one of {RANK_BY}, but got {self.rank_by!r}")
        for name in ("max_norm", "time_unit"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, float)) or not value > 0
                                      or not math.isfinite(value)):
                raise UsageError(f"DeepCoevolve {name} must be None or a finite number > 0, "
                                 f"but got {value!r}")
        if not isinstance(self.gap_floor, (int, float)) or not 0 < self.gap_floor < math.inf:
            raise UsageError(f"DeepCoevolve gap_floor must be a finite number of seconds > 0, "
                             f"but got {self.gap_floor!r}")
        for name in ("learning_rate", "weight_decay", "state_loss_weight"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0 or not math.isfinite(value):
                raise UsageError(f"DeepCoevolve {name} must be a finite number >= 0, but got {value!r}")

    @_with_threads
    def fit(self, train: Interactions, *, seed: int = 0) -> None:
        """Build the network (seeded), the drift and gap inputs and the t-Batch plans of
        ``train``."""
        self._check_params()
        if len(train) == 0:
            raise UsageError("DeepCoevolve needs at least one training event, but the training "
                             "part is empty")
        d, nu, ni = self.embedding_size, train.n_users, train.n_items
        nf = train.n_features if self.use_features else 0
        self._n_users, self._n_items, self._n_features = nu, ni, train.n_features
        self._dev = dev = torch.device(self.device)
        user, item, t = train.user.astype(np.int64), train.item.astype(np.int64), train.t
        self._t0 = float(t[0])
        gu, _ = log_gaps(user, t)
        gi, _ = log_gaps(item, t)
        self._drift_stats = tuple(float(v) for g in (gu, gi)
                                  for v in (g.mean(), g.std() if g.std() > 0 else 1.0))
        prev_u, prev_i = _previous(user), _previous(item)
        self._prev_t = (np.where(prev_u >= 0, t[prev_u], self._t0),
                        np.where(prev_i >= 0, t[prev_i], self._t0))
        pair_gap = np.maximum(t - np.maximum(*self._prev_t), self.gap_floor)
        self._unit = float(self.time_unit or np.sqrt(np.mean(pair_gap ** 2)))
        self._last_before = (_LastBefore(user), _LastBefore(item))
        self._user_np, self._item_np, self._t_np = user, item, t
        as_long = lambda a: torch.as_tensor(np.array(a, dtype=np.int64), device=dev)  # noqa: E731
        self._label_t = as_long(train.label)
        drift = np.stack([self._std(gu, 0), self._std(gi, 1)], 1)
        self._inputs = torch.as_tensor(np.concatenate([drift, train.features[:, :nf]], 1),
                                       dtype=torch.float32, device=dev)
        self._plans = [plan_window(user[a:b], item[a:b], a, item_state=True)
                       for a, b in time_windows(t, self.windows)]
        positives = int(train.label.sum())
        self._use_state = self.state_loss_weight > 0 and positives > 0
        self._class_weight = torch.tensor([1.0, len(train) / (1.0 + positives)], device=dev)
        gen = torch.Generator().manual_seed(int(seed))
        self._net = _Net(d, 1 + nf, self.cell, gen).to(dev)
        self._opt = torch.optim.Adam(self._net.parameters(), lr=self.learning_rate,
                                     weight_decay=self.weight_decay,
                                     fused=dev.type in ("cpu", "cuda"))
        self._seed = int(seed)
        self._epochs = 0
        last_u = np.full(nu, np.nan)
        last_u[user] = t
        last_i = np.full(ni, np.nan)
        last_i[item] = t
        self._train_end = (last_u, last_i)
        self._reset_state()
        self.fit_report = {
            "cell": self.cell,
            "rank_by": self.rank_by,
            "time_unit_seconds": self._unit,
            "loss": f"Rayleigh log-likelihood, survival on the true pair plus {self.n_negatives} "
                    f"sampled items and {self.n_negatives} sampled users per event",
            "windows": len(self._plans),
            "tbatches": int(sum(len(p.bounds) - 1 for p in self._plans)),
        }

    def _std(self, g: np.ndarray, which: int) -> np.ndarray:
        mu, sd = self._drift_stats[2 * which], self._drift_stats[2 * which + 1]
        return (g - mu) / sd

    def _reset_state(self) -> None:
        """Every user and item back at the initial embedding, never seen (start of every
        epoch); ``_seen`` tells training which rows still take the learned initial vector."""
        with torch.no_grad():
            self._U = max_norm(self._net.u0, self.max_norm).expand(self._n_users, -1).clone()
            self._I = max_norm(self._net.i0, self.max_norm).expand(self._n_items, -1).clone()
        self._seen = (torch.zeros(self._n_users, dtype=torch.bool, device=self._dev),
                      torch.zeros(self._n_items, dtype=torch.bool, device=self._dev))
        last_u, last_i = self._train_end
        self._last_u, self._last_i = last_u.copy(), last_i.copy()
        self._cache: dict[str, torch.Tensor] | None = None

    # -- training -------------------------------------------------------------------------------

    @_with_threads
    def train_epoch(self) -> dict[str, float]:
        """One pass over the training windows; returns the summed window losses of the epoch."""
        if not hasattr(self, "_net"):
            raise UsageError("DeepCoevolve.train_epoch() was called before fit()")
        self._reset_state()
        rng = np.random.default_rng([self._seed, self._epochs])
        totals = {"loss": 0.0, "likelihood": 0.0, "state": 0.0}
        for plan in self._plans:
            for k, v in self._train_window(plan, rng).items():
                totals[k] += v
        self._epochs += 1
        return totals

    def _start_rows(self, which: int, idx: torch.Tensor) -> torch.Tensor:
        """Embeddings of users (0) or items (1) at the window's start: the stored state of nodes
        seen before, the learned initial vector (with its gradient) of the others."""
        table, seen = (self._U, self._seen[0]) if which == 0 else (self._I, self._seen[1])
        init = max_norm(self._net.u0 if which == 0 else self._net.i0, self.max_norm)
        return torch.where(seen[idx, None], table[idx], init)

    def _recurrence(self, plan: Plan, init: torch.Tensor, gx_u: torch.Tensor,
                    gx_i: torch.Tensor) -> torch.Tensor:
        """Both updates of every t-batch in order; row ``2p`` (``2p+1``) of the returned table is
        the user's (item's) embedding after position ``p``, then ``init``."""
        net, d, dev = self._net, self.embedding_size, self._dev
        assert plan.read_item is not None
        reads = (torch.as_tensor(plan.read_user, device=dev),
                 torch.as_tensor(plan.read_item, device=dev))
        weights = (net.u_w_ih[:, :d], net.i_w_ih[:, :d], net.u_w_hh, net.u_b_hh, net.i_w_hh,
                   net.i_b_hh)
        return _Recurrence.apply(gx_u, gx_i, init, *reads, plan.bounds.tolist(),  # type: ignore[no-any-return]
                                 self.cell, self.max_norm, *weights)

    def _sampled_rows(self, which: int, nodes: np.ndarray, events: np.ndarray, plan: Plan,
                      pos: np.ndarray, ext: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
        """Embeddings and last-event times of sampled users (0) or items (1), each just before its
        event: the row of its last event when that lies in the window, else the window's start."""
        dev, a = self._dev, int(plan.order.min())
        last = self._last_before[which](nodes, events)
        inside = last >= a
        rows = np.where(inside, 2 * pos[np.maximum(last - a, 0)] + which, 0)
        start = self._start_rows(which, torch.as_tensor(nodes, device=dev))
        got = ext.index_select(0, torch.as_tensor(rows, device=dev))
        emb = torch.where(torch.as_tensor(inside, device=dev)[:, None], got, start)
        return emb, np.where(last >= 0, self._t_np[np.maximum(last, 0)], self._t0)

    def _train_window(self, plan: Plan, rng: np.random.Generator) -> dict[str, float]:
        net, d, dev, m = self._net, self.embedding_size, self._dev, plan.size
        as_long = lambda a: torch.as_tensor(a, dtype=torch.long, device=dev)  # noqa: E731
        ev_np = plan.order
        ev = as_long(ev_np)
        a = int(ev_np.min())
        pos = np.empty(m, np.int64)
        pos[ev_np - a] = np.arange(m)
        inputs = self._inputs[ev]  # [drift_u, drift_i, features]
        gx_u = torch.addmm(net.u_b_ih, torch.cat([inputs[:, :1], inputs[:, 2:]], 1),
                           net.u_w_ih[:, d:].t())
        gx_i = torch.addmm(net.i_b_ih, inputs[:, 1:], net.i_w_ih[:, d:].t())
        init = torch.cat([self._start_rows(0, as_long(plan.init_users)),
                          self._start_rows(1, as_long(plan.init_items))])
        ext = self._recurrence(plan, init, gx_u, gx_i)
        assert plan.read_item is not None
        u_prev = ext.index_select(0, as_long(plan.read_user))
        i_prev = ext.index_select(0, as_long(plan.read_item))
        t = self._t_np[ev_np]
        tu, ti = self._prev_t[0][ev_np], self._prev_t[1][ev_np]
        gap = lambda now, later: torch.as_tensor(  # noqa: E731
            np.maximum(now - later, self.gap_floor) / self._unit, dtype=torch.float32, device=dev)
        # Survival pairs: the user with sampled items, the item with sampled users.
        k = self.n_negatives
        reps = np.repeat(ev_np, k)
        s_items = rng.integers(0, self._n_items, size=m * k)
        s_users = rng.integers(0, self._n_users, size=m * k)
        i_neg, ti_neg = self._sampled_rows(1, s_items, reps, plan, pos, ext)
        u_neg, tu_neg = self._sampled_rows(0, s_users, reps, plan, pos, ext)
        rate = (u_prev * i_prev).sum(1)
        g_pos = gap(t, np.maximum(tu, ti))
        rate_i = (u_prev.repeat_interleave(k, 0) * i_neg).sum(1)
        rate_u = (u_neg * i_prev.repeat_interleave(k, 0)).sum(1)
        g_i = gap(np.repeat(t, k), np.maximum(np.repeat(tu, k), ti_neg))
        g_u = gap(np.repeat(t, k), np.maximum(tu_neg, np.repeat(ti, k)))
        survival = (torch.exp(rate) * g_pos.square()
                    + (torch.exp(rate_i) * g_i.square()).view(m, k).sum(1)
                    + (torch.exp(rate_u) * g_u.square()).view(m, k).sum(1)) / 2
        l_lik = (survival - rate - torch.log(g_pos)).mean()
        loss = l_lik
        l_state = torch.zeros((), device=dev)
        if self._use_state:
            l_state = self.state_loss_weight * F.cross_entropy(
                self._head(ext[0:2 * m:2], dict(net.named_parameters())), self._label_t[ev],
                weight=self._class_weight)
            loss = loss + l_state
        loss.backward()
        self._opt.step()
        self._opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            fu, fi = as_long(plan.final_users), as_long(plan.final_items)
            self._U[fu] = ext[as_long(plan.final_user_rows)]
            self._I[fi] = ext[as_long(plan.final_item_rows)]
            self._seen[0][fu] = True
            self._seen[1][fi] = True
        return {"loss": float(loss.detach()), "likelihood": float(l_lik.detach()),
                "state": float(l_state.detach())}

    @staticmethod
    def _head(h: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.linear(F.relu(F.linear(h, p["head1_w"], p["head1_b"])), p["head2_w"], p["head2_b"])

    # -- evaluation -----------------------------------------------------------------------------
    # Frozen evaluation computes in float64 from the float32 parameters and embeddings and rounds
    # stored embeddings and scores to float32, so that a row does not depend on its block's size.

    def _params64(self) -> dict[str, torch.Tensor]:
        if self._cache is None:
            self._cache = {n: p.detach().double() for n, p in self._net.named_parameters()}
            self._cache["items"] = self._I.double()
        return self._cache

    def _check_block(self, block: Interactions) -> None:
        if not hasattr(self, "_net"):
            raise UsageError("DeepCoevolve was asked to predict before fit()")
        if block.n_features != self._n_features:
            raise UsageError(
                f"DeepCoevolve was trained with {self._n_features} features per event, but this "
                f"block has {block.n_features}; evaluate on the stream it was trained on"
            )
        if block.n_users > self._n_users or block.n_items > self._n_items:
            raise UsageError(
                f"the block has {block.n_users} users and {block.n_items} items, more than the "
                f"{self._n_users} users and {self._n_items} items DeepCoevolve was fitted with"
            )

    def _steps64(self, block: Interactions, n: int, sides: str = "ui") -> dict[str, torch.Tensor]:
        """Updated embeddings (float32) of the users (``"u"`` in ``sides``) and items (``"i"``) of
        the first ``n`` events of a block, whose users and items are distinct, from the embeddings
        before them."""
        c, dev = self._params64(), self._dev
        users_np, items_np = block.user[:n].astype(np.int64), block.item[:n].astype(np.int64)
        emb = {"u": self._U[torch.as_tensor(users_np, device=dev)].double(),
               "i": c["items"][torch.as_tensor(items_np, device=dev)]}
        last = {"u": self._last_u[users_np], "i": self._last_i[items_np]}
        nf = self._n_features if self.use_features else 0
        feats = np.array(block.features[:n, :nf], dtype=np.float64)
        out = {}
        for side in sides:
            other = emb["i" if side == "u" else "u"]
            g = np.log1p(np.maximum(block.t[:n] - last[side], 0.0))
            drift = self._std(np.where(np.isnan(g), 0.0, g), 0 if side == "u" else 1)[:, None]
            x = torch.as_tensor(np.concatenate([drift, feats], 1), device=dev)
            gx = torch.cat([other, x], 1) @ c[f"{side}_w_ih"].t() + c[f"{side}_b_ih"]
            new = _cell(self.cell, gx, emb[side], c[f"{side}_w_hh"], c[f"{side}_b_hh"])
            out[side] = max_norm(new, self.max_norm).float()
        return out

    def _gaps(self, t: np.ndarray, t_user: np.ndarray, t_item: np.ndarray) -> torch.Tensor:
        later = np.fmax(t_user, t_item)  # a node never seen counts from t0, before every time
        later = np.where(np.isnan(later), self._t0, later)
        return torch.as_tensor(np.maximum(t - later, self.gap_floor) / self._unit, device=self._dev)

    @_with_threads
    def score(self, block: Interactions) -> np.ndarray:
        """Scores of all items by the pair intensity at each request's time (``rank_by``)."""
        self._check_block(block)
        with torch.no_grad():
            c, dev, b = self._params64(), self._dev, len(block)
            users_np = block.user.astype(np.int64)
            q = self._U[torch.as_tensor(users_np, device=dev)].double()
            rate = q @ c["items"].t()
            t_items = np.broadcast_to(self._last_i, (b, self._n_items)).copy()
            if b > 1:  # items updated by earlier events of the block, patched into later rows
                new = self._steps64(block, b - 1, "i")["i"]
                jj, ii = np.tril_indices(b, -1)
                cols = block.item[ii].astype(np.int64)
                jt = torch.as_tensor(jj, device=dev)
                rate[jt, torch.as_tensor(cols, device=dev)] = (q @ new.double().t())[
                    jt, torch.as_tensor(ii, device=dev)]
                t_items[jj, cols] = block.t[ii]
            gap = self._gaps(block.t[:, None], self._last_u[users_np][:, None], t_items)
            return pair_scores(rate, gap, self.rank_by).float().cpu().numpy()

    @_with_threads
    def observe(self, block: Interactions) -> None:
        """Both updates of the block's users and items (frozen parameters)."""
        self._check_block(block)
        with torch.no_grad():
            c, dev = self._params64(), self._dev
            new = self._steps64(block, len(block))
            u_new, i_new = new["u"], new["i"]
            users = torch.as_tensor(block.user.astype(np.int64), device=dev)
            items = torch.as_tensor(block.item.astype(np.int64), device=dev)
            self._U[users], self._I[items] = u_new, i_new
            c["items"][items] = i_new.double()
        self._last_u[block.user] = block.t
        self._last_i[block.item] = block.t

    @_with_threads
    def predict_state(self, block: Interactions) -> np.ndarray:
        """Probability of state label 1 from each user's embedding after the event."""
        self._check_block(block)
        with torch.no_grad():
            c = self._params64()
            users = torch.as_tensor(block.user.astype(np.int64), device=self._dev)
            logits = self._head(self._U[users].double(), c)
            return torch.softmax(logits, 1)[:, 1].float().cpu().numpy()
