"""The LSTM baseline of the JODIE paper (Kumar et al., KDD 2019, section 4) as a harness model."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from harness_lstm._recurrent import Params, RecurrentRecommender

__all__ = ["LSTM", "lstm_cell"]


def lstm_cell(xg: torch.Tensor, h: torch.Tensor, c: torch.Tensor, w_h: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """One LSTM step (torch's gate order i, f, g, o): ``xg`` is ``x W_x + b``."""
    gates = xg + h @ w_h
    i, f, g, o = gates.chunk(4, -1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


class LSTM(RecurrentRecommender):
    """A user LSTM over the user's item sequence, as the JODIE paper's LSTM baseline.

    From the JODIE paper: one-hot item inputs (here a row lookup of the input weights, never a
    dense one-hot product), a 128-d dynamic user embedding (the hidden state), a dense output
    layer over all items with softmax, cross-entropy at every step (Time-LSTM's paper, whose
    output and loss the JODIE paper's LSTM shares), 50 epochs, test at the best validation epoch,
    and a state-change classifier on the dynamic user embedding (JODIE's head, Linear(d, 50) -
    ReLU - Linear(50, 2), with JODIE's weighted cross-entropy, trained jointly).

    The JODIE authors never published their baselines' code, so the rest is chosen here and each
    choice is a parameter:

    - Training: user-parallel lanes (``batch_size`` lanes, each walking its users' sequences one
      after another, the state reset at a new user) with truncated back-propagation through
      ``bptt`` steps and one optimizer step per window on the window's mean per-event loss.
    - Optimizer Adam with ``learning_rate`` 1e-2. At 1e-3 (JODIE's own) an epoch's ~200 window
      steps on Wikipedia barely move the loss (test MRR 0.05 after one epoch, 0.41 at 1e-2 after
      two); ``optimizer="adagrad", learning_rate=0.01`` is Time-LSTM's authors' setting (with
      their batch of 5; with 32 lanes it learns slowly: MRR 0.10 after two epochs).
    - A start token (an extra input row) is read before a user's first item, so that a user's
      first event is predicted too (from the learned start state); event features are not used
      (the paper's baselines get one-hot items).
    - After every epoch each user's state is recomputed from their whole training sequence with
      the epoch's final parameters; evaluation continues from it.

    Evaluation streams: ``score`` steps each user's pending cell (the last observed item) and
    ranks all items by the output layer; ``observe`` makes that step the user's state. Parameters
    stay frozen. ``device`` is a torch device (``auto``: a GPU when torch sees one);
    ``num_threads`` torch threads while the model works (``None``: torch's setting).
    """

    _display: ClassVar[str] = "LSTM"
    _x_gates: ClassVar[int] = 4
    _h_gates: ClassVar[int] = 4

    def __init__(
        self,
        *,
        embedding_size: int = 128,
        learning_rate: float = 1e-2,
        batch_size: int = 32,
        bptt: int = 20,
        optimizer: str = "adam",
        weight_decay: float = 0.0,
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
        }

    def _cell(self, xg: torch.Tensor, dt: torch.Tensor, h: torch.Tensor, c: torch.Tensor,
              p: Params) -> tuple[torch.Tensor, torch.Tensor]:
        return lstm_cell(xg, h, c, p["w_h"])
