"""The conformance suite itself: honest models pass, a peeking model fails."""

from __future__ import annotations

import numpy as np
import pytest
from toy_models import ConstantReturn, Counts, Peeking

from harness.api import Model
from harness.testing import (
    ModelConformance,
    check_block_equals_single,
    check_model,
    check_no_lookahead,
    check_params_round_trip,
    check_seed_determinism,
)


class TestCountsConforms(ModelConformance):
    @pytest.fixture
    def model(self):
        return Counts(prior=1.0)


class TestReturnTimeOnlyConforms(ModelConformance):
    @pytest.fixture
    def model(self):
        return ConstantReturn(hours=3.0)


def test_a_model_that_peeks_at_the_event_fails():
    with pytest.raises(AssertionError, match="looks ahead"):
        check_no_lookahead(Peeking())
    with pytest.raises(AssertionError, match="no_lookahead"):
        check_model(Peeking())


class PeeksAtLaterEvents(Counts):
    """Honest about its own event, but row j uses the item of event j+1 in the block."""

    def score(self, block):
        scores = super().score(block)
        for j in range(len(block) - 1):
            scores[j, block.item[j + 1]] += 1e6
        return scores


def test_a_model_that_peeks_at_later_events_of_its_block_fails():
    with pytest.raises(AssertionError, match="looks ahead"):
        check_no_lookahead(PeeksAtLaterEvents())


class LeaksLabel(Counts):
    def predict_state(self, block):
        return block.label.astype(float)


def test_a_state_model_that_reads_the_label_fails():
    with pytest.raises(AssertionError, match="own label"):
        check_no_lookahead(LeaksLabel())


class BlockUnaware(Counts):
    """Claims block support but ignores the earlier events of a block."""

    def score(self, block):
        return np.tile(self.counts_, (len(block), 1))


def test_a_wrong_block_implementation_fails():
    with pytest.raises(AssertionError, match="block vs one-at-a-time"):
        check_block_equals_single(BlockUnaware())


class Unseeded(Counts):
    def fit(self, train, *, seed=0):
        super().fit(train, seed=seed)
        self.counts_ += np.random.default_rng().random(len(self.counts_))


def test_an_unseeded_model_fails_determinism():
    with pytest.raises(AssertionError, match="seed 3"):
        check_seed_determinism(Unseeded())


class Mangles(Model):
    def __init__(self, *, size: int = 3) -> None:
        self.size = size * 2  # logic in __init__: the round trip breaks

    def fit(self, train, *, seed=0):
        pass


def test_constructor_logic_fails_the_parameter_round_trip():
    with pytest.raises(AssertionError, match="round trip"):
        check_params_round_trip(Mangles())


def test_check_model_lists_what_it_ran():
    names = check_model(Counts())
    assert "block_equals_single" in names and "no_lookahead" in names
