"""HRNN: the hierarchical recurrent network of Quadrana et al. (RecSys 2017, "Personalizing
session-based recommendations with hierarchical recurrent neural networks"), checked against the
authors' code (``mquad/hgru4rec``, ``src/hgru4rec.py``).

A session GRU runs over a session's items and scores the next item; a user GRU takes the final
session state at every session end and initialises the next session with
``dropout(tanh(h_user W_init + b_init))``. Mode ``init`` does only that; mode ``all`` also feeds
``h_user`` to the session GRU at every step. The user state is zero at a user's first session.

Training: user-parallel mini-batches (each row of a batch is one user's next session, in time
order; :func:`harness_hrnn.user_parallel_batches`), back-propagation through each whole session,
and one optimizer step per batch; states carried from batch to batch are detached. Scores are
computed only for the batch's targets plus GRU4Rec's shared popularity-sampled negatives
(``harness_gru4rec.PopularitySampler``), and the loss is one of GRU4Rec's
(``harness_gru4rec.LOSSES``) averaged over the batch's targets: never a softmax over the whole
catalogue. Adagrad as in hgru4rec (sparse rows for the item tables, which Adagrad updates
exactly). hgru4rec steps one event per mini-batch step with a one-step truncation; whole
sessions per step (THRNN's code does the same) give the same model with full back-propagation
inside a session, and far fewer optimizer steps.

Evaluation scores all items with ``h W_y^T + b_y`` in float32 from each user's state; the
recurrences run in float64 and round to float32, and score products have a fixed minimum number
of rows, so that a row is the same bits in a block and alone.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from harness_gru4rec import LOSSES, PopularitySampler
from torch import nn

from harness.api import Model
from harness.errors import UsageError
from harness.interactions import Interactions
from harness_hrnn._sessions import (
    OnlineSessions,
    distinct_runs,
    session_table,
    user_parallel_batches,
)

__all__ = ["HRNN", "HierarchicalModel"]

Carry = dict[str, torch.Tensor]


#: Score products have at least this many rows: torch's float32 matrix product takes another
#: path for very few rows (up to 4 here), whose rounding differs; with a fixed minimum a row's
#: scores are the same bits in a block of any size and alone (``test_score_rows_are_exact``).
MIN_SCORE_ROWS = 16


def score_rows(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> np.ndarray:
    """``h W^T + b`` in float32 for every row of ``h``, padded to :data:`MIN_SCORE_ROWS` rows."""
    rows = h.shape[0]
    if rows < MIN_SCORE_ROWS:
        h = torch.cat([h, h.new_zeros(MIN_SCORE_ROWS - rows, h.shape[1])])
    return torch.addmm(bias, h, weight.T)[:rows].numpy()


def _masked_gru(cell: nn.GRUCell, x: torch.Tensor, h: torch.Tensor, lengths: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``cell`` over ``x`` ``(B, L, D)`` from ``h``; rows stop at their ``lengths``.
    Returns the outputs ``(B, L, H)`` and each row's state after its last step."""
    outputs = []
    for step in range(x.shape[1]):
        new = cell(x[:, step], h)
        h = torch.where((step < lengths)[:, None], new, h)
        outputs.append(h)
    return torch.stack(outputs, 1) if outputs else x.new_zeros(x.shape[0], 0, h.shape[1]), h


class HierarchicalModel(Model):
    """What HRNN and THRNN share: sessions, user-parallel training, the evaluation state and
    scoring. Subclasses define the network (:meth:`_network`), the per-user carry between
    sessions (:meth:`_new_carry`), how a session opens from it (:meth:`_open`) and the optimizers
    (:meth:`_optimizers`); ``_open`` returns the session's initial state, the carry's new rows
    and extra losses."""

    capabilities: ClassVar[frozenset[str]] = frozenset({"rank"})
    supports_blocks: ClassVar[bool] = True
    iterative: ClassVar[bool] = True
    #: A user's state comes from the user's own events only: evaluated user by user.
    independent_users: ClassVar[bool] = True
    _name: ClassVar[str] = "model"

    # Set by subclasses' constructors; listed here for the shared code.
    hidden_size: int
    batch_size: int
    n_sample: int
    sample_alpha: float
    session_gap: float
    max_session_length: int
    min_batch_users: int

    # -- hooks ---------------------------------------------------------------------------------

    def _network(self, n_users: int, n_items: int) -> nn.Module:
        raise NotImplementedError

    def _new_carry(self, n_users: int) -> Carry:
        raise NotImplementedError

    def _open(self, net: nn.Module, rows: Carry, users: torch.Tensor, gap: torch.Tensor,
              train: bool) -> tuple[torch.Tensor, Carry, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def _intra_input(self, net: nn.Module, items: torch.Tensor, rows: Carry, train: bool
                     ) -> torch.Tensor:
        return self._dropout(net.items(items), train)

    def _optimizers(self, net: nn.Module) -> list[torch.optim.Optimizer]:
        raise NotImplementedError

    def _total_loss(self, rec: torch.Tensor, aux: dict[str, torch.Tensor], items: torch.Tensor
                    ) -> torch.Tensor:
        """The batch's training loss from the recommendation loss, ``_open``'s extras and the
        padded items; extras named ``loss_*`` are logged per epoch."""
        return rec

    def _param(self, name: str) -> Any:
        """A parameter's value in effect (subclasses with presets resolve defaults here)."""
        return getattr(self, name)

    def _first_item_state(self, net: nn.Module, h0: torch.Tensor, aux: dict[str, torch.Tensor]
                          ) -> tuple[torch.Tensor, str]:
        """The state and output layer (``"out"``) that score a session's first item."""
        return h0, "out"

    def _check_params(self) -> None:
        for name in ("hidden_size", "batch_size", "max_session_length", "min_batch_users"):
            value = self._param(name)
            self._require(name, isinstance(value, (int, np.integer)) and not isinstance(value, bool)
                          and value >= 1, "must be an integer >= 1")
        self._require("n_sample", isinstance(self.n_sample, (int, np.integer)) and self.n_sample >= 0,
                      "must be an integer >= 0")
        self._require("sample_alpha", self.sample_alpha >= 0, "must be >= 0")
        self._require("session_gap", self._param("session_gap") > 0, "must be > 0 seconds")

    def _require(self, name: str, ok: bool, rule: str) -> None:
        if not ok:
            raise UsageError(f"{self._name}: {name} {rule}, but got {name}={getattr(self, name)!r}; "
                             f"pass e.g. --param {self._name}.{name}=<value>")

    # -- training ------------------------------------------------------------------------------

    def fit(self, train: Interactions, *, seed: int = 0) -> None:
        """Build the sessions, the sampler and fresh parameters (seeded)."""
        self._check_params()
        self._rng = np.random.default_rng(seed)
        torch.manual_seed(int(self._rng.integers(2**31)))
        self._n_users, self._n_items = int(train.n_users), int(train.n_items)
        self._table = session_table(train, float(self._param("session_gap")), int(self.max_session_length))
        counts = np.bincount(train.item, minlength=self._n_items)
        self._sampler = PopularitySampler(counts, float(self.sample_alpha))
        self._net = self._network(self._n_users, self._n_items)
        # Item tables take sparse gradients; their indices come from the model's own batches.
        torch.sparse.check_sparse_tensor_invariants.disable()
        self._opt = self._optimizers(self._net)
        self._epochs_done = 0
        self._epoch_seconds: list[float] = []
        self._trained_events = 0
        self._eval: dict[str, Any] | None = None
        self._eval_net: nn.Module | None = None

    def _require_fit(self) -> None:
        if not hasattr(self, "_net"):
            raise UsageError(f"{self._name}: call fit(train) before training or evaluating")

    @property
    def fit_report(self) -> dict[str, Any]:
        """Sizes of the training sessions and the training speed, for run records."""
        if not hasattr(self, "_table"):
            return {}
        table = self._table
        report: dict[str, Any] = {
            "train_sessions": len(table),
            "train_users": int(table.seen.sum()),
            "train_targets": int(np.maximum(table.length - 1, 0).sum()),
            "epochs": self._epochs_done,
        }
        if self._epoch_seconds:
            report["train_events_per_second"] = self._trained_events / sum(self._epoch_seconds)
            # the epoch's stop rule (min_batch_users) can leave sessions out: say how many
            report["events_per_epoch"] = self._trained_events // self._epochs_done
            report["train_events"] = int(table.length.sum())
        return report

    def _dropout(self, x: torch.Tensor, train: bool, rate: float | None = None) -> torch.Tensor:
        rate = float(self._param("dropout")) if rate is None else rate
        return F.dropout(x, rate, training=True) if train and rate > 0 else x

    def train_epoch(self) -> dict[str, float]:
        """One epoch of user-parallel mini-batches over every user's sessions."""
        self._require_fit()
        tic = time.perf_counter()
        net, table = self._net, self._table
        net.train()
        carry = self._new_carry(self._n_users)
        totals: dict[str, float] = {}
        batches = events = 0
        for users, sessions in user_parallel_batches(table, int(self.batch_size),
                                                     int(self.min_batch_users)):
            losses = self._train_batch(users, sessions, carry)
            for key, value in losses.items():
                totals[key] = totals.get(key, 0.0) + value
            batches += 1
            events += int(table.length[sessions].sum())
        self._epoch_seconds.append(time.perf_counter() - tic)
        self._trained_events += events
        self._epochs_done += 1
        self._eval, self._eval_net = None, None
        return {key: value / max(batches, 1) for key, value in totals.items()}

    def _session_forward(self, net: nn.Module, users: np.ndarray, sessions: np.ndarray,
                         carry: Carry, train: bool
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                    Carry, dict[str, torch.Tensor]]:
        """Open and run ``sessions`` (one per user); returns the padded items, lengths, outputs,
        final states, the carry's new rows and the extra losses."""
        u = torch.from_numpy(users)
        rows = {key: value[u] for key, value in carry.items()}
        gap = torch.from_numpy(self._table.gap_before[sessions])
        h0, new_rows, aux = self._open(net, rows, u, gap, train)
        items, lengths = self._table.padded(sessions)
        x_items = torch.from_numpy(items)
        length_t = torch.from_numpy(lengths)
        x = self._intra_input(net, x_items, new_rows, train)
        out, final = _masked_gru(net.intra, x, h0, length_t)
        return x_items, length_t, out, final, new_rows, {**aux, "h0": h0}

    def _train_batch(self, users: np.ndarray, sessions: np.ndarray, carry: Carry) -> dict[str, float]:
        net = self._net
        items, lengths, out, final, new_rows, aux = self._session_forward(
            net, users, sessions, carry, True)
        has_target = torch.arange(items.shape[1] - 1)[None, :] < (lengths - 1)[:, None]
        states = self._dropout(out[:, :-1][has_target], True)
        targets = items[:, 1:][has_target]
        rec = self._sampled_loss(net.out_w, net.out_b, states, targets)
        loss = self._total_loss(rec, aux, items)
        for opt in self._opt:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in self._opt:
            opt.step()
        u = torch.from_numpy(users)
        with torch.no_grad():
            for key, value in new_rows.items():
                carry[key][u] = value.detach()
            carry["rep"][u] = final.detach()
            carry["has"][u] = True
        logged = {"loss": float(loss.detach()), "rec": float(rec.detach())}
        for key, value in aux.items():
            if key.startswith("loss_"):
                logged[key[5:]] = float(value.detach())
        return logged

    def _sampled_loss(self, weight: nn.Embedding, bias: nn.Embedding, states: torch.Tensor,
                      targets: torch.Tensor) -> torch.Tensor:
        """GRU4Rec's loss over the targets' columns plus shared sampled negatives, averaged over
        the rows (zero without rows)."""
        if targets.numel() == 0:
            return states.sum() * 0.0
        columns = targets
        if self.n_sample > 0 and not self._sampler.empty:
            samples = torch.from_numpy(self._sampler.draw(self._rng, int(self.n_sample)))
            columns = torch.cat([targets, samples])
        scores = states @ weight(columns).T + bias(columns).T
        loss_fn = LOSSES[getattr(self, "loss", "cross-entropy")]
        return loss_fn(scores, getattr(self, "bpreg", 0.0), getattr(self, "elu_param", 0.0)) \
            / targets.numel()

    # -- evaluation state ----------------------------------------------------------------------

    def _evaluation_net(self) -> nn.Module:
        if self._eval_net is None:
            self._eval_net = copy.deepcopy(self._net).double().eval()
        return self._eval_net

    def _ensure_state(self) -> dict[str, Any]:
        """Every user's state after their training sessions (current parameters, no dropout):
        the carry as it stood when the user's last session opened, and that session's running
        state (``hidden``), which the next session opens from."""
        self._require_fit()
        if self._eval is not None:
            return self._eval
        net, table = self._net, self._table
        net.eval()
        carry = self._new_carry(self._n_users)
        first = table.user_start[:-1]
        counts = np.diff(table.user_start)
        with torch.no_grad():
            for k in range(int(counts.max()) if counts.size else 0):
                users = np.flatnonzero(counts > k)
                for part in np.array_split(users, max(1, math.ceil(len(users) / 4096))):
                    _, _, _, final, new_rows, _ = self._session_forward(
                        net, part, first[part] + k, carry, False)
                    u = torch.from_numpy(part)
                    for key, value in new_rows.items():
                        carry[key][u] = value
                    carry["rep"][u] = final
                    carry["has"][u] = True
        self._eval = {"carry": carry, "hidden": carry.pop("rep"),
                      "online": OnlineSessions(table, float(self._param("session_gap")),
                                               int(self.max_session_length))}
        del carry["has"]  # the online tracker knows who has a session
        return self._eval

    def _grow(self, state: dict[str, Any], n_users: int) -> None:
        extra = n_users - state["hidden"].shape[0]
        if extra <= 0:
            return
        state["online"].grow(n_users)
        state["hidden"] = torch.cat([state["hidden"], state["hidden"].new_zeros(extra,
                                                                                state["hidden"].shape[1])])
        more = self._new_carry(extra)
        for key, value in state["carry"].items():
            if value.dim() and value.shape[0] == n_users - extra:
                state["carry"][key] = torch.cat([value, more[key]])

    def _check_block(self, block: Interactions) -> dict[str, Any]:
        state = self._ensure_state()
        if block.n_items != self._n_items:
            raise UsageError(
                f"{self._name} was fitted on {self._n_items} items but the stream {block.name!r} "
                f"has {block.n_items}; fit and evaluate on parts of one stream")
        if len(block) and int(block.user.max()) >= state["hidden"].shape[0]:
            self._grow(state, int(block.user.max()) + 1)
        return state

    def _opened(self, state: dict[str, Any], users: np.ndarray, gap: np.ndarray
                ) -> tuple[torch.Tensor, Carry, dict[str, torch.Tensor]]:
        """Open new sessions for ``users`` in float64 (rounded to float32) without storing."""
        net = self._evaluation_net()
        u = torch.from_numpy(users)
        rows = {key: (value[u].double() if value.is_floating_point() else value[u])
                for key, value in state["carry"].items()}
        rows["rep"] = state["hidden"][u].double()
        rows["has"] = torch.from_numpy(state["online"].seen[users].copy())
        h0, new_rows, aux = self._open(net, rows, u, torch.from_numpy(gap), False)
        return h0, new_rows, aux

    def score(self, block: Interactions) -> np.ndarray:
        """Scores of all items from each user's state before the event (a new session's initial
        state when the event opens one)."""
        state = self._check_block(block)
        users = block.user.astype(np.int64)
        net = self._evaluation_net()
        with torch.no_grad():
            new, _, gap = state["online"].opens(block)
            h = state["hidden"][torch.from_numpy(users)]
            opened = np.flatnonzero(new)
            first, layer = None, "out"
            if opened.size:
                h0, _, aux = self._opened(state, users[opened], gap[opened])
                first, layer = self._first_item_state(net, h0, aux)
                if layer == "out":  # one product for all rows: no scattered copy of 94k-item rows
                    h[torch.from_numpy(opened)] = first.float()
            scores = score_rows(h, self._net.out_w.weight, self._net.out_b.weight[:, 0])
            if first is not None and layer != "out":
                scores[opened] = score_rows(first.float(), self._net.first_w.weight,
                                            self._net.first_b.weight[:, 0])
        return scores

    def observe(self, block: Interactions) -> None:
        """Step each user's session GRU on the event's item, opening a session first when the
        event starts one."""
        state = self._check_block(block)
        net = self._evaluation_net()
        online: OnlineSessions = state["online"]
        with torch.no_grad():
            for rows in distinct_runs(block.user):
                users = block.user[rows].astype(np.int64)
                u = torch.from_numpy(users)
                new, new_visit, gap = online.opens(block, rows)
                h = state["hidden"][u].double()
                carry_rows = {key: value[u] for key, value in state["carry"].items()}
                if new.any():
                    idx = np.flatnonzero(new)
                    h0, new_rows, _ = self._opened(state, users[idx], gap[idx])
                    h[torch.from_numpy(idx)] = h0.float().double()
                    for key, value in new_rows.items():
                        part = carry_rows[key].clone()
                        part[torch.from_numpy(idx)] = value.to(part.dtype)
                        carry_rows[key] = part
                items = torch.from_numpy(block.item[rows].astype(np.int64))
                typed = {key: (value.double() if value.is_floating_point() else value)
                         for key, value in carry_rows.items()}
                x = self._intra_input(net, items[:, None], typed, False)[:, 0]
                h = net.intra(x, h)
                state["hidden"][u] = h.float()
                for key, value in carry_rows.items():
                    state["carry"][key][u] = value
                online.advance(block, rows, new, new_visit)


class HRNN(HierarchicalModel):
    """HRNN with GRU4Rec's sampled losses (see the module docstring).

    Parameters
    ----------
    hidden_size:
        Units of the session GRU (hgru4rec's scripts: 100 or 500).
    user_hidden_size:
        Units of the user GRU.
    embedding_size:
        Size of the item input embedding of the session GRU.
    mode:
        ``"init"`` (the user state only initialises a session) or ``"all"`` (it is also fed to
        the session GRU at every step): the paper's two variants.
    loss, bpreg, elu_param:
        One of GRU4Rec's losses (``"cross-entropy"``, ``"bpr-max"``, ``"top1-max"``) and its
        BPR-max settings; hgru4rec uses cross-entropy or TOP1.
    batch_size:
        Users per mini-batch (hgru4rec's scripts: 50-100).
    learning_rate:
        Adagrad step size (hgru4rec's scripts: 0.05-0.1).
    dropout:
        Dropout on the session's initial state, the item input and the session GRU's output.
    n_sample, sample_alpha:
        Shared negatives per batch drawn with probability ``popularity ** sample_alpha``
        (0: the batch's own targets only).
    session_gap, max_session_length:
        On streams without session ids: idle seconds that end a session, and the length after
        which a session continues as a new part (the sessions protocol's rules).
    min_batch_users:
        The epoch ends when fewer users than this have sessions left (1: every session).
    """

    default_epochs: ClassVar[int] = 10
    _name: ClassVar[str] = "hrnn"

    def __init__(
        self,
        *,
        hidden_size: int = 100,
        user_hidden_size: int = 100,
        embedding_size: int = 100,
        mode: str = "init",
        loss: str = "cross-entropy",
        bpreg: float = 1.0,
        elu_param: float = 0.5,
        batch_size: int = 100,
        learning_rate: float = 0.1,
        dropout: float = 0.0,
        n_sample: int = 2048,
        sample_alpha: float = 0.5,
        session_gap: float = 3600.0,
        max_session_length: int = 20,
        min_batch_users: int = 1,
    ) -> None:
        self.hidden_size = hidden_size
        self.user_hidden_size = user_hidden_size
        self.embedding_size = embedding_size
        self.mode = mode
        self.loss = loss
        self.bpreg = bpreg
        self.elu_param = elu_param
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.dropout = dropout
        self.n_sample = n_sample
        self.sample_alpha = sample_alpha
        self.session_gap = session_gap
        self.max_session_length = max_session_length
        self.min_batch_users = min_batch_users

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        """Ranges around hgru4rec's scripts."""
        return {
            "hidden_size": trial.suggest_int("hidden_size", 50, 500, log=True),
            "mode": trial.suggest_categorical("mode", ["init", "all"]),
            "batch_size": trial.suggest_categorical("batch_size", [50, 100]),
            "learning_rate": trial.suggest_float("learning_rate", 0.02, 0.2, log=True),
            "dropout": trial.suggest_float("dropout", 0.0, 0.5),
        }

    def _check_params(self) -> None:
        super()._check_params()
        for name in ("user_hidden_size", "embedding_size"):
            self._require(name, isinstance(getattr(self, name), int) and getattr(self, name) >= 1,
                          "must be an integer >= 1")
        self._require("mode", self.mode in ("init", "all"), "must be 'init' or 'all'")
        self._require("loss", self.loss in LOSSES, f"must be one of {sorted(LOSSES)}")
        self._require("learning_rate", self.learning_rate > 0, "must be > 0")
        self._require("dropout", 0 <= self.dropout < 1, "must lie in [0, 1)")

    def _network(self, n_users: int, n_items: int) -> nn.Module:
        hidden, user = int(self._param("hidden_size")), int(self.user_hidden_size)
        width = int(self.embedding_size) + (user if self.mode == "all" else 0)
        net = nn.Module()
        net.items = nn.Embedding(n_items, int(self.embedding_size), sparse=True)
        net.intra = nn.GRUCell(width, hidden)
        net.user = nn.GRUCell(hidden, user)
        net.init = nn.Linear(user, hidden)
        net.out_w = nn.Embedding(n_items, hidden, sparse=True)
        net.out_b = nn.Embedding(n_items, 1, sparse=True)
        with torch.no_grad():
            bound = math.sqrt(6.0 / (n_items + hidden))
            net.items.weight.uniform_(-bound, bound)
            net.out_w.weight.uniform_(-bound, bound)
            net.out_b.weight.zero_()
        return net

    def _optimizers(self, net: nn.Module) -> list[torch.optim.Optimizer]:
        return [torch.optim.Adagrad(net.parameters(), lr=float(self.learning_rate))]

    def _new_carry(self, n_users: int) -> Carry:
        return {"user": torch.zeros(n_users, int(self.user_hidden_size)),
                "rep": torch.zeros(n_users, int(self._param("hidden_size"))),
                "has": torch.zeros(n_users, dtype=torch.bool)}

    def _open(self, net: nn.Module, rows: Carry, users: torch.Tensor, gap: torch.Tensor,
              train: bool) -> tuple[torch.Tensor, Carry, dict[str, torch.Tensor]]:
        stepped = net.user(rows["rep"], rows["user"])
        h_user = torch.where(rows["has"][:, None], stepped, torch.zeros_like(stepped))
        h0 = self._dropout(torch.tanh(net.init(h_user)), train)
        return h0, {"user": h_user}, {}

    def _intra_input(self, net: nn.Module, items: torch.Tensor, rows: Carry, train: bool
                     ) -> torch.Tensor:
        x = self._dropout(net.items(items), train)
        if self.mode == "all":
            user = rows["user"].to(x.dtype)[:, None, :].expand(-1, items.shape[1], -1)
            x = torch.cat([x, user], dim=2)
        return x
