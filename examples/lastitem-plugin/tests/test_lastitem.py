import pytest
from harness_lastitem import LastItem

from harness.testing import ModelConformance


class TestLastItem(ModelConformance):
    @pytest.fixture
    def model(self):
        return LastItem()
