"""LatentCross (Beutel, Covington, Jain, Xu, Li, Gatto, Chi, WSDM 2018) as the JODIE paper
(KDD 2019) ran it."""

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

from harness.api import Model, progress, resolve_device
from harness.errors import UsageError
from harness.interactions import Interactions

__all__ = ["LatentCross", "latent_cross"]

_F = TypeVar("_F", bound=Callable[..., Any])
CELLS = ("lstm", "gru")
TIME_CONTEXTS = ("bucket", "projection")


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


def latent_cross(h: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """The latent cross: ``h * (1 + context)``, elementwise (Beutel et al., eq. 6 with one
    context, the sum of context embeddings with several)."""
    return h * (1 + context)


def _cell(kind: str, gx: torch.Tensor, state: torch.Tensor, w_hh: torch.Tensor,
          b_hh: torch.Tensor, d: int) -> torch.Tensor:
    """One recurrent step from the input part ``gx`` of the gates; ``state`` is ``[h | c]``
    (LSTM, torch's gate order i, f, g, o, both biases folded into ``gx``, ``b_hh`` unused) or ``h``
    (GRU, torch's order r, z, n with ``b_hh`` apart)."""
    h = state[:, :d]
    if kind == "lstm":
        i, f, g, o = (gx + h @ w_hh.t()).chunk(4, 1)
        c = torch.sigmoid(f) * state[:, d:] + torch.sigmoid(i) * torch.tanh(g)
        return torch.cat([torch.sigmoid(o) * torch.tanh(c), c], 1)
    gh = h @ w_hh.t() + b_hh
    xr, xz, xn = gx.chunk(3, 1)
    hr, hz, hn = gh.chunk(3, 1)
    r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
    n = torch.tanh(xn + r * hn)
    return (1 - z) * n + z * h


class _Net(nn.Module):
    def __init__(self, d: int, n_items: int, n_features: int, cell: str, n_context: int | None,
                 generator: torch.Generator) -> None:
        super().__init__()
        g = generator
        b = 1.0 / math.sqrt(d)

        def uniform(*shape: int, bound: float = b) -> nn.Parameter:
            return nn.Parameter((torch.rand(*shape, generator=g) * 2 - 1) * bound)

        def normal(*shape: int, std: float) -> nn.Parameter:
            return nn.Parameter(torch.randn(*shape, generator=g) * std)

        gates = 4 if cell == "lstm" else 3
        self.item_in = normal(n_items, d, std=0.1)  # one-hot item inputs, as lookups
        # Context embeddings: the current event's (input) and the next request's (output).
        if n_context is not None:
            self.ctx_in = normal(n_context, d, std=0.1)
            self.ctx_out = normal(n_context, d, std=0.1)
        else:  # projection of the standardised log gap: w * z + b
            self.ctx_in_w, self.ctx_in_b = normal(d, std=0.1), normal(d, std=0.1)
            self.ctx_out_w, self.ctx_out_b = normal(d, std=0.1), normal(d, std=0.1)
        self.w_ih, self.w_hh = uniform(gates * d, d + n_features), uniform(gates * d, d)
        self.b_ih = uniform(gates * d)
        self.b_hh = uniform(gates * d)
        self.relu_w, self.relu_b = uniform(d, d), uniform(d)
        self.item_out, self.item_out_b = uniform(n_items, d), uniform(n_items)
        self.head1_w, self.head1_b = uniform(50, d), uniform(50)
        hb = 1.0 / math.sqrt(50)
        self.head2_w, self.head2_b = uniform(2, 50, bound=hb), uniform(2, bound=hb)


class LatentCross(Model):
    """LatentCross: a recurrent model over each user's item sequence whose input is multiplied by
    ``1 + context embedding`` of the current event and whose output by ``1 + context embedding``
    of the next request, then a ReLU layer and a softmax over all items.

    What is the paper's (Beutel et al., WSDM 2018): the latent cross ``h * (1 + w_c)`` at the
    recurrent cell's input (context of the current event) and output (context of the next
    request), time as context, a ReLU layer before the softmax; a GRU cell. What JODIE's
    experiment set (section 4): LSTM cells (the default; ``cell="gru"`` is the paper's), 128-d
    embeddings, one-hot item inputs, 50 epochs. Chosen here, as parameters or stated:

    - time context = ``log(1 + seconds since the user's previous event)``: for an event's input
      the gap before it, for a request the gap from the user's last event to the request's time.
      ``time_context="bucket"`` (default) embeds it by ``time_buckets`` equal-width buckets of the
      log gap up to the training part's largest (plus one bucket for a user's first event);
      ``"projection"`` uses ``w * z + b`` of the standardised log gap (0 for a first event);
    - separate context embeddings for input and output; the events' features (``use_features``)
      are concatenated to the crossed item embedding, not crossed; the ReLU layer has
      ``embedding_size`` units; the output item embeddings are separate from the input ones;
    - training: softmax cross-entropy over all items (``n_negatives=None``) or over the true item
      and ``n_negatives`` uniformly sampled items shared by a window; t-Batch inside ``windows``
      equal time windows with one Adam step per window and backpropagation through the window,
      as JODIE trains (items carry no state here, so a t-batch only needs distinct users);
    - initial states are zeros; the state-change head is JODIE's (Linear-ReLU-Linear on the
      user's hidden state, cross-entropy weighted by the class ratio).

    Rows of ``score`` depend only on their own user's state and the request's time, so block
    evaluation equals one-at-a-time evaluation.

    Parameters
    ----------
    embedding_size: dimension of the hidden state, item and context embeddings.
    cell: ``"lstm"`` (JODIE's experiments) or ``"gru"`` (the LatentCross paper).
    time_context: ``"bucket"`` or ``"projection"`` (see above); time_buckets: bucket count.
    learning_rate, weight_decay: Adam's (weight decay as L2 in the gradient, torch's Adam).
    windows: number of equal time windows of the training stream (one Adam step each).
    n_negatives: ``None`` for softmax over all items; an integer for sampled softmax.
    use_features: feed the events' features into the cell.
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
        cell: str = "lstm",
        time_context: str = "bucket",
        time_buckets: int = 32,
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
        self.cell = cell
        self.time_context = time_context
        self.time_buckets = time_buckets
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
            "time_buckets": trial.suggest_categorical("time_buckets", [8, 16, 32, 64]),
        }

    # -- set-up ---------------------------------------------------------------------------------

    def _check_params(self) -> None:
        for name in ("embedding_size", "windows", "time_buckets"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise UsageError(f"LatentCross {name} must be a positive integer, but got {value!r}")
        if self.cell not in CELLS:
            raise UsageError(f"LatentCross cell must be one of {CELLS}, but got {self.cell!r}")
        if self.time_context not in TIME_CONTEXTS:
            raise UsageError(f"LatentCross time_context must be one of {TIME_CONTEXTS}, "
                             f"but got {self.time_context!r}")
        if self.n_negatives is not None and (
            not isinstance(self.n_negatives, (int, np.integer)) or self.n_negatives < 1
        ):
            raise UsageError(
                f"LatentCross n_negatives must be None (softmax over all items) or a positive "
                f"integer, but got {self.n_negatives!r}"
            )
        for name in ("learning_rate", "weight_decay", "state_loss_weight"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0 or not math.isfinite(value):
                raise UsageError(f"LatentCross {name} must be a finite number >= 0, but got {value!r}")

    @property
    def _width(self) -> int:
        return 2 * self.embedding_size if self.cell == "lstm" else self.embedding_size

    @_with_threads
    def fit(self, train: Interactions, *, seed: int = 0) -> None:
        """Build the network (seeded), the time contexts and the t-Batch plans of ``train``."""
        self._check_params()
        if len(train) == 0:
            raise UsageError("LatentCross needs at least one training event, but the training "
                             "part is empty")
        d, nu, ni = self.embedding_size, train.n_users, train.n_items
        nf = train.n_features if self.use_features else 0
        self._n_users, self._n_items, self._n_features = nu, ni, train.n_features
        self._dev = dev = resolve_device(self.device)
        user, item, t = train.user.astype(np.int64), train.item.astype(np.int64), train.t
        gap, has = log_gaps(user, t)
        seen = gap[has]
        self._gap_max = float(seen.max()) if seen.size and seen.max() > 0 else 1.0
        self._gap_stats = (float(seen.mean()), float(seen.std()) if seen.size and seen.std() > 0
                           else 1.0) if seen.size else (0.0, 1.0)
        as_long = lambda a: torch.as_tensor(np.array(a, dtype=np.int64), device=dev)  # noqa: E731
        self._item_t, self._label_t = as_long(item), as_long(train.label)
        self._item_np = item
        self._ctx = self._context(gap, has)
        self._features = torch.as_tensor(np.array(train.features[:, :nf]), dtype=torch.float32,
                                         device=dev)
        self._plans = [plan_window(user[a:b], item[a:b], a, item_state=False)
                       for a, b in time_windows(t, self.windows)]
        positives = int(train.label.sum())
        self._use_state = self.state_loss_weight > 0 and positives > 0
        self._class_weight = torch.tensor([1.0, len(train) / (1.0 + positives)], device=dev)
        gen = torch.Generator().manual_seed(int(seed))
        n_context = self.time_buckets + 1 if self.time_context == "bucket" else None
        self._net = _Net(d, ni, nf, self.cell, n_context, gen).to(dev)
        self._opt = torch.optim.Adam(self._net.parameters(), lr=self.learning_rate,
                                     weight_decay=self.weight_decay,
                                     fused=dev.type in ("cpu", "cuda"))
        self._seed = int(seed)
        self._epochs = 0
        last_u = np.full(nu, np.nan)
        last_u[user] = t
        self._train_end = last_u
        self._reset_state()
        self.fit_report = {
            "cell": self.cell,
            "time_context": self.time_context if self.time_context == "projection"
            else f"bucket({self.time_buckets}, log gap up to {self._gap_max:.2f})",
            "loss": "softmax over all items" if self.n_negatives is None
            else f"sampled softmax, {self.n_negatives} uniform negatives per window",
            "windows": len(self._plans),
            "tbatches": int(sum(len(p.bounds) - 1 for p in self._plans)),
        }

    def _context(self, gap: np.ndarray, has: np.ndarray) -> torch.Tensor:
        """Bucket ids (long) or standardised log gaps (``(n, 1)`` float) of events or requests."""
        if self.time_context == "bucket":
            b = np.clip(np.floor(gap / self._gap_max * self.time_buckets), 0,
                        self.time_buckets - 1).astype(np.int64)
            return torch.as_tensor(np.where(has, b, self.time_buckets), device=self._dev)
        mu, sd = self._gap_stats
        z = np.where(has, (gap - mu) / sd, 0.0)
        return torch.as_tensor(z, dtype=torch.float32, device=self._dev)[:, None]

    def _context_vectors(self, ctx: torch.Tensor, which: str,
                         params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        p = params if params is not None else dict(self._net.named_parameters())
        if self.time_context == "bucket":
            return p[f"ctx_{which}"][ctx]
        return ctx.to(p[f"ctx_{which}_w"].dtype) * p[f"ctx_{which}_w"] + p[f"ctx_{which}_b"]

    def _reset_state(self) -> None:
        """Zero recurrent states for every user (start of every epoch)."""
        self._U = torch.zeros(self._n_users, self._width, device=self._dev)
        self._last_u = self._train_end.copy()
        self._cache: dict[str, torch.Tensor] | None = None

    # -- training -------------------------------------------------------------------------------

    @_with_threads
    def train_epoch(self) -> dict[str, float]:
        """One pass over the training windows; returns the summed losses of the epoch."""
        if not hasattr(self, "_net"):
            raise UsageError("LatentCross.train_epoch() was called before fit()")
        self._reset_state()
        rng = np.random.default_rng([self._seed, self._epochs])
        totals = {"loss": 0.0, "ranking": 0.0, "state": 0.0}
        for plan in progress(self._plans, unit="window"):
            for k, v in self._train_window(plan, rng).items():
                totals[k] += v
        self._epochs += 1
        return totals

    def _train_window(self, plan: Plan, rng: np.random.Generator) -> dict[str, float]:
        net, d, dev, w = self._net, self.embedding_size, self._dev, self._width
        as_long = lambda a: torch.as_tensor(a, dtype=torch.long, device=dev)  # noqa: E731
        ev = as_long(plan.order)
        m = plan.size
        items, ctx = self._item_t[ev], self._ctx[ev]
        x = torch.cat([latent_cross(net.item_in[items], self._context_vectors(ctx, "in")),
                       self._features[ev]], 1)
        gx = torch.addmm(net.b_ih if self.cell == "gru" else net.b_ih + net.b_hh, x, net.w_ih.t())
        init_u = as_long(plan.init_users)
        ext = torch.cat([torch.zeros(m, w, device=dev), self._U[init_u]])
        reads = as_long(plan.read_user)
        bounds = plan.bounds.tolist()
        for k in range(len(bounds) - 1):
            a, b = bounds[k], bounds[k + 1]
            new = _cell(self.cell, gx[a:b], ext.index_select(0, reads[a:b]), net.w_hh,
                        net.b_hh, d)
            ext = ext.slice_scatter(new, 0, a, b)
        h_prev = ext.index_select(0, reads)[:, :d]
        logits = self._logits(h_prev, self._context_vectors(ctx, "out"), dict(net.named_parameters()))
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
            l_state = self.state_loss_weight * F.cross_entropy(
                self._head(ext[:m, :d], dict(net.named_parameters())), self._label_t[ev],
                weight=self._class_weight)
            loss = loss + l_state
        loss.backward()
        self._opt.step()
        self._opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            self._U[as_long(plan.final_users)] = ext[as_long(plan.final_user_rows)]
        return {"loss": float(loss.detach()), "ranking": float(l_rank.detach()),
                "state": float(l_state.detach())}

    @staticmethod
    def _logits(h: torch.Tensor, ctx_out: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
        """Output latent cross with the next request's context, ReLU layer, scores of all items."""
        z = F.relu(F.linear(latent_cross(h, ctx_out), p["relu_w"], p["relu_b"]))
        return F.linear(z, p["item_out"], p["item_out_b"])

    @staticmethod
    def _head(h: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.linear(F.relu(F.linear(h, p["head1_w"], p["head1_b"])), p["head2_w"], p["head2_b"])

    # -- evaluation -----------------------------------------------------------------------------
    # Frozen evaluation computes in float64 from the float32 parameters and states and rounds
    # stored states and scores to float32, so that a row does not depend on its block's size.

    def _params64(self) -> dict[str, torch.Tensor]:
        if self._cache is None:
            self._cache = {n: p.detach().double() for n, p in self._net.named_parameters()}
        return self._cache

    def _check_block(self, block: Interactions) -> None:
        if not hasattr(self, "_net"):
            raise UsageError("LatentCross was asked to predict before fit()")
        if block.n_features != self._n_features:
            raise UsageError(
                f"LatentCross was trained with {self._n_features} features per event, but this "
                f"block has {block.n_features}; evaluate on the stream it was trained on"
            )
        if block.n_users > self._n_users or block.n_items > self._n_items:
            raise UsageError(
                f"the block has {block.n_users} users and {block.n_items} items, more than the "
                f"{self._n_users} users and {self._n_items} items LatentCross was fitted with"
            )

    def _request_context(self, block: Interactions) -> tuple[np.ndarray, torch.Tensor]:
        users = block.user.astype(np.int64)
        last = self._last_u[users]
        has = ~np.isnan(last)
        gap = np.where(has, np.log1p(np.maximum(block.t - np.nan_to_num(last), 0.0)), 0.0)
        return users, self._context(gap, has)

    @_with_threads
    def score(self, block: Interactions) -> np.ndarray:
        """Softmax logits over all items from the user's state crossed with the request's time."""
        self._check_block(block)
        with torch.no_grad():
            c = self._params64()
            users, ctx = self._request_context(block)
            h = self._U[torch.as_tensor(users, device=self._dev), :self.embedding_size].double()
            out = self._logits(h, self._context_vectors(ctx, "out", c), c)
            return out.float().cpu().numpy()

    @_with_threads
    def observe(self, block: Interactions) -> None:
        """One recurrent step of the block's users (frozen parameters)."""
        self._check_block(block)
        with torch.no_grad():
            c, dev = self._params64(), self._dev
            users, ctx = self._request_context(block)
            items = torch.as_tensor(block.item.astype(np.int64), device=dev)
            nf = self._n_features if self.use_features else 0
            feats = torch.as_tensor(np.array(block.features[:, :nf]), dtype=torch.float64,
                                    device=dev)
            x = torch.cat([latent_cross(c["item_in"][items], self._context_vectors(ctx, "in", c)),
                           feats], 1)
            b_in = c["b_ih"] if self.cell == "gru" else c["b_ih"] + c["b_hh"]
            gx = x @ c["w_ih"].t() + b_in
            u = torch.as_tensor(users, device=dev)
            self._U[u] = _cell(self.cell, gx, self._U[u].double(), c["w_hh"], c["b_hh"],
                               self.embedding_size).float()
        self._last_u[users] = block.t

    @_with_threads
    def predict_state(self, block: Interactions) -> np.ndarray:
        """Probability of state label 1 from each user's hidden state after the event."""
        self._check_block(block)
        with torch.no_grad():
            c = self._params64()
            users = torch.as_tensor(block.user.astype(np.int64), device=self._dev)
            logits = self._head(self._U[users, :self.embedding_size].double(), c)
            return torch.softmax(logits, 1)[:, 1].float().cpu().numpy()
