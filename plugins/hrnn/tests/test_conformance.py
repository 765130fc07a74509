from __future__ import annotations

import pytest
from harness_hrnn import HRNN

from harness.testing import ModelConformance


class TestHRNN(ModelConformance):
    @pytest.fixture
    def model(self):
        return HRNN(hidden_size=8, user_hidden_size=6, embedding_size=8, n_sample=16, batch_size=8,
                    dropout=0.1)


class TestHRNNAllWithBprMax(ModelConformance):
    @pytest.fixture
    def model(self):
        return HRNN(hidden_size=8, user_hidden_size=6, embedding_size=4, mode="all", loss="bpr-max",
                    n_sample=0, batch_size=4, session_gap=1800.0, max_session_length=5)
