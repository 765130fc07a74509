"""HRNN's training and evaluation state against plain references."""

from __future__ import annotations

import harness_hrnn._model as hrnn_model
import numpy as np
import pytest
import torch
from harness_hrnn import HRNN, session_table

from harness.errors import UsageError
from harness.evaluate import Protocol, prepare
from harness.interactions import Interactions
from harness.testing import random_stream

SMALL = dict(hidden_size=6, user_hidden_size=5, embedding_size=4, n_sample=0, batch_size=4)


def _fitted(stream: Interactions | None = None, epochs: int = 1, **params) -> HRNN:
    model = HRNN(**{**SMALL, **params})
    model.fit(stream if stream is not None else random_stream(), seed=0)
    for _ in range(epochs):
        model.train_epoch()
    return model


def test_training_scores_only_targets_and_samples(monkeypatch):
    """Never a softmax over the catalogue: every loss sees the batch's targets plus n_sample
    columns, far fewer than the 3,000 items."""
    rng = np.random.default_rng(0)
    n = 3000
    stream = Interactions.from_arrays(rng.integers(0, 30, n), rng.integers(0, 3000, n),
                                      np.cumsum(rng.exponential(900.0, n)), n_items=3000)
    widths: list[tuple[int, int]] = []
    real = hrnn_model.LOSSES["cross-entropy"]

    def spy(scores, bpreg, elu):
        widths.append(tuple(scores.shape))
        return real(scores, bpreg, elu)

    monkeypatch.setitem(hrnn_model.LOSSES, "cross-entropy", spy)
    _fitted(stream, n_sample=64)
    assert widths and all(c == r + 64 for r, c in widths)
    assert max(c for _, c in widths) < 3000


def _reference_states(model: HRNN, stream: Interactions) -> dict[int, torch.Tensor]:
    """Each user's state after their training sessions, user by user with the network's cells
    (the paper's recurrences written out)."""
    net = model._net
    table = session_table(stream, model.session_gap, model.max_session_length)
    out = {}
    with torch.no_grad():
        for u in np.flatnonzero(table.seen):
            h_user = torch.zeros(1, model.user_hidden_size)
            rep = None
            for k in range(table.user_start[u], table.user_start[u + 1]):
                if rep is not None:
                    h_user = net.user(rep, h_user)
                h = torch.tanh(net.init(h_user))
                for item in table.items[table.offset[k] : table.offset[k] + table.length[k]]:
                    h = net.intra(net.items(torch.tensor([int(item)])), h)
                rep = h
            out[int(u)] = rep[0]
    return out


def test_evaluation_state_matches_a_user_by_user_reference():
    stream = random_stream()
    model = _fitted(stream, epochs=2)
    state = model._ensure_state()
    reference = _reference_states(model, stream)
    for u, h in reference.items():
        torch.testing.assert_close(state["hidden"][u], h, rtol=1e-5, atol=1e-6)


def test_scores_continue_and_open_sessions_as_the_paper_says():
    stream = random_stream()
    model = _fitted(stream)
    state = model._ensure_state()
    net = model._net
    u = int(np.flatnonzero(state["online"].seen)[0])
    last_t = state["online"].last_t[u]
    same = Interactions.from_arrays([u], [0], [last_t + 10.0], n_users=stream.n_users,
                                    n_items=stream.n_items)
    later = Interactions.from_arrays([u], [0], [last_t + 2 * model.session_gap],
                                     n_users=stream.n_users, n_items=stream.n_items)
    with torch.no_grad():
        h = state["hidden"][u]
        want_same = h @ net.out_w.weight.T + net.out_b.weight[:, 0]
        h_user = net.user(h[None], state["carry"]["user"][u][None])
        h0 = torch.tanh(net.init(h_user))[0]
        want_later = h0 @ net.out_w.weight.T + net.out_b.weight[:, 0]
    np.testing.assert_allclose(model.score(same)[0], want_same.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.score(later)[0], want_later.numpy(), rtol=1e-5, atol=1e-6)
    new_user = Interactions.from_arrays([stream.n_users - 1], [0], [last_t], n_users=stream.n_users,
                                        n_items=stream.n_items)
    with torch.no_grad():  # a user's first session starts from tanh(b_init)
        first = torch.tanh(net.init.bias) @ net.out_w.weight.T + net.out_b.weight[:, 0]
    np.testing.assert_allclose(model.score(new_user)[0], first.numpy(), rtol=1e-5, atol=1e-6)


def test_mode_all_feeds_the_user_state_to_every_step():
    model = _fitted(mode="all")
    assert model._net.intra.weight_ih.shape[1] == SMALL["embedding_size"] + SMALL["user_hidden_size"]


def test_sessions_protocol_run_learns_better_than_chance():
    from harness.evaluate import evaluate

    protocol = Protocol("sessions", session_gap=3600.0, audits=4)
    data = prepare(random_stream(n_events=3000, n_items=40), protocol)
    result = evaluate(HRNN(**{**SMALL, "n_sample": 8}), data, protocol, epochs=3)
    assert result.metrics["test"]["recall@20"] > 0.5 + 0.05  # 20 of 40 items at random


@pytest.mark.parametrize("bad", [{"mode": "both"}, {"hidden_size": 0}, {"dropout": 1.0},
                                 {"loss": "top1"}])
def test_bad_parameters_are_clear_errors(bad):
    with pytest.raises(UsageError, match=f"hrnn: {next(iter(bad))}"):
        HRNN(**bad).fit(random_stream())


def test_score_rows_are_exact_in_blocks_of_any_size():
    """A row's float32 scores are the same bits alone, in small blocks and in a large one."""
    from harness_hrnn import score_rows

    g = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(20_000, 32, generator=g), torch.randn(20_000, generator=g)
    h = torch.randn(300, 32, generator=g)
    full = score_rows(h, weight, bias)
    for start, size in ((0, 1), (7, 1), (3, 2), (50, 4), (11, 5), (100, 17), (0, 300)):
        np.testing.assert_array_equal(score_rows(h[start : start + size], weight, bias),
                                      full[start : start + size])


class InTimeOrder(HRNN):
    """HRNN evaluated in time order (a module-level class: its process imports it)."""

    independent_users = False


def test_evaluated_user_by_user_it_gives_the_numbers_of_time_order():
    """HRNN declares independent_users: the evaluator batches events of many users out of time
    order, audits that each user's answers come from that user's events only (exactly), and
    every metric is the one time order gives."""
    from harness.evaluate import evaluate

    protocol = Protocol("sessions", session_gap=3600.0, audits=8)
    data = prepare(random_stream(n_events=3000, n_items=40), protocol)
    by_user = evaluate(HRNN(**SMALL), data, protocol, epochs=1)
    in_time = evaluate(InTimeOrder(**SMALL), data, protocol, epochs=1)
    assert by_user.audit["own_user_rows"] == 2 * 8 and in_time.audit["own_user_rows"] == 0
    assert any("user by user" in note for note in by_user.notes)
    assert by_user.metrics == in_time.metrics
