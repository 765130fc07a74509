from __future__ import annotations

import pytest
from harness_gru4rec import GRU4Rec

from harness.testing import ModelConformance


class TestGRU4Rec(ModelConformance):
    @pytest.fixture
    def model(self):
        return GRU4Rec(hidden_size=8, batch_size=8, n_sample=16, dropout_hidden=0.1)


class TestGRU4RecOneHotWithGap(ModelConformance):
    @pytest.fixture
    def model(self):
        return GRU4Rec(hidden_size=8, layers=2, constrained_embedding=False, loss="bpr-max",
                       batch_size=4, n_sample=4, session_gap=3600.0, momentum=0.3)
