from __future__ import annotations

import pytest
from harness_hawkes import Hawkes

from harness.testing import ModelConformance

pytest.importorskip("harness.data.sessions", reason="the evaluator's sessionizer is not there yet")


class TestHawkesSliding(ModelConformance):
    @pytest.fixture
    def model(self):
        return Hawkes(min_sessions=3, n_jobs=1)


class TestHawkesLast15(ModelConformance):
    @pytest.fixture
    def model(self):
        return Hawkes(history="last15", min_sessions=3, n_jobs=1, refit="frozen")


class TestHawkesAll(ModelConformance):
    @pytest.fixture
    def model(self):
        return Hawkes(history="all", min_sessions=3, decay=1.0, n_jobs=1, refit="frozen")
