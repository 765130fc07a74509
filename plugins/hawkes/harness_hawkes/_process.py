"""The univariate exponential Hawkes process: likelihood, expected gap, per-user fits.

Parameterization (tick's ``HawkesExpKern``): intensity
``lambda(s) = mu + sum_{t_i < s} alpha * beta * exp(-beta * (s - t_i))``, with baseline ``mu``,
adjacency ``alpha`` (the mean number of events one event triggers) and decay ``beta``.
Times here are in the model's time unit, not seconds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["expected_gap", "fit_users", "least_squares_fit", "log_likelihood"]

#: Points of the integration grid (geometric between ``cutoff * 1e-7`` and ``cutoff``; odd,
#: for Simpson's rule).
GRID_POINTS = 1201
#: A fitted baseline at or below this is degenerate: the process may never fire again.
MIN_BASELINE = 1e-9


def log_likelihood(times: np.ndarray, mu: float, alpha: float, beta: float,
                   end: float | None = None) -> float:
    """Log-likelihood of event ``times`` (sorted, in ``[0, end]``) under the process.

    ``sum_i log lambda(t_i) - int_0^end lambda``; ``end`` defaults to the last event, the window
    tick's least-squares fit uses.
    """
    times = np.asarray(times, dtype=np.float64)
    if end is None:
        end = float(times[-1]) if times.size else 0.0
    if times.size == 0:
        return -mu * end
    # r_i = sum_{j<i} exp(-beta (t_i - t_j)), by the usual recursion.
    r = np.zeros(times.size)
    decay = np.exp(-beta * np.diff(times))
    acc = 0.0
    for i in range(1, times.size):
        acc = decay[i - 1] * (1.0 + acc)
        r[i] = acc
    intensity = mu + alpha * beta * r
    if np.any(intensity <= 0):
        return -math.inf
    compensator = mu * end + alpha * float(np.sum(1.0 - np.exp(-beta * (end - times))))
    return float(np.sum(np.log(intensity)) - compensator)


def expected_gap(mu: np.ndarray, alpha: np.ndarray, beta: np.ndarray, excitation: np.ndarray,
                 cutoff: float, chunk: int = 256) -> np.ndarray:
    """Expected time from ``t`` to the next event, truncated at ``cutoff``: ``E[min(gap, cutoff)]``.

    ``excitation`` is ``sum_i exp(-beta (t - t_i))`` over the history at the query time ``t``.
    After ``t`` the compensator has the closed form
    ``Lambda(u) = mu u + alpha * excitation * (1 - exp(-beta u))`` and the survival is
    ``exp(-Lambda(u))``; integrating ``u f(u)`` over ``[0, cutoff]`` and putting the remaining
    mass at the cut-off equals ``int_0^cutoff exp(-Lambda(u)) du``, computed by Simpson's rule
    in ``log u`` (a geometric grid, so both fast and slow decays are resolved). All arrays have
    one entry per query.
    """
    mu, alpha, beta, excitation = (np.asarray(a, dtype=np.float64).ravel()
                                   for a in (mu, alpha, beta, excitation))
    grid, weights = _quadrature(cutoff)
    out = np.empty(mu.size)
    for lo in range(0, mu.size, chunk):
        sl = slice(lo, lo + chunk)
        compensator = (mu[sl, None] * grid
                       + (alpha[sl] * excitation[sl])[:, None]
                       * -np.expm1(-beta[sl, None] * grid))
        out[sl] = np.exp(-compensator) @ weights
    return out


def _quadrature(cutoff: float) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights for ``int_0^cutoff g(u) du``: Simpson's rule on ``x = log u`` over
    ``[cutoff * 1e-7, cutoff]`` (``du = u dx``), plus a trapezoid on ``[0, cutoff * 1e-7]``."""
    x = np.linspace(math.log(cutoff * 1e-7), math.log(cutoff), GRID_POINTS)
    step = x[1] - x[0]
    simpson = np.full(GRID_POINTS, 2.0)
    simpson[1::2] = 4.0
    simpson[[0, -1]] = 1.0
    u = np.exp(x)
    weights = np.concatenate([[u[0] / 2], simpson * step / 3 * u])
    weights[1] += u[0] / 2
    return np.concatenate([[0.0], u]), weights


def least_squares_fit(times: np.ndarray, beta: float) -> tuple[float, float, bool]:
    """The exact least-squares fit of ``(mu, alpha)`` for a fixed decay: ``(mu, alpha, clipped)``.

    Minimises the contrast tick's least-squares ``HawkesExpKern`` minimises,
    ``int_0^T lambda(s)^2 ds - 2 sum_i lambda(t_i)`` with ``T`` the last event, over
    ``mu, alpha >= 0``. With ``g(s) = sum_{t_i < s} beta exp(-beta (s - t_i))`` it is the
    quadratic ``T mu^2 + 2 G1 mu alpha + G2 alpha^2 - 2 n mu - 2 D alpha`` with
    ``G1 = int g``, ``G2 = int g^2`` and ``D = sum_k g(t_k)`` in closed form, so the minimum is a
    2x2 solve, moved to the boundary when a coordinate comes out negative (``clipped`` when
    ``alpha`` is the one). tick's gradient descent stops short of this minimum (its parameters
    differ by up to about 1% on short windows); this solve is exact and costs microseconds.
    Returns a NaN ``mu`` when the fit is degenerate (all events at one instant, or a baseline at
    or below :data:`MIN_BASELINE`).
    """
    t = np.asarray(times, dtype=np.float64)
    n, end = t.size, float(t[-1] - t[0]) if t.size else 0.0
    t = t - (t[0] if t.size else 0.0)
    if n < 2 or end <= 0:
        return math.nan, math.nan, False
    diff = t[:, None] - t[None, :]
    g1 = float(np.sum(-np.expm1(-beta * (end - t))))
    g2 = 0.5 * beta * float(np.sum(np.exp(-beta * np.abs(diff))
                                   - np.exp(-beta * (2 * end - t[:, None] - t[None, :]))))
    later = diff > 0
    d = beta * float(np.sum(np.exp(-beta * diff[later])))
    det = end * g2 - g1 * g1
    mu, alpha = ((g2 * n - g1 * d) / det, (end * d - g1 * n) / det) if det > 0 else (-1.0, -1.0)
    clipped = alpha < 0
    if clipped:
        mu, alpha = n / end, 0.0
    elif mu < 0:
        mu, alpha = 0.0, d / g2
    if not mu > MIN_BASELINE:
        return math.nan, math.nan, clipped
    return mu, alpha, clipped


class _Learners(dict):
    """tick learners by decay, made on first use. Building a learner costs about as much as a
    fit, and refitting one gives the same coefficients as a fresh learner."""

    def __missing__(self, beta: float) -> Any:
        from tick.hawkes import HawkesExpKern

        learner = self[beta] = HawkesExpKern(decays=float(beta), gofit="least-squares")
        return learner


_LEARNERS = _Learners()


def fit_users(tasks: Sequence[tuple[Any, np.ndarray]], decays: Sequence[float],
              ) -> list[tuple[Any, float, float, float]]:
    """Fit one process per ``(key, times)`` task with tick's least-squares ``HawkesExpKern`` (the
    key, a user id for instance, is passed through).

    ``times`` start at 0 and are sorted. With several ``decays`` each is fitted and the one of
    highest log-likelihood kept. Returns ``(user, mu, alpha, beta)``, with NaNs where every fit
    failed or was degenerate (baseline <= MIN_BASELINE, or all events at one instant). ``alpha``
    is tick's estimate, which may be negative: the caller clips it at 0 (and counts the clips);
    the log-likelihood that picks the decay uses the clipped value. Runs in worker processes:
    keep it a module-level function of plain arguments.
    """
    learners = _LEARNERS  # kept across calls: the sliding refit fits a window per prediction
    out = []
    for user, times in tasks:
        best: tuple[float, float, float, float] | None = None
        # All visits at one instant leave the least-squares problem without a time scale.
        for beta in decays if len(times) and times[-1] > times[0] else ():
            try:
                learner = learners[beta]
                learner.fit([np.ascontiguousarray(times, dtype=np.float64)])
                mu = float(learner.baseline[0])
                alpha = float(learner.adjacency[0, 0])
            except Exception:  # tick raises assorted errors on degenerate data: a failed fit
                learners.pop(beta, None)
                continue
            if not (math.isfinite(mu) and math.isfinite(alpha)) or mu <= MIN_BASELINE:
                continue
            ll = log_likelihood(times, mu, max(alpha, 0.0), float(beta)) if len(decays) > 1 else 0.0
            if best is None or ll > best[0]:
                best = (ll, mu, alpha, float(beta))
        if best is None:
            out.append((user, math.nan, math.nan, math.nan))
        else:
            out.append((user, best[1], best[2], best[3]))
    return out
