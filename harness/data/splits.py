"""Train/valid/test splits as split codes per event: 0 train, 1 valid, 2 test, -1 unused."""

from __future__ import annotations

import numpy as np

from harness.errors import UsageError
from harness.interactions import Interactions

__all__ = ["TRAIN", "TEST", "TRAINING_FRACTIONS", "UNUSED", "VALID", "index_split",
           "session_split"]

TRAIN, VALID, TEST, UNUSED = 0, 1, 2, -1
#: Training fractions of the JODIE paper's robustness experiment (valid and test 10% each after).
TRAINING_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise UsageError(f"`0 <= {name} <= 1` must hold, but got {name}={value}")


def index_split(n_events: int, train: float = 0.8, valid: float = 0.1,
                test: float | None = None) -> np.ndarray:
    """Split by event index as the JODIE code does.

    Train is ``[0, int(n*train))``, valid ``[int(n*train), int(n*(train+valid)))``, test from
    there to ``int(n*(train+valid+test))`` (the end when ``test`` is None); later events are
    unused (-1). 80/10/10 is experiment 1, 60/20/20 experiment 2; the robustness experiment uses
    ``train`` in :data:`TRAINING_FRACTIONS` with ``valid=0.1, test=0.1``.
    """
    if n_events < 0:
        raise UsageError(f"`n_events >= 0` must hold, but got n_events={n_events}")
    _check_fraction("train", train)
    _check_fraction("valid", valid)
    total = train + valid + (0.0 if test is None else test)
    if test is not None:
        _check_fraction("test", test)
    if total > 1.0 + 1e-9:
        raise UsageError(f"split fractions must sum to at most 1, but got train={train}, "
                         f"valid={valid}, test={test} (sum {total:g})")
    train_end = int(n_events * train)
    valid_end = int(n_events * (train + valid))
    # train + (valid + test): the JODIE code computes `train_proportion + 0.2`, and float sums differ
    test_end = n_events if test is None else min(int(n_events * (train + (valid + test))), n_events)
    codes = np.full(n_events, UNUSED, np.int8)
    codes[:train_end] = TRAIN
    codes[train_end:valid_end] = VALID
    codes[valid_end:test_end] = TEST
    return codes


def session_split(stream: Interactions, test: float = 0.2, valid: float = 0.1) -> np.ndarray:
    """Per-user session split of a sessionized stream (see :func:`harness.data.sessionize`).

    Each user's sessions (the ``session`` parts) are ordered by start. The first
    ``int(n_u * (1 - test))`` stay for training and validation, the rest are test: the THRNN
    authors' script uses ``int(0.8 * n_sessions)`` (so a user with 4 sessions has 1 test
    session, one with 2 has 1). Of those, sessions from ``int(n_u * (1 - test - valid))`` on
    are validation, the earlier ones training.
    """
    if stream.session is None:
        raise UsageError("session_split needs a sessionized stream; call "
                         "harness.data.sessionize(stream, gap) first")
    _check_fraction("test", test)
    _check_fraction("valid", valid)
    if test + valid > 1.0 + 1e-9:
        raise UsageError(f"`test + valid <= 1` must hold, but got test={test}, valid={valid}")
    if len(stream) == 0:
        return np.zeros(0, np.int8)
    sessions, first, inverse = np.unique(stream.session, return_index=True, return_inverse=True)
    s_user = stream.user[first]
    s_start = stream.t[first]
    order = np.lexsort((sessions, s_start, s_user))
    sorted_user = s_user[order]
    boundary = np.ones(len(order), bool)
    boundary[1:] = sorted_user[1:] != sorted_user[:-1]
    group_start = np.flatnonzero(boundary)
    counts = np.diff(np.append(group_start, len(order)))
    rank = np.arange(len(order)) - np.repeat(group_start, counts)
    n_u = np.repeat(counts, counts)
    test_from = np.floor(n_u * (1.0 - test) + 1e-9).astype(np.int64)
    valid_from = np.floor(n_u * (1.0 - test - valid) + 1e-9).astype(np.int64)
    code_sorted = np.where(rank >= test_from, TEST, np.where(rank >= valid_from, VALID, TRAIN))
    code = np.empty(len(order), np.int8)
    code[order] = code_sorted
    return code[inverse]
