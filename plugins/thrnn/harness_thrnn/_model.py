"""THRNN: HRNN with time modelling (Vassøy, Ruocco, de Souza da Silva, Aune, 2019, "Time is of
the essence: a joint hierarchical RNN and point process model for time and item predictions"),
checked against the authors' code (``BjornarVass/Recsys``, ``dynamic_model.py``, ``modules.py``;
facts in MODELS.md). Where the code and the paper differ, the code (which produced the
published tables) is the default and the paper's version a parameter:

- an inter-session GRU runs over the last ``history`` (15) session representations (the
  intra-session GRU's last state), each step's input ``[representation, gap embedding, user
  embedding]`` with the gap embedded being the one before that session (500 uniform 1-hour
  buckets up to 500 h; gaps at or below ``min_gap`` in bucket 0);
- its final state initialises the next session's intra-session GRU (item embeddings in, a
  linear layer over items out, dropout on input and output) and feeds the time model
  ``s = v.h + b`` with the scalar ``w`` (initialised -0.1): loss of Equation 5 with the exponent
  ``alpha`` (:mod:`harness_thrnn._time`), gaps at or below ``min_gap`` masked out;
- the code's extra head scores a session's first item from the inter-session state, weight 0.1
  (``first_item_weight=0`` is the paper's model, which ranks a first item from the
  intra-session output layer);
- loss ``0.45 L_time + 0.45 L_rec (+ 0.1 L_first)``; Adam, lr 1e-3, the time parameters
  ``v, b, w`` 1e-4 (the item tables take lazy sparse Adam steps on the rows a batch touches);
- batches of the ``batch_size`` users with most sessions left, one session each; the epoch
  ends when fewer than ``min_batch_users`` (50) users are left.

Deliberate differences from the code: the recommendation losses score the batch's targets plus
GRU4Rec's popularity-sampled negatives (``harness_gru4rec``), never a softmax over the whole
catalogue in training (evaluation ranks every item).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch
from harness_gru4rec import LOSSES
from harness_hrnn import HierarchicalModel
from torch import nn

from harness.errors import UsageError, did_you_mean
from harness_thrnn._time import EXPECTATIONS, expected_gap, gap_bucket, time_loss

__all__ = ["PRESETS", "THRNN"]

Carry = dict[str, torch.Tensor]

#: The paper's Table 2 (best configurations), with the code's session and gap settings.
PRESETS: dict[str, dict[str, Any]] = {
    "lastfm": {"hidden_size": 100, "dropout": 0.2, "min_gap": 1800.0, "session_gap": 1800.0},
    "reddit": {"hidden_size": 50, "dropout": 0.0, "min_gap": 3600.0, "session_gap": 3600.0},
}


class THRNN(HierarchicalModel):
    """THRNN with the return-time model (see the module docstring).

    Parameters
    ----------
    preset:
        ``"lastfm"`` or ``"reddit"``: the paper's Table 2 configuration. ``hidden_size``,
        ``dropout``, ``min_gap`` and ``session_gap`` left at ``None`` take the preset's value
        (LastFM 100 / 0.2 / 0.5 h / 30 min, Reddit 50 / 0 / 1 h / 1 h); the other Table 2 values
        are the same for both and are the defaults below.
    hidden_size:
        Item embedding size = intra- and inter-session GRU units.
    user_embedding_size, gap_embedding_size:
        10 and 5 (Table 2).
    history:
        Session representations the inter-session GRU reads (15).
    alpha:
        Exponent of the gap in the time loss (Equation 5; the code's default 1).
    time_weight, rec_weight, first_item_weight:
        Loss weights (0.45, 0.45 and the code's 0.1; ``first_item_weight=0`` is the paper's).
    learning_rate, time_learning_rate:
        Adam step sizes of the network and of the time parameters ``v, b, w`` (1e-3, 1e-4).
    batch_size, min_batch_users:
        Users per batch (100) and the smallest batch that continues an epoch (the code's 50).
    dropout:
        On the intra-session GRU's input and output.
    min_gap:
        Seconds; gaps at or below it are masked out of the time loss and embedded in bucket 0.
    n_buckets, max_gap_hours:
        Uniform gap buckets of the gap embedding (500 up to 500 h).
    expectation:
        ``"code"`` integrates ``g f(g)`` ignoring ``alpha`` as the authors' code does;
        ``"transformed"`` takes the expectation under the distribution the loss fits.
    loss, n_sample, sample_alpha:
        GRU4Rec's loss and its shared popularity-sampled negatives (see ``harness_gru4rec``).
    session_gap, max_session_length:
        On streams without session ids: idle seconds that end a session, and the length at which
        a session continues as a new part of the same visit.
    """

    capabilities: ClassVar[frozenset[str]] = frozenset({"rank", "return_time"})
    default_epochs: ClassVar[int] = 24  # the code's LastFM setting (Reddit: 30)
    _name: ClassVar[str] = "thrnn"

    def __init__(
        self,
        *,
        preset: str = "lastfm",
        hidden_size: int | None = None,
        user_embedding_size: int = 10,
        gap_embedding_size: int = 5,
        history: int = 15,
        alpha: float = 1.0,
        time_weight: float = 0.45,
        rec_weight: float = 0.45,
        first_item_weight: float = 0.1,
        learning_rate: float = 1e-3,
        time_learning_rate: float = 1e-4,
        batch_size: int = 100,
        min_batch_users: int = 50,
        dropout: float | None = None,
        min_gap: float | None = None,
        n_buckets: int = 500,
        max_gap_hours: float = 500.0,
        expectation: str = "code",
        loss: str = "cross-entropy",
        n_sample: int = 2048,
        sample_alpha: float = 0.5,
        session_gap: float | None = None,
        max_session_length: int = 20,
    ) -> None:
        self.preset = preset
        self.hidden_size = hidden_size  # type: ignore[assignment]
        self.user_embedding_size = user_embedding_size
        self.gap_embedding_size = gap_embedding_size
        self.history = history
        self.alpha = alpha
        self.time_weight = time_weight
        self.rec_weight = rec_weight
        self.first_item_weight = first_item_weight
        self.learning_rate = learning_rate
        self.time_learning_rate = time_learning_rate
        self.batch_size = batch_size
        self.min_batch_users = min_batch_users
        self.dropout = dropout
        self.min_gap = min_gap
        self.n_buckets = n_buckets
        self.max_gap_hours = max_gap_hours
        self.expectation = expectation
        self.loss = loss
        self.n_sample = n_sample
        self.sample_alpha = sample_alpha
        self.session_gap = session_gap  # type: ignore[assignment]
        self.max_session_length = max_session_length

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        """Around Table 2: sizes, dropout, learning rates and the loss exponent."""
        return {
            "hidden_size": trial.suggest_categorical("hidden_size", [50, 100, 200]),
            "dropout": trial.suggest_float("dropout", 0.0, 0.5),
            "learning_rate": trial.suggest_float("learning_rate", 3e-4, 3e-3, log=True),
            "time_learning_rate": trial.suggest_float("time_learning_rate", 3e-5, 3e-4, log=True),
            "alpha": trial.suggest_categorical("alpha", [0.3, 0.5, 0.7, 0.9, 1.0]),
        }

    def _param(self, name: str) -> Any:
        value = getattr(self, name)
        if value is None and name in PRESETS.get(self.preset, {}):
            return PRESETS[self.preset][name]
        return value

    def _check_params(self) -> None:
        if self.preset not in PRESETS:
            raise UsageError(did_you_mean(str(self.preset), list(PRESETS), "thrnn preset"))
        super()._check_params()
        for name in ("user_embedding_size", "gap_embedding_size", "history", "n_buckets"):
            value = getattr(self, name)
            self._require(name, isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                          "must be an integer >= 1")
        self._require("alpha", 0 < self.alpha <= 2, "must lie in (0, 2]")
        for name in ("time_weight", "rec_weight", "first_item_weight"):
            self._require(name, getattr(self, name) >= 0, "must be >= 0")
        for name in ("learning_rate", "time_learning_rate", "max_gap_hours"):
            self._require(name, getattr(self, name) > 0, "must be > 0")
        self._require("dropout", 0 <= self._param("dropout") < 1, "must lie in [0, 1)")
        self._require("min_gap", self._param("min_gap") >= 0, "must be >= 0 seconds")
        self._require("expectation", self.expectation in EXPECTATIONS,
                      f"must be one of {list(EXPECTATIONS)}")
        self._require("loss", self.loss in LOSSES, f"must be one of {sorted(LOSSES)}")

    # -- network -------------------------------------------------------------------------------

    def _network(self, n_users: int, n_items: int) -> nn.Module:
        hidden = int(self._param("hidden_size"))
        net = nn.Module()
        net.items = nn.Embedding(n_items, hidden, sparse=True)
        net.intra = nn.GRUCell(hidden, hidden)
        net.users = nn.Embedding(max(n_users, 1), int(self.user_embedding_size))
        net.gaps = nn.Embedding(int(self.n_buckets), int(self.gap_embedding_size))
        net.inter = nn.GRUCell(hidden + int(self.gap_embedding_size)
                               + int(self.user_embedding_size), hidden)
        net.out_w = nn.Embedding(n_items, hidden, sparse=True)
        net.out_b = nn.Embedding(n_items, 1, sparse=True)
        net.first_w = nn.Embedding(n_items, hidden, sparse=True)
        net.first_b = nn.Embedding(n_items, 1, sparse=True)
        net.time_v = nn.Linear(hidden, 1)
        net.time_w = nn.Parameter(torch.tensor(-0.1))
        with torch.no_grad():
            bound = math.sqrt(6.0 / (n_items + hidden))
            for table in (net.items, net.out_w, net.first_w):
                table.weight.uniform_(-bound, bound)
            net.out_b.weight.zero_()
            net.first_b.weight.zero_()
            net.time_v.weight.mul_(0.1)
        return net

    def _optimizers(self, net: nn.Module) -> list[torch.optim.Optimizer]:
        sparse = [net.items.weight, net.out_w.weight, net.out_b.weight, net.first_w.weight,
                  net.first_b.weight]
        timed = [net.time_v.weight, net.time_v.bias, net.time_w]
        special = {id(p) for p in sparse + timed}
        dense = [p for p in net.parameters() if id(p) not in special]
        lr = float(self.learning_rate)
        return [torch.optim.Adam(dense, lr=lr),
                torch.optim.Adam(timed, lr=float(self.time_learning_rate)),
                torch.optim.SparseAdam(sparse, lr=lr)]

    def _new_carry(self, n_users: int) -> Carry:
        k, hidden = int(self.history), int(self._param("hidden_size"))
        return {"queue": torch.zeros(n_users, k, hidden),
                "gaps": torch.zeros(n_users, k, dtype=torch.long),
                "length": torch.zeros(n_users, dtype=torch.long),
                "gap_open": torch.zeros(n_users, dtype=torch.long),
                "rep": torch.zeros(n_users, hidden),
                "has": torch.zeros(n_users, dtype=torch.bool)}

    def _open(self, net: nn.Module, rows: Carry, users: torch.Tensor, gap: torch.Tensor,
              train: bool) -> tuple[torch.Tensor, Carry, dict[str, torch.Tensor]]:
        """Push the previous session (its representation and the gap before it) on the queue
        and run the inter-session GRU over the queue; its state opens the session."""
        has = rows["has"]
        rep = rows["rep"].to(rows["queue"].dtype)
        queue = torch.where(has[:, None, None],
                            torch.cat([rows["queue"][:, 1:], rep[:, None]], 1), rows["queue"])
        gaps = torch.where(has[:, None], torch.cat([rows["gaps"][:, 1:], rows["gap_open"][:, None]], 1),
                           rows["gaps"])
        k = queue.shape[1]
        length = torch.clamp(rows["length"] + has.long(), max=k)
        h = self._inter(net, queue, gaps, length, users)
        bucket = torch.from_numpy(gap_bucket(gap.numpy(), float(self._param("min_gap")),
                                             int(self.n_buckets), float(self.max_gap_hours)))
        new_rows = {"queue": queue, "gaps": gaps, "length": length, "gap_open": bucket}
        aux: dict[str, torch.Tensor] = {"h_inter": h}
        if train:
            hours = torch.nan_to_num(gap.to(h.dtype) / 3600.0, nan=0.0)
            mask = has & (gap > float(self._param("min_gap"))) & torch.isfinite(gap)
            s = net.time_v(h)[:, 0]
            aux["loss_time"] = time_loss(s, net.time_w, hours, float(self.alpha), mask)
        return h, new_rows, aux

    def _inter(self, net: nn.Module, queue: torch.Tensor, gaps: torch.Tensor,
               length: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        """The inter-session GRU over each row's last ``length`` queue entries (right-aligned);
        zero for an empty queue. Users the model never saw in training get a zero embedding."""
        n_users = net.users.weight.shape[0]
        known = users < n_users
        user = net.users(torch.where(known, users, 0)) * known[:, None].to(queue.dtype)
        user = user.to(queue.dtype)
        h = queue.new_zeros(queue.shape[0], queue.shape[2])
        k = queue.shape[1]
        for step in range(k):
            valid = step >= k - length
            if not bool(valid.any()):
                continue
            x = torch.cat([queue[:, step], net.gaps(gaps[:, step]).to(queue.dtype), user], 1)
            h = torch.where(valid[:, None], net.inter(x, h), h)
        return h

    def _total_loss(self, rec: torch.Tensor, aux: dict[str, torch.Tensor], items: torch.Tensor
                    ) -> torch.Tensor:
        loss = self.rec_weight * rec + self.time_weight * aux["loss_time"]
        if self.first_item_weight > 0:
            first = self._sampled_loss(self._net.first_w, self._net.first_b,
                                       self._dropout(aux["h_inter"], True), items[:, 0])
            aux["loss_first"] = first
            loss = loss + self.first_item_weight * first
        return loss

    def _first_item_state(self, net: nn.Module, h0: torch.Tensor, aux: dict[str, torch.Tensor]
                          ) -> tuple[torch.Tensor, str]:
        return (aux["h_inter"], "first") if self.first_item_weight > 0 else (h0, "out")

    # -- return time ---------------------------------------------------------------------------

    def predict_return_time(self, user: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Expected seconds to each user's next session from the end of the current one: the
        inter-session state with the session just ended pushed on the queue, the time model's
        ``s`` and the numerically integrated expectation (cut-off 700 h)."""
        users = np.asarray(user, dtype=np.int64).ravel()
        if users.shape != np.asarray(t).ravel().shape:
            raise UsageError(f"predict_return_time needs one t per user, but got {users.size} users "
                             f"and {np.asarray(t).size} times")
        state = self._ensure_state()
        if users.size and int(users.max()) >= state["hidden"].shape[0]:
            self._grow(state, int(users.max()) + 1)
        net = self._evaluation_net()
        with torch.no_grad():
            _, _, aux = self._opened(state, users, np.full(users.size, np.nan))
            s = net.time_v(aux["h_inter"].float().double())[:, 0].float().double().numpy()
            w = float(net.time_w.detach())
        hours = expected_gap(s, w, float(self.alpha), self.expectation)
        return np.nan_to_num(hours, nan=0.0, posinf=0.0) * 3600.0

    @property
    def fit_report(self) -> dict[str, Any]:
        report = super().fit_report
        if hasattr(self, "_net"):
            report["preset"] = {name: self._param(name) for name in PRESETS[self.preset]}
            report["time_w"] = float(self._net.time_w.detach())
        return report
