"""The pytest adapter: subclass :class:`ModelConformance` and override the ``model`` fixture."""

from __future__ import annotations

import pytest

from harness.testing._checks import CHECKS, applicable_checks


class ModelConformance:
    """One test per conformance check; checks that do not apply to the model are skipped."""

    @pytest.fixture
    def model(self):
        raise NotImplementedError("override the `model` fixture to return a fresh, small model")

    def _run(self, model, name: str) -> None:
        if name not in applicable_checks(model):
            pytest.skip(f"{name} does not apply to {type(model).__name__}")
        CHECKS[name](model)

    def test_params_round_trip(self, model):
        self._run(model, "params_round_trip")

    def test_predictions_shape(self, model):
        self._run(model, "predictions_shape")

    def test_block_equals_single(self, model):
        self._run(model, "block_equals_single")

    def test_independent_users(self, model):
        self._run(model, "independent_users")

    def test_no_lookahead(self, model):
        self._run(model, "no_lookahead")

    def test_seed_determinism(self, model):
        self._run(model, "seed_determinism")

    def test_pickle_round_trip(self, model):
        self._run(model, "pickle_round_trip")

    def test_finite_for_unseen(self, model):
        self._run(model, "finite_for_unseen")

    def test_passes_leave_nothing(self, model):
        self._run(model, "passes_leave_nothing")

    def test_audited_run(self, model):
        self._run(model, "audited_run")
