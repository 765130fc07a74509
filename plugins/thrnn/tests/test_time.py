"""The return-time model against independent references (scipy's adaptive quadrature) and
hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from harness_thrnn import expected_gap, gap_bucket, log_density, simpson_grid, time_loss
from scipy import integrate

CASES = [(-1.0, -0.1), (0.5, -0.02), (-3.0, -0.5), (-2.0, 0.05)]


def _log_density(s: float, w: float, g: float, alpha: float = 1.0) -> float:
    return float(log_density(torch.tensor(s, dtype=torch.float64), torch.tensor(w, dtype=torch.float64),
                             torch.tensor(g, dtype=torch.float64), alpha))


@pytest.mark.parametrize("s, w", CASES)
@pytest.mark.parametrize("g", [0.0, 0.3, 2.0, 17.5])
def test_closed_form_is_log_intensity_minus_its_integral(s, w, g):
    """log f(g) = log lambda(g) - int_0^g lambda, with lambda(x) = exp(s + w x)."""
    compensator, _ = integrate.quad(lambda x: math.exp(s + w * x), 0.0, g, epsabs=1e-13)
    assert _log_density(s, w, g) == pytest.approx(s + w * g - compensator, rel=1e-10, abs=1e-10)


@pytest.mark.parametrize("s, w", [c for c in CASES if c[1] < 0])
@pytest.mark.parametrize("alpha", [0.3, 0.7, 1.0])
def test_alpha_form_is_the_density_of_the_transformed_gap(s, w, alpha):
    """With alpha != 1, exp(-loss) is the density of u = g^alpha under exp(s + w u): its mass
    over g (with the Jacobian alpha g^(alpha - 1)) is 1 - exp(e^s / w), the process's chance of
    ever returning (w < 0 leaves the rest at infinity)."""
    mass, _ = integrate.quad(
        lambda g: math.exp(_log_density(s, w, g, alpha)) * alpha * g ** (alpha - 1.0),
        0.0, np.inf, limit=400)
    assert mass == pytest.approx(1.0 - math.exp(math.exp(s) / w), rel=1e-6)


def test_alpha_one_is_the_default_and_hand_computed():
    # s = 0, w = -1, g = 1: 0 - 1 + (1 - e^-1) / -1 = -1 - 1 + e^-1
    assert _log_density(0.0, -1.0, 1.0) == pytest.approx(-2.0 + math.exp(-1.0), rel=1e-12)
    # with alpha = 0.5 and g = 4, the form sees x = 2: 0 - 2 + (1 - e^-2) / -1
    assert _log_density(0.0, -1.0, 4.0, 0.5) == pytest.approx(-3.0 + math.exp(-2.0), rel=1e-12)


def test_time_loss_masks_rows_and_averages():
    s = torch.tensor([0.0, 0.0, 5.0], dtype=torch.float64)
    g = torch.tensor([1.0, 1.0, 100.0], dtype=torch.float64)
    w = torch.tensor(-1.0, dtype=torch.float64)
    loss = time_loss(s, w, g, 1.0, torch.tensor([True, True, False]))
    assert float(loss) == pytest.approx(2.0 - math.exp(-1.0), rel=1e-12)
    assert float(time_loss(s, w, g, 1.0, torch.zeros(3, dtype=torch.bool))) == 0.0


def _density(s: float, w: float, t: float) -> float:
    return math.exp(s + w * t + (math.exp(s) - math.exp(s + w * t)) / w)


@pytest.mark.parametrize("s, w", CASES)
def test_expected_gap_matches_adaptive_quadrature(s, w):
    want = sum(integrate.quad(lambda t: t * _density(s, w, t), a, b, limit=400, epsabs=1e-12)[0]
               for a, b in ((0.0, 100.0), (100.0, 700.0)))
    got = expected_gap(np.array([s]), w)[0]
    # Simpson's rule with 2-minute steps below 100 h: 1e-6 on a density with a 20-minute scale
    assert got == pytest.approx(want, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("rate", [0.05, 0.5, 3.0])
def test_expected_gap_of_a_constant_intensity_by_hand(rate):
    """w -> 0 is a Poisson process: the truncated mean is 1/r - e^(-700 r) (700 + 1/r)."""
    got = expected_gap(np.array([math.log(rate)]), -1e-9)[0]
    want = 1.0 / rate - math.exp(-700.0 * rate) * (700.0 + 1.0 / rate)
    assert got == pytest.approx(want, rel=1e-5)


def test_code_expectation_ignores_alpha_and_transformed_does_not():
    s, w = np.array([-1.0]), -0.1
    assert expected_gap(s, w, 0.5, "code")[0] == expected_gap(s, w, 1.0, "code")[0]
    alpha = 0.5

    def integrand(g: float) -> float:
        return g * _density(-1.0, w, g**alpha) * alpha * g ** (alpha - 1.0) if g > 0 else 0.0

    want = sum(integrate.quad(integrand, a, b, limit=400)[0] for a, b in ((0, 100), (100, 700)))
    assert expected_gap(s, w, alpha, "transformed")[0] == pytest.approx(want, rel=1e-4)
    assert expected_gap(s, w, 1.0, "transformed")[0] == pytest.approx(expected_gap(s, w)[0],
                                                                      rel=1e-12)


def test_simpson_grid_is_exact_for_cubics_and_checks_its_intervals():
    x, c = simpson_grid(((0.0, 2.0, 4), (2.0, 5.0, 6)))
    assert float(c @ (x**3 - x)) == pytest.approx(5.0**4 / 4 - 5.0**2 / 2, rel=1e-12)
    with pytest.raises(ValueError, match="even"):
        simpson_grid(((0.0, 1.0, 3),))


def test_rows_do_not_depend_on_each_other():
    s = np.linspace(-4, 1, 37)
    together = expected_gap(s, -0.07)
    alone = np.array([expected_gap(s[i : i + 1], -0.07)[0] for i in range(s.size)])
    assert np.array_equal(together, alone)


def test_gap_buckets_by_hand():
    hours = np.array([np.nan, 0.0, 0.4, 0.5, 0.7, 1.5, 42.0, 499.5, 1000.0])
    got = gap_bucket(hours * 3600.0, min_gap=1800.0)
    assert got.tolist() == [0, 0, 0, 0, 0, 1, 42, 499, 499]
    assert gap_bucket(np.array([3.0 * 3600]), min_gap=0.0, n_buckets=10, max_hours=5.0).tolist() == [6]
