from __future__ import annotations

import pytest
from harness_baselines import Frequency, Popularity, Recency

from harness.testing import ModelConformance

pytest.importorskip("harness.data.splits", reason="the evaluator's data splits are not there yet")


class TestPopularity(ModelConformance):
    @pytest.fixture
    def model(self):
        return Popularity()


class TestRecency(ModelConformance):
    @pytest.fixture
    def model(self):
        return Recency()


class TestFrequency(ModelConformance):
    @pytest.fixture
    def model(self):
        return Frequency()
