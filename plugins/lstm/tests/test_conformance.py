from __future__ import annotations

import pytest
from harness_lstm import LSTM

from harness.testing import ModelConformance


class TestLSTM(ModelConformance):
    @pytest.fixture
    def model(self):
        return LSTM(embedding_size=8, batch_size=8, bptt=10)


class TestLSTMAdagradNoState(ModelConformance):
    @pytest.fixture
    def model(self):
        return LSTM(embedding_size=12, batch_size=4, bptt=7, optimizer="adagrad",
                    learning_rate=0.01, state_loss_weight=0.0)
