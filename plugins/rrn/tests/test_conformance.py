from __future__ import annotations

import pytest
from harness_rrn import RRN

from harness.testing import ModelConformance


class TestRRNConformance(ModelConformance):
    @pytest.fixture
    def model(self):
        return RRN(embedding_size=8, static_size=4, windows=20)


class TestRRNSampledConformance(ModelConformance):
    @pytest.fixture
    def model(self):
        return RRN(embedding_size=8, static_size=0, windows=10, n_negatives=5, use_features=False)
