from __future__ import annotations

import pytest
from harness_latentcross import LatentCross

from harness.testing import ModelConformance


class TestLatentCrossConformance(ModelConformance):
    @pytest.fixture
    def model(self):
        return LatentCross(embedding_size=8, windows=20, time_buckets=8)


class TestLatentCrossGRUProjectionConformance(ModelConformance):
    @pytest.fixture
    def model(self):
        return LatentCross(embedding_size=8, windows=10, cell="gru", time_context="projection",
                           n_negatives=5, use_features=False)
