from __future__ import annotations

import pytest
from harness_deepcoevolve import DeepCoevolve

from harness.testing import ModelConformance


class TestDeepCoevolveConformance(ModelConformance):
    @pytest.fixture
    def model(self):
        return DeepCoevolve(embedding_size=8, windows=20, n_negatives=3)


class TestDeepCoevolveRNNDensityConformance(ModelConformance):
    @pytest.fixture
    def model(self):
        return DeepCoevolve(embedding_size=8, windows=10, cell="rnn", rank_by="density",
                            max_norm=None, use_features=False)
