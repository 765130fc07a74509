from __future__ import annotations

import pytest
from harness_timelstm import TimeLSTM

from harness.testing import ModelConformance


class TestTimeLSTM(ModelConformance):
    @pytest.fixture
    def model(self):
        return TimeLSTM(embedding_size=8, batch_size=8, bptt=10)


class TestTimeLSTMStandardizedAuthorsClamp(ModelConformance):
    @pytest.fixture
    def model(self):
        return TimeLSTM(embedding_size=12, batch_size=4, bptt=7, time_scale="standardize",
                        wt1_constraint="authors", optimizer="adagrad", learning_rate=0.01)
