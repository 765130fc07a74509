"""GRU4Rec's losses over a score matrix whose positives lie on the diagonal.

``scores`` has shape ``(B, C)`` with ``C >= B``: row ``i`` is a session's hidden state scored
against the mini-batch's ``B`` targets followed by the shared sampled negatives; the positive of
row ``i`` is column ``i``, every other column is a negative. Each loss returns the *sum* over
rows, as the loss functions of both official implementations do; the training step divides it
by the batch size (``loss_function(...) / batch_size`` in the official PyTorch and Theano code).
The logQ correction is applied to the scores before the cross-entropy, by the model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["LOSSES", "bpr_max_loss", "cross_entropy_loss", "top1_max_loss"]


def _diagonal(scores: torch.Tensor) -> torch.Tensor:
    return torch.diagonal(scores[:, : scores.shape[0]])


def _negative_softmax(scores: torch.Tensor) -> torch.Tensor:
    """Softmax of each row over its negatives only (the positive gets weight 0), the official
    ``softmax_neg``."""
    b = scores.shape[0]
    mask = torch.zeros_like(scores, dtype=torch.bool)
    mask[:, :b] = torch.eye(b, dtype=torch.bool)
    return torch.softmax(scores.masked_fill(mask, float("-inf")), dim=1)


def cross_entropy_loss(scores: torch.Tensor, bpreg: float = 0.0,
                       elu_param: float = 0.0) -> torch.Tensor:
    """``-sum_i log softmax(scores_i)_i``: softmax over the mini-batch and the samples
    (``bpreg`` and ``elu_param`` are not used, as in the official ``xe_loss_with_softmax``)."""
    return -_diagonal(torch.log_softmax(scores, dim=1)).sum()


def bpr_max_loss(scores: torch.Tensor, bpreg: float = 1.0,
                 elu_param: float = 0.5) -> torch.Tensor:
    """BPR-max: ``sum_i -log sum_j s_ij sigmoid(r_ii - r_ij) + bpreg * sum_j s_ij r_ij^2``, with
    ``s_i`` the softmax of row ``i`` over its negatives and ``r = elu(scores, elu_param)`` (the
    official ``bpr_max_loss_with_elu``; ``elu_param=0`` uses the raw scores). A batch with no
    negative at all (one session, no samples) has nothing to rank against: its loss is 0."""
    if scores.shape[1] < 2:
        return scores.sum() * 0.0
    if elu_param > 0:
        scores = F.elu(scores, alpha=elu_param)
    weights = _negative_softmax(scores)
    positive = _diagonal(scores).unsqueeze(1)
    ranking = (weights * torch.sigmoid(positive - scores)).sum(dim=1)
    regular = (weights * scores.square()).sum(dim=1)
    return (-torch.log(ranking + 1e-24) + bpreg * regular).sum()


def top1_max_loss(scores: torch.Tensor, bpreg: float = 0.0,
                  elu_param: float = 0.0) -> torch.Tensor:
    """TOP1-max: ``sum_i sum_j s_ij (sigmoid(r_ij - r_ii) + sigmoid(r_ij^2))``. Only the Theano
    original has it (``top1_max``, on the linear scores of its default final activation); the
    official PyTorch code has no TOP1-max, so ``bpreg`` and ``elu_param`` are not used. A batch
    with no negative at all has loss 0."""
    if scores.shape[1] < 2:
        return scores.sum() * 0.0
    weights = _negative_softmax(scores)
    positive = _diagonal(scores).unsqueeze(1)
    terms = torch.sigmoid(scores - positive) + torch.sigmoid(scores.square())
    return (weights * terms).sum()


LOSSES: dict[str, Callable[[torch.Tensor, float, float], torch.Tensor]] = {
    "cross-entropy": cross_entropy_loss,
    "bpr-max": bpr_max_loss,
    "top1-max": top1_max_loss,
}
