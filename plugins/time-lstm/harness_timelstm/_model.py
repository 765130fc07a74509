"""Time-LSTM (Zhu et al., "What to Do Next: Modeling User Behaviors by Time-LSTM", IJCAI 2017)
with the TLSTM3 cell, as the JODIE paper's Time-LSTM baseline."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch
from harness_lstm import RecurrentRecommender
from harness_lstm._recurrent import Params

__all__ = ["AUTHORS_CLAMP", "TIME_SCALES", "WT1_CONSTRAINTS", "TimeLSTM", "tlstm3_cell"]

#: The authors' code (``ZJULearning/time_lstm``, ``tlstm3.py``) uses ``max(W_t1, -1e-5)``.
AUTHORS_CLAMP = -1e-5
TIME_SCALES = ("log1p-hours", "standardize", "seconds")
WT1_CONSTRAINTS = ("nonpositive", "authors", "none")


def tlstm3_cell(xg: torch.Tensor, dt: torch.Tensor, h: torch.Tensor, c: torch.Tensor,
                w_h: torch.Tensor, wt1: torch.Tensor, wt2: torch.Tensor, wto: torch.Tensor,
                wci: torch.Tensor, wco: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One TLSTM3 step (Zhu et al. 2017, eqs. of Time-LSTM 3), no forget gate, peepholes:

    - ``i = sigmoid(x Wxi + h Whi + wci * c + bi)``
    - ``T1 = sigmoid(x Wx1 + tanh(dt Wt1) + b1)``, ``T2 = sigmoid(x Wx2 + tanh(dt Wt2) + b2)``
    - ``g = tanh(x Wxc + h Whc + bc)``
    - ``c_tilde = (1 - i T1) c + i T1 g`` (the output's cell), ``c_next = (1 - i) c + i T2 g``
      (carried to the next step)
    - ``o = sigmoid(x Wxo + dt Wto + h Who + wco * c_tilde + bo)``, ``h = o tanh(c_tilde)``

    ``xg`` holds ``x W + b`` for the blocks ``i, T1, T2, c, o``; ``w_h`` the recurrent blocks
    ``i, c, o``; ``dt`` is ``(B, 1)``. Returns ``(h, c_next)``.
    """
    xi, x1, x2, xc, xo = xg.chunk(5, -1)
    hi, hc, ho = (h @ w_h).chunk(3, -1)
    i = torch.sigmoid(xi + hi + wci * c)
    t1 = torch.sigmoid(x1 + torch.tanh(dt * wt1))
    t2 = torch.sigmoid(x2 + torch.tanh(dt * wt2))
    g = torch.tanh(xc + hc)
    ig = i * g
    c_tilde = (1 - i * t1) * c + t1 * ig
    c_next = (1 - i) * c + t2 * ig
    o = torch.sigmoid(xo + dt * wto + ho + wco * c_tilde)
    return o * torch.tanh(c_tilde), c_next


class TimeLSTM(RecurrentRecommender):
    """Time-LSTM with the TLSTM3 cell over each user's item sequence (JODIE paper's baseline).

    From the papers: the TLSTM3 cell (:func:`tlstm3_cell`) with ``dt`` the time from the item read
    to the item being predicted; one-hot item inputs (a row lookup of the input weights); a
    128-d hidden state (JODIE's dynamic embedding size; also Time-LSTM's default); a dense
    output layer over all items, softmax and cross-entropy at every step; the constraint
    ``Wt1 <= 0`` (Zhu et al.: a larger gap should lower T1's input); 50 epochs (JODIE); a
    state-change classifier on the dynamic user embedding (JODIE's head and weighted
    cross-entropy).

    Chosen here where the papers are silent or the code disagrees, each a parameter:

    - ``wt1_constraint``: ``"nonpositive"`` (default, the paper's) projects ``Wt1`` onto
      ``<= 0`` after every optimizer step; ``"authors"`` is the authors' code, which uses
      ``max(Wt1, -1e-5)`` in the forward pass (``Wt1`` initialised in ``[-1, 0]``, so almost every
      entry sits at ``-1e-5`` with no gradient); ``"none"`` leaves it free. ``Wt1`` is initialised
      uniformly in ``[-1, 0]`` as in their code.
    - ``time_scale``: the elapsed time fed to the cell. ``"log1p-hours"`` (default):
      ``log(1 + dt / 3600)``; ``"standardize"``: ``(dt - mean) / std`` with the training part's
      gaps between consecutive events of a user; ``"seconds"``: raw seconds, as the authors' code
      (whose ``tanh(dt Wt)`` then saturates on all but very short gaps).
    - A user's first item is predicted from a start token read at ``dt = 0`` (the start has no
      time); the embedding the state head reads after an event is the cell that reads the event's
      item at ``dt = 0`` (its output at the event's own time).
    - Training, optimizer, the start token and the end-of-epoch state refresh as for
      :class:`harness_lstm.LSTM` (Adam at 1e-2 by default; the authors' Adagrad at 0.01 with
      ``optimizer="adagrad", learning_rate=0.01``). Their batch of 5 whole sequences is
      ``batch_size`` lanes with truncated back-propagation through ``bptt`` steps here.
    """

    _display: ClassVar[str] = "Time-LSTM"
    _x_gates: ClassVar[int] = 5  # i, T1, T2, c, o
    _h_gates: ClassVar[int] = 3  # i, c, o (the time gates read no hidden state)
    _time_aware: ClassVar[bool] = True

    def __init__(
        self,
        *,
        embedding_size: int = 128,
        learning_rate: float = 1e-2,
        batch_size: int = 32,
        bptt: int = 20,
        optimizer: str = "adam",
        weight_decay: float = 0.0,
        time_scale: str = "log1p-hours",
        wt1_constraint: str = "nonpositive",
        state_loss_weight: float = 1.0,
        device: str = "auto",
        num_threads: int | None = 1,
    ) -> None:
        self.embedding_size = embedding_size
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.bptt = bptt
        self.optimizer = optimizer
        self.weight_decay = weight_decay
        self.time_scale = time_scale
        self.wt1_constraint = wt1_constraint
        self.state_loss_weight = state_loss_weight
        self.device = device
        self.num_threads = num_threads

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        return {
            "embedding_size": trial.suggest_categorical("embedding_size", [32, 64, 128, 256]),
            "learning_rate": trial.suggest_float("learning_rate", 1e-3, 3e-2, log=True),
            "batch_size": trial.suggest_categorical("batch_size", [16, 32, 64, 128]),
            "bptt": trial.suggest_categorical("bptt", [10, 20, 50]),
            "time_scale": trial.suggest_categorical("time_scale", ["log1p-hours", "standardize"]),
        }

    def _check_extra(self) -> None:
        if self.time_scale not in TIME_SCALES:
            self._fail("time_scale", f"must be one of {list(TIME_SCALES)}")
        if self.wt1_constraint not in WT1_CONSTRAINTS:
            self._fail("wt1_constraint", f"must be one of {list(WT1_CONSTRAINTS)}")

    def _extra_params(self, d: int, g: torch.Generator) -> dict[str, torch.Tensor]:
        bound = 1.0 / math.sqrt(d)

        def uniform(n: int) -> torch.Tensor:
            return (torch.rand(n, generator=g) * 2 - 1) * bound

        return {
            "wt1": -torch.rand(d, generator=g),  # [-1, 0], as the authors' code
            "wt2": uniform(d),
            "wto": uniform(d),
            "wci": uniform(d),
            "wco": uniform(d),
        }

    def _fit_time_scale(self, raw: np.ndarray) -> None:
        mean = float(raw.mean()) if raw.size else 0.0
        std = float(raw.std()) if raw.size else 1.0
        self._dt_stats = (mean, std if std > 0 else 1.0)

    def _scale_dt(self, dt: np.ndarray) -> np.ndarray:
        dt = np.asarray(dt, np.float64)
        if self.time_scale == "log1p-hours":
            return np.log1p(dt / 3600.0)
        if self.time_scale == "standardize":
            return (dt - self._dt_stats[0]) / self._dt_stats[1]
        return dt

    def _wt1(self, p: Params) -> torch.Tensor:
        if self.wt1_constraint == "authors":
            return torch.clamp(p["wt1"], min=AUTHORS_CLAMP)
        return p["wt1"]

    def _cell(self, xg: torch.Tensor, dt: torch.Tensor, h: torch.Tensor, c: torch.Tensor,
              p: Params) -> tuple[torch.Tensor, torch.Tensor]:
        return tlstm3_cell(xg, dt, h, c, p["w_h"], self._wt1(p), p["wt2"], p["wto"], p["wci"],
                           p["wco"])

    @torch.no_grad()
    def _after_step(self) -> None:
        if self.wt1_constraint == "nonpositive":
            self._net.wt1.clamp_(max=0.0)
