from __future__ import annotations

import pytest
from harness_thrnn import THRNN

from harness.testing import ModelConformance


class TestTHRNN(ModelConformance):
    @pytest.fixture
    def model(self):
        return THRNN(hidden_size=8, n_sample=16, batch_size=8, min_batch_users=2)


class TestTHRNNPaperVariant(ModelConformance):
    @pytest.fixture
    def model(self):
        return THRNN(preset="reddit", hidden_size=8, history=3, alpha=0.5, first_item_weight=0.0,
                     expectation="transformed", n_sample=8, batch_size=4, min_batch_users=1)
