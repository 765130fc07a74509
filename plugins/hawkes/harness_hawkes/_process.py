"""The univariate exponential Hawkes process: likelihood, expected gap, per-user fits.

Parameterization (tick's ``HawkesExpKern``): intensity
``lambda(s) = mu + sum_{t_i < s} alpha * beta * exp(-beta * (s - t_i))``, with baseline ``mu``,
adjacency ``alpha`` (the mean number of events one event triggers) and decay ``beta``.
Times here are in the model's time unit, not seconds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["expected_gap", "fit_users", "log_likelihood"]

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


def fit_users(tasks: Sequence[tuple[int, np.ndarray]], decays: Sequence[float],
              ) -> list[tuple[int, float, float, float]]:
    """Fit one process per ``(user, times)`` task with tick's least-squares ``HawkesExpKern``.

    ``times`` start at 0 and are sorted. With several ``decays`` each is fitted and the one of
    highest log-likelihood kept. Returns ``(user, mu, alpha, beta)``, with NaNs where every fit
    failed or was degenerate (baseline <= MIN_BASELINE, or all events at one instant). Runs in
    worker processes: keep it a module-level function of plain arguments.
    """
    from tick.hawkes import HawkesExpKern

    def new_learner(beta: float) -> HawkesExpKern:
        return HawkesExpKern(decays=float(beta), gofit="least-squares")

    # One learner per decay, refitted user after user: building a tick learner costs about as
    # much as a fit, and a refit gives the same coefficients as a fresh learner.
    learners = {beta: new_learner(beta) for beta in decays}
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
                learners[beta] = new_learner(beta)
                continue
            if not (math.isfinite(mu) and math.isfinite(alpha)) or mu <= MIN_BASELINE:
                continue
            alpha = max(alpha, 0.0)
            ll = log_likelihood(times, mu, alpha, float(beta)) if len(decays) > 1 else 0.0
            if best is None or ll > best[0]:
                best = (ll, mu, alpha, float(beta))
        if best is None:
            out.append((user, math.nan, math.nan, math.nan))
        else:
            out.append((user, best[1], best[2], best[3]))
    return out
