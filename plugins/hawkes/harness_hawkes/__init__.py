"""Hawkes-process return-time baseline for ``harness`` (the baseline of the THRNN paper).

One univariate Hawkes process with an exponential kernel per user, fitted with ``tick`` on the
start times of the user's visits; it predicts the expected time to the user's next visit.
"""

from __future__ import annotations

from harness_hawkes._model import Hawkes
from harness_hawkes._process import expected_gap, least_squares_fit, log_likelihood

__all__ = ["Hawkes", "expected_gap", "least_squares_fit", "log_likelihood"]
