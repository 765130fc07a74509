"""The conformance suite: checks every model plugin must pass, selected by its capabilities.

Plain functions (:func:`check_model`, the ``check_*`` functions) and a pytest adapter
(:class:`ModelConformance`). A third party's whole test file::

    import pytest
    from harness.testing import ModelConformance
    from my_plugin import MyModel

    class TestMyModel(ModelConformance):
        @pytest.fixture
        def model(self):
            return MyModel(dim=8)
"""

from harness.testing._checks import (
    CHECKS,
    applicable_checks,
    check_audited_run,
    check_block_equals_single,
    check_finite_for_unseen,
    check_independent_users,
    check_model,
    check_no_lookahead,
    check_params_round_trip,
    check_passes_leave_nothing,
    check_pickle_round_trip,
    check_predictions_shape,
    check_seed_determinism,
    random_stream,
    realistic_stream,
    run_check,
    run_checks,
)
from harness.testing._pytest import ModelConformance

__all__ = [
    "CHECKS",
    "ModelConformance",
    "applicable_checks",
    "check_audited_run",
    "check_block_equals_single",
    "check_independent_users",
    "check_finite_for_unseen",
    "check_model",
    "check_no_lookahead",
    "check_params_round_trip",
    "check_passes_leave_nothing",
    "check_pickle_round_trip",
    "check_predictions_shape",
    "check_seed_determinism",
    "random_stream",
    "realistic_stream",
    "run_check",
    "run_checks",
]
