"""Conformance checks: each takes an unfitted model and raises AssertionError on a violation."""

from __future__ import annotations

import copy
import functools
import json
import pickle
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from harness.api import Model
from harness.evaluate import Prepared, Protocol, check_compatible, iter_blocks, prepare, replay
from harness.interactions import Interactions
from harness.sandbox import readonly


def random_stream(
    n_users: int = 24,
    n_items: int = 16,
    n_events: int = 800,
    *,
    n_features: int = 2,
    seed: int = 0,
) -> Interactions:
    """A small stream that stresses models: many repeats, equal timestamps, bursts of activity
    separated by long gaps (so it sessionizes), rare state labels, users and items that first
    appear in the last part (cold start), and one user and one item (the last ids) that never
    occur at all."""
    rng = np.random.default_rng(seed)
    warm_users, warm_items = n_users - 4, n_items - 3
    user = rng.integers(0, warm_users, n_events)
    item = rng.integers(0, warm_items, n_events)
    repeat = rng.random(n_events) < 0.4
    for j in np.flatnonzero(repeat)[1:]:
        previous = np.flatnonzero(user[:j] == user[j])
        if previous.size:
            item[j] = item[previous[-1]]
    tail = np.arange(int(0.85 * n_events), n_events)
    cold = rng.random(tail.size) < 0.2
    user[tail[cold]] = rng.integers(warm_users, n_users - 1, cold.sum())
    item[tail[cold]] = rng.integers(warm_items, n_items - 1, cold.sum())
    gaps = np.where(rng.random(n_events) < 0.05, rng.exponential(6 * 3600.0, n_events),
                    np.floor(rng.exponential(60.0, n_events)))
    gaps[rng.random(n_events) < 0.1] = 0.0  # equal timestamps
    t = np.cumsum(gaps)
    label = (rng.random(n_events) < 0.08).astype(np.int8)
    features = rng.normal(size=(n_events, n_features)).astype(np.float32)
    return Interactions.from_arrays(user, item, t, label, features, n_users=n_users,
                                    n_items=n_items, name="conformance")


def _protocol_for(model: Model) -> Protocol:
    caps = type(model).capabilities
    if "rank" in caps:
        return Protocol("streaming", train=0.6, valid=0.2, test=0.2)
    if "state" in caps:
        return Protocol("state")
    return Protocol("sessions", session_gap=3600.0)


def _clone(model: Model) -> Model:
    return type(model)(**model.get_params())


def _fitted(model: Model, data: Prepared, seed: int = 0, epochs: int = 1) -> Model:
    fresh = _clone(model)
    fresh.fit(data.train, seed=seed)
    if type(fresh).iterative:
        for _ in range(epochs):
            fresh.train_epoch()
    return fresh


def _data(model: Model, stream: Interactions | None = None) -> tuple[Prepared, Protocol]:
    """The protocol's parts of a conformance stream, read-only as the harness hands them out."""
    protocol = _protocol_for(model)
    check_compatible(type(model), protocol.name)
    data = prepare(stream if stream is not None else random_stream(), protocol)
    return replace(data, train=readonly(data.train), events=readonly(data.events)), protocol


def _assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray], what: str) -> None:
    for key in a:
        if key in ("best", "worst"):
            if not np.array_equal(a[key], b[key]):
                diff = np.flatnonzero(a[key] != b[key])
                raise AssertionError(
                    f"{what}: {key} ranks differ at {diff.size} of {a[key].size} queries "
                    f"(first at query {diff[0]}: {a[key][diff[0]]} vs {b[key][diff[0]]})"
                )
        elif not np.allclose(a[key], b[key], rtol=1e-5, atol=1e-7):
            raise AssertionError(f"{what}: {key} predictions differ")


def check_params_round_trip(model: Model) -> None:
    """``type(m)(**m.get_params())`` rebuilds the same parameters, and they are JSON values."""
    params = model.get_params()
    rebuilt = _clone(model).get_params()
    if rebuilt != params:
        raise AssertionError(f"parameters changed in a round trip: {params} -> {rebuilt}")
    try:
        json.dumps(params)
    except TypeError as exc:
        raise AssertionError(f"parameters must be JSON values for run records: {exc}") from exc


def check_predictions_shape(model: Model) -> None:
    """Scores are finite and ``(len(block), n_items)``; states are probabilities; gaps are
    finite and >= 0."""
    data, protocol = _data(model)
    fitted = _fitted(model, data)
    block = data.events[:1]
    caps = type(model).capabilities
    if "rank" in caps:
        scores = np.asarray(fitted.score(block))
        expected = (1, data.events.n_items)
        if scores.shape != expected:
            raise AssertionError(f"score returned shape {scores.shape}, expected {expected}")
        if not np.isfinite(scores).all():
            bad = int((~np.isfinite(scores)).sum())
            raise AssertionError(f"score returned NaN or infinity for {bad} of {scores.size} items")
    fitted.observe(block)
    if "state" in caps:
        probs = np.asarray(fitted.predict_state(block))
        if probs.shape != (1,) or not (0 <= probs[0] <= 1):
            raise AssertionError(f"predict_state must return one probability per event: {probs}")
    if "return_time" in caps:
        gaps = np.asarray(fitted.predict_return_time(block.user, block.t))
        if gaps.shape != (1,) or not np.isfinite(gaps).all() or gaps[0] < 0:
            raise AssertionError(f"predict_return_time must return finite gaps >= 0: {gaps}")


def check_block_equals_single(model: Model) -> None:
    """Evaluating in blocks gives the same ranks as one event at a time (models with blocks)."""
    if not type(model).supports_blocks:
        return
    data, protocol = _data(model)
    fitted = _fitted(model, data)
    blocked = replay(copy.deepcopy(fitted), data, protocol, max_block=1024)
    single = replay(copy.deepcopy(fitted), data, protocol, max_block=1)
    _assert_same(blocked, single, "block vs one-at-a-time evaluation")


def check_independent_users(model: Model) -> None:
    """A model that declares ``independent_users`` gives the same answers evaluated user by user
    as in time order (blocks of many users' events; see ``harness.evaluate.by_user``)."""
    if not getattr(type(model), "independent_users", False) or not type(model).supports_blocks:
        return
    data, protocol = _data(model)
    fitted = _fitted(model, data)
    by_user = replay(copy.deepcopy(fitted), data, protocol, max_block=1024, user_by_user=True)
    in_time = replay(copy.deepcopy(fitted), data, protocol, max_block=1024)
    _assert_same(by_user, in_time, "user-by-user vs time-order evaluation")


def check_no_lookahead(model: Model) -> None:
    """A prediction for an event never depends on that event or later ones.

    From a cut point on, events get other items, labels and features (same users and times):
    every prediction before the cut must stay the same, and so must the score row of the event
    at the cut, in one-at-a-time and in block evaluation. A state prediction must not depend on
    the event's own label.
    """
    data, protocol = _data(model)
    fitted = _fitted(model, data)
    max_block = 1024 if type(model).supports_blocks else 1
    rng = np.random.default_rng(1)
    events, n = data.events, len(data.events)
    original = replay(copy.deepcopy(fitted), data, protocol, max_block=1)
    for cut in (n // 3, (2 * n) // 3):
        item = events.item.copy()
        item[cut:] = (item[cut:] + rng.integers(1, events.n_items, n - cut)) % events.n_items
        features = events.features.copy()
        features[cut:] = rng.normal(size=features[cut:].shape)
        altered = replace(events, item=item, label=1 - events.label, features=features)
        altered.label[:cut] = events.label[:cut]
        changed = replay(copy.deepcopy(fitted), replace(data, events=altered), protocol, 1)
        before = {
            "best": int(data.ranked[:cut].sum()),
            "worst": int(data.ranked[:cut].sum()),
            "state": cut if original["state"].size else 0,
            "gap": int((~np.isnan(data.gap[:cut])).sum()),
        }
        _assert_same(
            {k: v[: before[k]] for k, v in original.items()},
            {k: v[: before[k]] for k, v in changed.items()},
            f"predictions before event {cut} changed when events from {cut} on were altered",
        )
        if "rank" in type(model).capabilities:
            _check_row_ignores_future(fitted, data, altered, cut, max_block)
        if original["state"].size:
            own_label = replace(events, label=events.label.copy())
            own_label.label[cut] = 1 - own_label.label[cut]
            flipped = replay(copy.deepcopy(fitted), replace(data, events=own_label), protocol, 1)
            if not np.allclose(flipped["state"][: cut + 1], original["state"][: cut + 1],
                               rtol=1e-5, atol=1e-7):
                raise AssertionError(
                    f"the state prediction for event {cut} depends on that event's own label"
                )


def _advance(model: Model, events: Interactions, max_block: int) -> None:
    """Observe ``events`` block by block, as the evaluator would."""
    for a, b in iter_blocks(events, max_block):
        model.observe(events[a:b])


def _check_row_ignores_future(
    fitted: Model, data: Prepared, altered: Interactions, cut: int, max_block: int
) -> None:
    """Score the evaluation block that holds event ``cut``, with and without the alteration."""
    start, stop = next((a, b) for a, b in iter_blocks(data.events, max_block) if a <= cut < b)
    for width in sorted({1, stop - start}):
        lo = max(start, cut - width + 1)
        before = copy.deepcopy(fitted)
        _advance(before, data.events[:lo], max_block)
        after = copy.deepcopy(before)
        rows = cut - lo + 1
        a = np.asarray(before.score(data.events[lo:stop]))[:rows]
        b = np.asarray(after.score(altered[lo:stop]))[:rows]
        if not np.allclose(a, b, rtol=1e-5, atol=1e-7):
            raise AssertionError(
                f"the score row for event {cut} depends on that event's own item, label or "
                "features, or on later events of its block: the model looks ahead"
            )


def check_seed_determinism(model: Model) -> None:
    """Two fits with the same seed give identical predictions."""
    data, protocol = _data(model)
    first = replay(_fitted(model, data, seed=3), data, protocol, max_block=1)
    second = replay(_fitted(model, data, seed=3), data, protocol, max_block=1)
    _assert_same(first, second, "two runs with seed 3")


def check_pickle_round_trip(model: Model) -> None:
    """A fitted model survives pickling: the copy predicts exactly what the original does."""
    data, protocol = _data(model)
    fitted = _fitted(model, data)
    restored = pickle.loads(pickle.dumps(fitted))
    _assert_same(replay(fitted, data, protocol, 1), replay(restored, data, protocol, 1),
                 "a pickled and restored model")


def check_finite_for_unseen(model: Model) -> None:
    """Users and items absent from training get finite predictions: those that first appear
    during evaluation, and a user and an item that never occur at all."""
    data, protocol = _data(model)
    fitted = _fitted(model, data)
    out = replay(fitted, data, protocol, 1)
    for key in ("state", "gap"):
        if out[key].size and not np.isfinite(out[key]).all():
            raise AssertionError(f"{key} predictions contain non-finite values")
    events = data.events
    never = replace(events[-1:], user=np.array([events.n_users - 1], np.int32),
                    item=np.array([events.n_items - 1], np.int32))
    if events.n_users - 1 in set(data.train.user.tolist()) | set(events.user.tolist()):
        raise AssertionError("the conformance stream must keep its last user id unused")
    caps = type(model).capabilities
    if "rank" in caps and not np.isfinite(np.asarray(fitted.score(never))).all():
        raise AssertionError("score() is not finite for a user and an item never seen")
    fitted.observe(never)
    if "state" in caps and not np.isfinite(np.asarray(fitted.predict_state(never))).all():
        raise AssertionError("predict_state() is not finite for a user never seen")
    if "return_time" in caps:
        gap = np.asarray(fitted.predict_return_time(never.user, never.t))
        if not np.isfinite(gap).all():
            raise AssertionError("predict_return_time() is not finite for a user never seen")


def check_passes_leave_nothing(model: Model) -> None:
    """Two passes over the same events from the same fitted state give the same predictions:
    nothing a pass does (module globals included) reaches the next one. The harness forks the
    model's process per pass, so such state never helps in a run; this check names it."""
    data, protocol = _data(model, random_stream(seed=7))  # events no other check has shown it
    fitted = _fitted(model, data)
    first = replay(copy.deepcopy(fitted), data, protocol, max_block=1)
    second = replay(copy.deepcopy(fitted), data, protocol, max_block=1)
    _assert_same(first, second, "a second pass over the same events, from the same fitted model "
                 "(state kept outside the model object, such as module globals, between passes?)")


@functools.lru_cache(maxsize=2)
def realistic_stream(seed: int = 0, n_events: int = 20_000) -> Interactions:
    """A stream with a real dataset's catalogue: Wikipedia's 1,000 items and a few thousand users
    (the synthetic generator's Wikipedia preset, shortened, four features). Read-only, and
    generated once per process."""
    from harness.data.synthetic import PRESETS, generate

    config = replace(PRESETS["wikipedia"], n_users=2_000, n_events=n_events, n_features=4)
    return readonly(generate(config, seed=seed, name="conformance-realistic"))


def check_audited_run(model: Model) -> None:
    """A whole run as ``harness run`` makes it, on a stream of a real dataset's size: the model in
    its own process, one epoch, every pass audited densely. Look-ahead, state changed by
    ``score``, non-finite or wrongly shaped predictions fail it."""
    from harness.errors import HarnessError
    from harness.evaluate import evaluate

    caps = type(model).capabilities
    name = "streaming" if "rank" in caps else "state" if "state" in caps else "sessions"
    protocol = Protocol(name, audits=64)
    try:
        evaluate(_clone(model), realistic_stream(), protocol, epochs=1)
    except HarnessError as exc:
        raise AssertionError(f"the audited run failed: {exc}") from exc


CHECKS: dict[str, Callable[[Model], None]] = {
    "params_round_trip": check_params_round_trip,
    "predictions_shape": check_predictions_shape,
    "block_equals_single": check_block_equals_single,
    "independent_users": check_independent_users,
    "no_lookahead": check_no_lookahead,
    "seed_determinism": check_seed_determinism,
    "pickle_round_trip": check_pickle_round_trip,
    "finite_for_unseen": check_finite_for_unseen,
    "passes_leave_nothing": check_passes_leave_nothing,
    "audited_run": check_audited_run,
}


def applicable_checks(model: Model) -> list[str]:
    """Names of the checks that apply to the model's capabilities."""
    names = list(CHECKS)
    if not type(model).supports_blocks:
        names.remove("block_equals_single")
    if not (type(model).supports_blocks and getattr(type(model), "independent_users", False)):
        names.remove("independent_users")
    return names


def run_check(model: Model, name: str) -> str | None:
    """Run one check: ``None`` when it passes, else the reason in one line (a model's own
    exception is a failure too, never a traceback)."""
    try:
        CHECKS[name](model)
    except AssertionError as exc:
        return str(exc)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def run_checks(model: Model) -> dict[str, str | None]:
    """Run every applicable check, whatever happens in each: ``{name: None or reason}``."""
    return {name: run_check(model, name) for name in applicable_checks(model)}


def check_model(model: Model) -> list[str]:
    """Run every applicable check; return their names. Raises AssertionError naming every
    failed check, and when no check applies (a run that checks nothing must not pass)."""
    results = run_checks(model)
    if not results:
        raise AssertionError(f"no conformance check applies to {type(model).__name__}")
    failed = [f"{name}: {reason}" for name, reason in results.items() if reason is not None]
    if failed:
        raise AssertionError("; ".join(failed))
    return list(results)
