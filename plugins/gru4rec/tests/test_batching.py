from __future__ import annotations

import numpy as np
import pytest
from harness_gru4rec import session_parallel_batches, session_sequences, session_starts


def test_session_starts_by_id_gap_and_user() -> None:
    user = np.array([0, 1, 0, 0, 1, 0])
    t = np.array([0.0, 1.0, 2.0, 100.0, 200.0, 201.0])
    session = np.array([5, 7, 5, 6, 7, 6])
    assert session_starts(user, t, session).tolist() == [True, True, False, True, False, False]
    assert session_starts(user, t, None, 50.0).tolist() == [True, True, False, True, True, True]
    assert session_starts(user, t, None, None).tolist() == [True, True, False, False, False, False]


def test_session_sequences_order_and_min_length() -> None:
    user = np.array([1, 0, 1, 0, 2, 0, 1])
    item = np.array([10, 20, 11, 21, 30, 22, 12])
    starts = np.array([True, True, False, False, True, True, True])
    items, offsets = session_sequences(user, item, starts)
    sessions = [items[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    # Ordered by each session's first event; events within a session in time order.
    assert sessions == [[10, 11], [20, 21], [30], [22], [12]]
    items, offsets = session_sequences(user, item, starts, min_length=2)
    sessions = [items[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    assert sessions == [[10, 11], [20, 21]]


@pytest.mark.parametrize("batch_size", [1, 3, 8, 50])
def test_session_parallel_batches_visit_every_pair_in_order(batch_size: int) -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 9, 20)
    offsets = np.r_[0, np.cumsum(lengths)]
    session_of = np.repeat(np.arange(20), lengths)
    seen: list[int] = []
    slots: np.ndarray | None = None  # position of each slot's last input
    next_session = 0
    for step in session_parallel_batches(offsets, batch_size):
        assert 1 <= step.position.size <= batch_size
        if slots is not None and step.keep is not None:
            slots = slots[step.keep]
        for slot, pos in enumerate(step.position):
            if step.reset[slot]:
                # A reset slot starts the next unused session, at its first event.
                assert session_of[pos] == next_session and pos == offsets[next_session]
                next_session += 1
            else:
                assert slots is not None and pos == slots[slot] + 1
                assert session_of[pos] == session_of[pos - 1]
            assert pos + 1 < offsets[session_of[pos] + 1]  # the target lies in the session
        slots = step.position
        seen.extend(step.position.tolist())
    inputs = [p for a, b in zip(offsets[:-1], offsets[1:], strict=True) for p in range(a, b - 1)]
    assert sorted(seen) == inputs  # every (input, target) pair exactly once
    assert next_session == 20


def test_first_step_resets_every_slot() -> None:
    offsets = np.array([0, 3, 5, 9])
    first = next(iter(session_parallel_batches(offsets, 2)))
    assert first.reset.tolist() == [True, True] and first.position.tolist() == [0, 3]
    assert list(session_parallel_batches(np.array([0]), 4)) == []
