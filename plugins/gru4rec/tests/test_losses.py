"""The losses against values computed independently, in numpy, from the official formulas
(``xe_loss_with_softmax``, ``bpr_max_loss_with_elu`` and ``softmax_neg`` of the official PyTorch
code, ``top1_max`` of the Theano original), on a batch of 3 sessions whose score matrix has the
3 in-batch target columns followed by 2 shared sampled negatives."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from harness_gru4rec import GRU4Rec, bpr_max_loss, cross_entropy_loss, top1_max_loss

from harness.interactions import Interactions

# 3 rows (sessions), 5 columns: targets of rows 0, 1, 2, then two sampled negatives.
SCORES = np.array(
    [
        [2.0, -1.0, 0.5, 0.0, 1.5],
        [0.3, 0.7, -2.0, 1.0, 0.2],
        [-0.5, 0.1, 0.4, -1.2, 2.2],
    ]
)


def np_elu(x: np.ndarray, alpha: float) -> np.ndarray:
    return np.where(x > 0, x, alpha * (np.exp(x) - 1.0))


def np_sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def np_softmax_neg(r: np.ndarray) -> np.ndarray:
    """Each row's softmax over its negatives: the positive's weight is 0."""
    off = 1.0 - np.eye(*r.shape)
    e = np.exp(r) * off
    return e / e.sum(axis=1, keepdims=True)


def np_cross_entropy(r: np.ndarray) -> float:
    p = np.exp(r) / np.exp(r).sum(axis=1, keepdims=True)
    return float(-np.log(np.diag(p)).sum())


def np_bpr_max(scores: np.ndarray, bpreg: float, elu_param: float) -> float:
    r = np_elu(scores, elu_param) if elu_param > 0 else scores
    s = np_softmax_neg(r)
    pos = np.diag(r)[:, None]
    return float((-np.log((s * np_sigmoid(pos - r)).sum(1)) + bpreg * (s * r**2).sum(1)).sum())


def np_top1_max(r: np.ndarray) -> float:
    s = np_softmax_neg(r)
    pos = np.diag(r)[:, None]
    return float((s * (np_sigmoid(r - pos) + np_sigmoid(r**2))).sum())


def as_tensor(a: np.ndarray) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float64)


def test_cross_entropy_matches_numpy() -> None:
    assert float(cross_entropy_loss(as_tensor(SCORES))) == pytest.approx(
        np_cross_entropy(SCORES), rel=1e-12)


@pytest.mark.parametrize("elu_param", [0.5, 1.0, 0.0])
@pytest.mark.parametrize("bpreg", [0.0, 0.5, 1.0])
def test_bpr_max_with_elu_matches_numpy(bpreg: float, elu_param: float) -> None:
    got = float(bpr_max_loss(as_tensor(SCORES), bpreg, elu_param))
    assert got == pytest.approx(np_bpr_max(SCORES, bpreg, elu_param), rel=1e-12)


def test_bpr_max_applies_elu_by_default() -> None:
    # The official default elu_param is 0.5; ELU changes every negative score of SCORES.
    assert float(bpr_max_loss(as_tensor(SCORES))) == pytest.approx(
        np_bpr_max(SCORES, 1.0, 0.5), rel=1e-12)
    assert np_bpr_max(SCORES, 1.0, 0.5) != pytest.approx(np_bpr_max(SCORES, 1.0, 0.0), rel=1e-3)


def test_top1_max_matches_numpy() -> None:
    assert float(top1_max_loss(as_tensor(SCORES))) == pytest.approx(
        np_top1_max(SCORES), rel=1e-12)


def test_two_by_two_cross_entropy_by_hand() -> None:
    # Rows [1, 0] and [0, 1]: each positive has probability e / (e + 1).
    scores = as_tensor(np.eye(2))
    expected = -2 * math.log(math.e / (math.e + 1))
    assert float(cross_entropy_loss(scores)) == pytest.approx(expected, rel=1e-12)


def test_bpr_max_one_negative_by_hand() -> None:
    # One row, positive 1, one negative -1: weight 1 on the negative; ELU(-1, 0.5) =
    # 0.5 (e^-1 - 1), so the loss is -log sigmoid(1 - e) + bpreg * e^2 with e = ELU(-1).
    e = 0.5 * (math.exp(-1.0) - 1.0)
    expected = -math.log(1.0 / (1.0 + math.exp(-(1.0 - e)))) + 2.0 * e * e
    got = float(bpr_max_loss(as_tensor(np.array([[1.0, -1.0]])), 2.0, 0.5))
    assert got == pytest.approx(expected, rel=1e-12)


def test_bpr_max_gradient_moves_positive_up() -> None:
    scores = as_tensor(SCORES).requires_grad_()
    bpr_max_loss(scores, 1.0).backward()
    diag = torch.diagonal(scores.grad[:, :3])
    assert (diag < 0).all()  # descending the loss raises each positive's score


# -- logQ correction, as the model applies it before the cross-entropy -------------------------

COUNTS = np.array([5, 1, 3, 12, 2, 7])  # training events of each of the 6 items


def counted_model(**params: object) -> GRU4Rec:
    """A model fitted on a stream in which item k occurs COUNTS[k] times."""
    item = np.repeat(np.arange(COUNTS.size), COUNTS)
    rng = np.random.default_rng(0)
    item = rng.permutation(item)
    n = item.size
    model = GRU4Rec(**{"hidden_size": 4, "n_sample": 2, **params})
    model.fit(Interactions.from_arrays(np.arange(n) % 3, item, np.arange(n, dtype=float),
                                       n_users=3, n_items=COUNTS.size), seed=0)
    return model


@pytest.mark.parametrize("logq, alpha", [(1.0, 0.5), (0.5, 0.2), (1.0, 1.0)])
def test_logq_cross_entropy_uses_raw_counts(logq: float, alpha: float) -> None:
    model = counted_model(loss="cross-entropy", logq=logq, sample_alpha=alpha)
    targets, samples = np.array([3, 0, 4]), np.array([5, 1])
    # Official: O - logq * log(cat([P0[targets], P0[samples] ** sample_alpha])), P0 raw counts.
    correction = np.log(np.r_[COUNTS[targets], COUNTS[samples] ** alpha].astype(float))
    expected = np_cross_entropy(SCORES - logq * correction)
    got = float(model._summed_loss(as_tensor(SCORES), targets, samples))
    assert got == pytest.approx(expected, rel=1e-6)
    # Normalised probabilities would shift the sampled columns against the in-batch ones by
    # log(sum c) - log(sum c^alpha), which vanishes only for alpha = 1.
    if alpha == 1.0:
        return
    probability = np.r_[COUNTS[targets] / COUNTS.sum(),
                        COUNTS[samples] ** alpha / (COUNTS**alpha).sum()]
    assert np_cross_entropy(SCORES - logq * np.log(probability)) != pytest.approx(
        expected, rel=1e-3)


def test_logq_without_samples_and_not_for_bpr_max() -> None:
    model = counted_model(loss="cross-entropy", logq=1.0)
    targets = np.array([3, 0, 4])
    square = SCORES[:, :3]
    expected = np_cross_entropy(square - np.log(COUNTS[targets].astype(float)))
    assert float(model._summed_loss(as_tensor(square), targets, None)) == pytest.approx(
        expected, rel=1e-6)
    # The official code corrects the cross-entropy only.
    bpr = counted_model(loss="bpr-max", logq=1.0, bpreg=0.7, elu_param=1.0)
    got = float(bpr._summed_loss(as_tensor(SCORES), targets, np.array([5, 1])))
    assert got == pytest.approx(np_bpr_max(SCORES, 0.7, 1.0), rel=1e-12)


def test_a_batch_without_negatives_has_zero_loss_and_gradient_not_nan():
    """One session and no samples: the softmax over negatives would be over nothing (NaN)."""
    from harness_gru4rec import LOSSES

    for name in ("bpr-max", "top1-max"):
        scores = torch.tensor([[0.7]], requires_grad=True)
        loss = LOSSES[name](scores, 1.0, 0.5)
        loss.backward()
        assert loss.item() == 0.0 and scores.grad is not None and torch.isfinite(scores.grad).all()
