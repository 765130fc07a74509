from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from harness_gru4rec import bpr_max_loss, cross_entropy_loss, top1_max_loss

SCORES = np.array(
    [
        [2.0, -1.0, 0.5, 0.0, 1.5],
        [0.3, 0.7, -2.0, 1.0, 0.2],
        [-0.5, 0.1, 0.4, -1.2, 2.2],
    ]
)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def negative_weights(row: np.ndarray, i: int) -> list[float]:
    """Softmax of a row over every column but the positive ``i`` (weight 0 there)."""
    exps = [0.0 if j == i else math.exp(v) for j, v in enumerate(row)]
    total = sum(exps)
    return [e / total for e in exps]


def hand_cross_entropy(scores: np.ndarray) -> float:
    total = 0.0
    for i, row in enumerate(scores):
        total -= math.log(math.exp(row[i]) / sum(math.exp(v) for v in row))
    return total


def hand_bpr_max(scores: np.ndarray, bpreg: float) -> float:
    total = 0.0
    for i, row in enumerate(scores):
        w = negative_weights(row, i)
        ranking = sum(w[j] * sigmoid(row[i] - row[j]) for j in range(len(row)))
        regular = sum(w[j] * row[j] ** 2 for j in range(len(row)))
        total += -math.log(ranking) + bpreg * regular
    return total


def hand_top1_max(scores: np.ndarray) -> float:
    total = 0.0
    for i, row in enumerate(scores):
        w = negative_weights(row, i)
        total += sum(
            w[j] * (sigmoid(row[j] - row[i]) + sigmoid(row[j] ** 2)) for j in range(len(row))
        )
    return total


def as_tensor(a: np.ndarray) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float64)


def test_cross_entropy_matches_hand_computation() -> None:
    assert float(cross_entropy_loss(as_tensor(SCORES))) == pytest.approx(
        hand_cross_entropy(SCORES), rel=1e-12)


@pytest.mark.parametrize("bpreg", [0.0, 0.5, 1.0])
def test_bpr_max_matches_hand_computation(bpreg: float) -> None:
    assert float(bpr_max_loss(as_tensor(SCORES), bpreg)) == pytest.approx(
        hand_bpr_max(SCORES, bpreg), rel=1e-12)


def test_top1_max_matches_hand_computation() -> None:
    assert float(top1_max_loss(as_tensor(SCORES))) == pytest.approx(
        hand_top1_max(SCORES), rel=1e-12)


def test_two_by_two_cross_entropy_by_hand() -> None:
    # Rows [1, 0] and [0, 1]: each positive has probability e / (e + 1).
    scores = as_tensor(np.eye(2))
    expected = -2 * math.log(math.e / (math.e + 1))
    assert float(cross_entropy_loss(scores)) == pytest.approx(expected, rel=1e-12)


def test_bpr_max_gradient_moves_positive_up() -> None:
    scores = as_tensor(SCORES).requires_grad_()
    bpr_max_loss(scores, 1.0).backward()
    diag = torch.diagonal(scores.grad[:, :3])
    assert (diag < 0).all()  # descending the loss raises each positive's score
