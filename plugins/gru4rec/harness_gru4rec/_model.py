"""GRU4Rec: the session-based recommender of Hidasi et al., as its official implementation runs it.

Written from the papers (ICLR 2016, "Session-based recommendations with recurrent neural
networks"; CIKM 2018, "Recurrent neural networks with top-k gains for session-based
recommendations") and checked against the author's official code (``hidasib/GRU4Rec_PyTorch_Official``,
``gru4rec_pytorch.py``; ``hidasib/GRU4Rec``, the Theano original): session-parallel
mini-batches, one gradient step per mini-batch step with the hidden state carried (detached)
from step to step, scores ``h W_y^T + b_y`` restricted in training to the mini-batch's targets
plus shared popularity-sampled negatives, cross-entropy / BPR-max (on ELU-transformed scores) /
TOP1-max losses summed over the rows and divided by the batch size, optional logQ correction by
the log of raw training counts, constrained (shared input/output) embeddings, dropout on the
input embedding (on the first GRU layer's output in one-hot mode) and on the hidden state, and
Adagrad with momentum that touches only the rows of the item tables used by a step.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from harness.api import Model, progress, resolve_device
from harness.errors import UsageError
from harness.interactions import Interactions
from harness_gru4rec._batching import (
    session_parallel_batches,
    session_sequences,
    session_starts,
    user_order,
)
from harness_gru4rec._losses import LOSSES
from harness_gru4rec._sampling import PopularitySampler

__all__ = ["GRU4Rec"]

_EPS = 1e-6  # Adagrad's epsilon
_NO_SESSION = np.iinfo(np.int64).min


def _gru_cell(gx: torch.Tensor, h: torch.Tensor, wh: torch.Tensor) -> torch.Tensor:
    """One GRU step (Cho et al., as in the GRU4Rec paper): ``gx`` is the input's projection
    ``x W_x + b`` for the reset, update and candidate parts, ``wh`` the recurrent weights."""
    size = h.shape[1]
    rz = torch.sigmoid(gx[:, : 2 * size] + h @ wh[:, : 2 * size])
    reset, update = rz[:, :size], rz[:, size:]
    candidate = torch.tanh(gx[:, 2 * size :] + (reset * h) @ wh[:, 2 * size :])
    return h + update * (candidate - h)


def _uniform(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """The official initialisation: uniform in ``+-sqrt(6 / (rows + cols))``."""
    bound = math.sqrt(6.0 / (rows + cols))
    return rng.uniform(-bound, bound, size=(rows, cols)).astype(np.float32)


class GRU4Rec(Model):
    """GRU4Rec with session-parallel mini-batches and sampled-softmax / BPR-max training.

    The defaults are those of the official PyTorch code's ``GRU4Rec`` constructor unless noted
    ("PyTorch default" below); the training objective of every step is the loss summed over the
    step's rows divided by ``batch_size``, as in both official versions.

    Parameters
    ----------
    hidden_size, layers:
        Units per GRU layer and the number of stacked layers (PyTorch default ``layers=[100]``).
    embedding_size:
        Size of a separate input item embedding; ``0`` feeds the item as a one-hot vector (as
        the original, implemented as a row lookup of the first GRU layer's input weights).
        Ignored when ``constrained_embedding`` is set. PyTorch default ``embedding=0``.
    constrained_embedding:
        Use the output item embeddings ``W_y`` as the input embeddings (PyTorch default True).
    loss:
        ``"cross-entropy"`` (softmax over the mini-batch targets and the samples; PyTorch
        default), ``"bpr-max"`` or ``"top1-max"`` (the latter only in the Theano original).
    batch_size:
        Number of sessions trained in parallel; also the divisor of each step's summed loss
        (both official versions divide by the configured batch size, also on the last steps of
        an epoch when fewer sessions are left). Default 32, the Theano original's default (the
        PyTorch code's is 64).
    learning_rate, momentum:
        Adagrad step size and momentum (applied to the touched rows of item tables); PyTorch
        defaults 0.05 and 0.
    dropout_embedding, dropout_hidden:
        Dropout rates (PyTorch's ``dropout_p_embed`` and ``dropout_p_hidden``, defaults 0) on
        the input embedding and on the output of every GRU layer. In one-hot mode
        (``constrained_embedding=False, embedding_size=0``) the first GRU layer plays the
        embedding's part: ``dropout_embedding`` applies to its output (which is also the state
        it carries) and ``dropout_hidden`` to the layers above it, as in the official PyTorch
        code (the Theano original applies ``dropout_hidden`` there).
    n_sample, sample_alpha:
        Extra negatives shared by the mini-batch, drawn with probability ``popularity **
        sample_alpha`` from the training items; ``0`` uses the other targets only. PyTorch
        defaults 2048 and 0.5.
    logq:
        Weight of the logQ correction of the cross-entropy (PyTorch default 0): as in both
        official versions, a mini-batch target's column is lowered by ``logq * log c`` and a
        sampled column by ``logq * sample_alpha * log c``, with ``c`` the item's raw count in
        the training data (not a normalised probability).
    bpreg:
        Weight of BPR-max's score regulariser (PyTorch default 1.0).
    elu_param:
        BPR-max scores its columns after ``elu(scores, elu_param)``; ``0`` uses the raw scores.
        PyTorch default 0.5 (the author's published BPR-max configurations use 0.5 and 1).
        Not used by the other losses (PyTorch applies it in BPR-max only).
    session_gap:
        On streams without session ids: seconds of inactivity that end a session (the hidden
        state is reset). ``None`` carries a user's state over all of their events. Sessionized
        streams (the ``sessions`` protocol) use their session ids instead.
    device:
        Torch device of the parameters and states: ``auto`` (a GPU when torch sees one),
        ``cpu``, ``cuda`` or ``cuda:N``. The sampling and batching stay in numpy on the CPU.
    """

    capabilities = frozenset({"rank"})
    supports_blocks = True
    iterative = True
    default_epochs = 10

    def __init__(
        self,
        *,
        hidden_size: int = 100,
        layers: int = 1,
        embedding_size: int = 0,
        constrained_embedding: bool = True,
        loss: str = "cross-entropy",
        batch_size: int = 32,
        learning_rate: float = 0.05,
        momentum: float = 0.0,
        dropout_embedding: float = 0.0,
        dropout_hidden: float = 0.0,
        n_sample: int = 2048,
        sample_alpha: float = 0.5,
        logq: float = 0.0,
        bpreg: float = 1.0,
        elu_param: float = 0.5,
        session_gap: float | None = None,
        device: str = "auto",
    ) -> None:
        self.hidden_size = hidden_size
        self.layers = layers
        self.embedding_size = embedding_size
        self.constrained_embedding = constrained_embedding
        self.loss = loss
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.dropout_embedding = dropout_embedding
        self.dropout_hidden = dropout_hidden
        self.n_sample = n_sample
        self.sample_alpha = sample_alpha
        self.logq = logq
        self.bpreg = bpreg
        self.elu_param = elu_param
        self.session_gap = session_gap
        self.device = device

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        """Ranges around the published configurations (hidden 100-480, batch 32-128); for
        BPR-max, ``bpreg`` and ``elu_param`` as in the official BPR-max parameter space."""
        loss = trial.suggest_categorical("loss", ["cross-entropy", "bpr-max"])
        params: dict[str, Any] = {
            "loss": loss,
            "hidden_size": trial.suggest_int("hidden_size", 32, 512, log=True),
            "constrained_embedding": trial.suggest_categorical(
                "constrained_embedding", [True, False]),
            "batch_size": trial.suggest_categorical("batch_size", [32, 48, 64, 128]),
            "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.25, log=True),
            "momentum": trial.suggest_float("momentum", 0.0, 0.9),
            "dropout_embedding": trial.suggest_float("dropout_embedding", 0.0, 0.5),
            "dropout_hidden": trial.suggest_float("dropout_hidden", 0.0, 0.7),
            "n_sample": trial.suggest_categorical("n_sample", [0, 512, 2048]),
            "sample_alpha": trial.suggest_float("sample_alpha", 0.0, 1.0),
        }
        if loss == "cross-entropy":
            params["logq"] = trial.suggest_categorical("logq", [0.0, 1.0])
        else:
            params["bpreg"] = trial.suggest_float("bpreg", 0.0, 2.0)
            params["elu_param"] = trial.suggest_categorical("elu_param", [0.5, 1.0, 0.0])
        return params

    # -- parameters ---------------------------------------------------------------------------

    def _check_params(self) -> None:
        def fail(name: str, rule: str) -> None:
            raise UsageError(
                f"GRU4Rec: {name} {rule}, but got {name}={getattr(self, name)!r}; "
                f"pass e.g. --param gru4rec.{name}=<value>"
            )

        for name in ("hidden_size", "layers", "batch_size"):
            if not isinstance(getattr(self, name), (int, np.integer)) or getattr(self, name) < 1:
                fail(name, "must be an integer >= 1")
        for name in ("embedding_size", "n_sample"):
            if not isinstance(getattr(self, name), (int, np.integer)) or getattr(self, name) < 0:
                fail(name, "must be an integer >= 0")
        if self.loss not in LOSSES:
            fail("loss", f"must be one of {sorted(LOSSES)}")
        if not self.learning_rate > 0:
            fail("learning_rate", "must be > 0")
        if not 0 <= self.momentum < 1:
            fail("momentum", "must lie in [0, 1)")
        for name in ("dropout_embedding", "dropout_hidden"):
            if not 0 <= getattr(self, name) < 1:
                fail(name, "must lie in [0, 1)")
        for name in ("sample_alpha", "logq", "bpreg", "elu_param"):
            if not getattr(self, name) >= 0:
                fail(name, "must be >= 0")
        if self.session_gap is not None and not self.session_gap > 0:
            fail("session_gap", "must be > 0 seconds, or None for one sequence per user")

    def _input_mode(self) -> str:
        if self.constrained_embedding:
            return "constrained"
        return "embedding" if self.embedding_size > 0 else "onehot"

    # -- training -----------------------------------------------------------------------------

    def fit(self, train: Interactions, *, seed: int = 0) -> None:
        """Build the training sessions, the sampling distribution and fresh parameters."""
        self._check_params()
        rng = np.random.default_rng(seed)
        n_items, hidden = int(train.n_items), int(self.hidden_size)
        self._n_items, self._n_users = n_items, int(train.n_users)
        order = user_order(train.user)
        starts = session_starts(train.user, train.t, train.session, self.session_gap, order)
        self._items, self._offsets = session_sequences(train.user, train.item, starts, 2, order)

        pop = np.bincount(train.item, minlength=n_items).astype(np.float64)
        self._sampler = PopularitySampler(pop, self.sample_alpha)
        # logQ uses the log of raw counts, as the official ``log(P0[targets])`` and
        # ``log(P0[samples] ** sample_alpha)`` do (every column's item has a count >= 1).
        self._log_count = np.log(np.maximum(pop, 1.0)).astype(np.float32)

        mode = self._input_mode()
        params: dict[str, np.ndarray] = {
            "Wy": _uniform(rng, n_items, hidden),
            "By": np.zeros(n_items, np.float32),
        }
        sparse = {"Wy", "By"}
        if mode == "onehot":
            params["Wx0"] = np.concatenate([_uniform(rng, n_items, hidden) for _ in range(3)], 1)
            sparse.add("Wx0")
        else:
            width = hidden if mode == "constrained" else int(self.embedding_size)
            if mode == "embedding":
                params["E"] = _uniform(rng, n_items, width)
                sparse.add("E")
            params["Wx0"] = np.concatenate([_uniform(rng, width, hidden) for _ in range(3)], 1)
        for layer in range(self.layers):
            if layer > 0:
                params[f"Wx{layer}"] = np.concatenate(
                    [_uniform(rng, hidden, hidden) for _ in range(3)], 1)
            params[f"Wh{layer}"] = np.concatenate(
                [_uniform(rng, hidden, hidden) for _ in range(3)], 1)
            params[f"bx{layer}"] = np.zeros(3 * hidden, np.float32)
        self._dev = resolve_device(self.device)
        self._params = {k: torch.from_numpy(v).to(self._dev) for k, v in params.items()}
        self._sparse = sparse
        self._acc = {k: torch.zeros_like(v) for k, v in self._params.items()}
        self._vel = (
            {k: torch.zeros_like(v) for k, v in self._params.items()} if self.momentum > 0 else {}
        )
        self._rng = rng
        self._epochs_done = 0
        self._epoch_seconds: list[float] = []
        self._tail = self._training_tails(train, starts, order)
        self._state: dict[str, Any] | None = None
        self._eval_params: dict[str, torch.Tensor] | None = None

    @property
    def fit_report(self) -> dict[str, Any]:
        """Sizes of the training data and the training speed, for run records."""
        pairs = int(len(self._items) - (len(self._offsets) - 1)) if hasattr(self, "_items") else 0
        report: dict[str, Any] = {
            "train_sessions": int(len(self._offsets) - 1) if hasattr(self, "_offsets") else 0,
            "train_pairs": pairs,
            "epochs": getattr(self, "_epochs_done", 0),
        }
        seconds = getattr(self, "_epoch_seconds", [])
        if seconds:
            report["train_events_per_second"] = pairs / (sum(seconds) / len(seconds))
        return report

    def _training_tails(self, train: Interactions, starts: np.ndarray, order: np.ndarray
                        ) -> dict[str, np.ndarray]:
        """Each user's events since their last session start, to rebuild the evaluation state."""
        n, n_users = len(train), self._n_users
        last_t = np.full(n_users, np.nan)
        last_session = np.full(n_users, _NO_SESSION, np.int64)
        seen = np.zeros(n_users, bool)
        if n == 0:
            empty = np.zeros(0, np.int64)
            return {"users": empty, "items": empty.astype(np.int32),
                    "offsets": np.zeros(1, np.int64), "last_t": last_t,
                    "last_session": last_session, "seen": seen}
        user = train.user[order]
        segment = np.cumsum(starts[order]) - 1
        is_last = np.r_[user[1:] != user[:-1], True]
        last_segment = np.full(n_users, -1, np.int64)
        last_segment[user[is_last]] = segment[is_last]
        in_tail = segment == last_segment[user]
        tail_user, tail_item = user[in_tail], train.item[order][in_tail]
        users, first, lengths = np.unique(tail_user, return_index=True, return_counts=True)
        by_length = np.argsort(-lengths, kind="stable")  # longest first: active users are a prefix
        users, first, lengths = users[by_length], first[by_length], lengths[by_length]
        items = np.concatenate([tail_item[f : f + c] for f, c in zip(first, lengths, strict=True)])
        seen[user[is_last]] = True
        last_t[user[is_last]] = train.t[order][is_last]
        if train.session is not None:
            last_session[user[is_last]] = train.session[order][is_last]
        return {"users": users.astype(np.int64), "items": items.astype(np.int32),
                "offsets": np.r_[0, np.cumsum(lengths)].astype(np.int64),
                "last_t": last_t, "last_session": last_session, "seen": seen}

    def _require_fit(self) -> None:
        if not hasattr(self, "_params"):
            raise UsageError("GRU4Rec: call fit(train) before training or evaluating the model")

    def train_epoch(self) -> dict[str, float]:
        """One pass of session-parallel mini-batches over the training sessions."""
        self._require_fit()
        tic = time.perf_counter()
        total, count = 0.0, 0
        width = min(self.batch_size, len(self._offsets) - 1)
        state = torch.zeros(self.layers, max(width, 0), self.hidden_size, device=self._dev)
        for step in progress(session_parallel_batches(self._offsets, self.batch_size)):
            if step.keep is not None:
                state = state[:, self._t(step.keep)]
            if step.reset.any():
                state = state.masked_fill(self._t(step.reset)[None, :, None], 0.0)
            inputs = self._items[step.position]
            targets = self._items[step.position + 1]
            loss, state = self._train_step(inputs, targets, state)
            total += loss
            count += len(targets)
        self._epoch_seconds.append(time.perf_counter() - tic)
        self._epochs_done += 1
        self._state = None
        self._eval_params = None
        return {"loss": total / count if count else 0.0}

    def _dropout(self, x: torch.Tensor, rate: float) -> torch.Tensor:
        """Inverted dropout of single elements (``nn.Dropout``), drawn from the model's rng."""
        if rate <= 0:
            return x
        keep = self._rng.random(tuple(x.shape)) >= rate
        return x * self._t((keep / (1.0 - rate)).astype(np.float32))

    def _t(self, array: np.ndarray) -> torch.Tensor:
        """A numpy array as a tensor on the model's device."""
        return torch.from_numpy(np.ascontiguousarray(array)).to(self._dev)

    def _train_step(
        self, inputs: np.ndarray, targets: np.ndarray, state: torch.Tensor
    ) -> tuple[float, torch.Tensor]:
        """Forward one step for every slot and take one optimizer step on the loss summed over
        the rows divided by ``batch_size``; return the summed loss (for the epoch's per-event
        average) and the new (detached) hidden state."""
        params, mode = self._params, self._input_mode()
        samples = None
        columns = targets
        if self.n_sample > 0 and not self._sampler.empty:
            samples = self._sampler.draw(self._rng, self.n_sample)
            columns = np.concatenate([targets, samples])
        # Autograd sees gathered copies of the item rows a step uses (leaves); their gradients
        # are summed per distinct row afterwards, so no backward pass touches a whole table.
        in_t, col_t = self._t(inputs.astype(np.int64)), self._t(columns)
        wy = params["Wy"][col_t].requires_grad_()
        by = params["By"][col_t].requires_grad_()
        uses: dict[str, list[tuple[np.ndarray, torch.Tensor]]] = {
            "Wy": [(columns, wy)], "By": [(columns, by)]}
        dense = [name for name in params if name not in self._sparse]
        for name in dense:
            params[name].requires_grad_(True)
        if mode == "onehot":
            wx = params["Wx0"][in_t].requires_grad_()
            uses["Wx0"] = [(inputs, wx)]
            gx = wx + params["bx0"]
        else:
            table = "Wy" if mode == "constrained" else "E"
            x = params[table][in_t].requires_grad_()
            uses.setdefault(table, []).append((inputs, x))
            gx = self._dropout(x, self.dropout_embedding) @ params["Wx0"] + params["bx0"]
        new_state = []
        for layer in range(self.layers):
            if layer > 0:
                gx = x @ params[f"Wx{layer}"] + params[f"bx{layer}"]
            h = _gru_cell(gx, state[layer], params[f"Wh{layer}"])
            # The dropped-out output is also the state carried to the next step, as in the
            # official code. In one-hot mode the first layer is the official ``GRUEmbedding``,
            # whose output gets the embedding dropout (``self.DE``) instead of the hidden one.
            rate = self.dropout_embedding if mode == "onehot" and layer == 0 \
                else self.dropout_hidden
            x = self._dropout(h, rate)
            new_state.append(x)
        loss = self._summed_loss(torch.addmm(by, x, wy.T), targets, samples)
        (loss / self.batch_size).backward()
        with torch.no_grad():
            for name in dense:
                grad = params[name].grad
                params[name].requires_grad_(False)
                params[name].grad = None
                if grad is not None:
                    self._adagrad(name, None, grad)
            for name, parts in uses.items():
                index = np.concatenate([ix for ix, _ in parts])
                grads = torch.cat([leaf.grad for _, leaf in parts])
                rows, inverse = np.unique(index, return_inverse=True)
                summed = grads.new_zeros((len(rows),) + tuple(grads.shape[1:]))
                summed.index_add_(0, self._t(inverse), grads)
                self._adagrad(name, self._t(rows), summed)
        return float(loss.detach()), torch.stack(new_state).detach()

    def _summed_loss(self, scores: torch.Tensor, targets: np.ndarray,
                     samples: np.ndarray | None) -> torch.Tensor:
        """The step's loss summed over its rows, from the scores of the columns ``targets``
        then ``samples``; the cross-entropy first gets the logQ correction."""
        if self.loss == "cross-entropy" and self.logq > 0:
            log_q = self._log_count[targets]
            if samples is not None:
                log_q = np.concatenate([log_q, self.sample_alpha * self._log_count[samples]])
            scores = scores - self.logq * self._t(log_q).to(scores.dtype)
        return LOSSES[self.loss](scores, self.bpreg, self.elu_param)

    def _adagrad(self, name: str, rows: torch.Tensor | None, grad: torch.Tensor) -> None:
        """Adagrad with momentum; for item tables only the ``rows`` a step touched move."""
        param, acc = self._params[name], self._acc[name]
        if rows is None:
            acc.addcmul_(grad, grad)
            step = grad * self.learning_rate / (acc + _EPS).sqrt()
            if self.momentum > 0:
                velocity = self._vel[name]
                velocity.mul_(self.momentum).add_(step)
                step = velocity
            param.sub_(step)
            return
        acc_rows = acc[rows] + grad * grad
        acc[rows] = acc_rows
        step = grad * self.learning_rate / (acc_rows + _EPS).sqrt()
        if self.momentum > 0:
            step = self._vel[name][rows] * self.momentum + step
            self._vel[name][rows] = step
        param[rows] = param[rows] - step

    # -- evaluation ---------------------------------------------------------------------------

    def _evaluation_params(self) -> dict[str, torch.Tensor]:
        """The parameters in float64: evaluation computes in float64 and rounds to float32, so
        that a user's scores and state are the same whether computed in a block or alone (a
        float32 matrix product's rounding depends on the other rows of the product)."""
        if self._eval_params is None:
            self._eval_params = {k: v.double() for k, v in self._params.items()}
        return self._eval_params

    def _forward(self, items: np.ndarray, state: torch.Tensor) -> torch.Tensor:
        """The GRU's new state ``(layers, len(items), hidden)`` in float64, without dropout."""
        params, mode = self._evaluation_params(), self._input_mode()
        index = self._t(np.asarray(items, np.int64))
        if mode == "onehot":
            gx = params["Wx0"][index] + params["bx0"]
        else:
            x = params["Wy"][index] if mode == "constrained" else params["E"][index]
            gx = x @ params["Wx0"] + params["bx0"]
        out = []
        for layer in range(self.layers):
            if layer > 0:
                gx = x @ params[f"Wx{layer}"] + params[f"bx{layer}"]
            x = _gru_cell(gx, state[layer], params[f"Wh{layer}"])
            out.append(x)
        return torch.stack(out)

    def _ensure_state(self) -> dict[str, Any]:
        """Per-user hidden states after the training events, computed on first use."""
        self._require_fit()
        if self._state is not None:
            return self._state
        tail = self._tail
        hidden = torch.zeros(self.layers, self._n_users, self.hidden_size, device=self._dev)
        users, items, offsets = tail["users"], tail["items"], tail["offsets"]
        if users.size:
            lengths = np.diff(offsets)
            state = torch.zeros(self.layers, len(users), self.hidden_size, dtype=torch.float64,
                                device=self._dev)
            with torch.no_grad():
                for k in range(int(lengths[0])):
                    active = int(np.searchsorted(-lengths, -k, side="left"))  # lengths > k
                    step_items = items[offsets[:active] + k]
                    new = self._forward(step_items, state[:, :active])
                    state[:, :active] = new.float().double()
            hidden[:, self._t(users)] = state.float()
        self._state = {
            "hidden": hidden,
            "last_t": tail["last_t"].copy(),
            "last_session": tail["last_session"].copy(),
            "seen": tail["seen"].copy(),
        }
        return self._state

    def _grow(self, state: dict[str, Any], n_users: int) -> None:
        extra = n_users - state["seen"].size
        if extra <= 0:
            return
        state["hidden"] = torch.cat(
            [state["hidden"], torch.zeros(self.layers, extra, self.hidden_size, device=self._dev)],
            dim=1)
        state["last_t"] = np.r_[state["last_t"], np.full(extra, np.nan)]
        state["last_session"] = np.r_[state["last_session"], np.full(extra, _NO_SESSION)]
        state["seen"] = np.r_[state["seen"], np.zeros(extra, bool)]

    def _opens_session(self, state: dict[str, Any], users: np.ndarray, t: np.ndarray,
                       session: np.ndarray | None) -> np.ndarray:
        """Whether each event starts a new session of its user (known from its time and session
        id, never from its item)."""
        new = ~state["seen"][users]
        if session is not None:
            new |= session != state["last_session"][users]
        elif self.session_gap is not None:
            new |= (t - state["last_t"][users]) > self.session_gap
        return new

    def _check_block(self, block: Interactions) -> dict[str, Any]:
        state = self._ensure_state()
        if block.n_items != self._n_items:
            raise UsageError(
                f"GRU4Rec was fitted on {self._n_items} items but the stream {block.name!r} has "
                f"{block.n_items}; fit and evaluate on parts of one stream"
            )
        if len(block) and int(block.user.max()) >= state["seen"].size:
            self._grow(state, int(block.user.max()) + 1)
        return state

    def score(self, block: Interactions) -> np.ndarray:
        """``h_u W_y^T + b_y`` from each user's state before the block (a zero state when the
        event opens a session)."""
        state = self._check_block(block)
        users = block.user.astype(np.int64)
        new = self._opens_session(state, users, block.t, block.session)
        params = self._evaluation_params()
        with torch.no_grad():
            h = state["hidden"][-1][self._t(users)].double()
            h[self._t(new)] = 0.0
            scores = torch.addmm(params["By"], h, params["Wy"].T)
        return scores.float().cpu().numpy()

    def observe(self, block: Interactions) -> None:
        """Run the GRU one step on each event's item from its user's state (reset first when
        the event opens a session)."""
        state = self._check_block(block)
        users = block.user.astype(np.int64)
        # A user's events must go in order: the k-th event of each user in the block goes in
        # part k, and users are distinct within a part.
        occurrence = np.zeros(len(users), np.int64)
        if np.unique(users).size < len(users):
            order = np.lexsort((np.arange(len(users)), users))
            ordered = users[order]
            first = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
            sizes = np.diff(np.r_[first, len(users)])
            occurrence[order] = np.arange(len(users)) - np.repeat(first, sizes)
        with torch.no_grad():
            for level in range(int(occurrence.max()) + 1 if len(users) else 0):
                idx = np.flatnonzero(occurrence == level)
                u = users[idx]
                session = None if block.session is None else block.session[idx]
                new = self._opens_session(state, u, block.t[idx], session)
                u_t = self._t(u)
                h = state["hidden"][:, u_t].double()
                h[:, self._t(new)] = 0.0
                state["hidden"][:, u_t] = self._forward(block.item[idx], h).float()
                state["seen"][u] = True
                state["last_t"][u] = block.t[idx]
                if session is not None:
                    state["last_session"][u] = session
