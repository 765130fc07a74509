"""THRNN's return-time model: a point process on the gap ``g`` (hours) to the next session.

With ``s = v.h + b`` from the inter-session state ``h``, the intensity of the paper's Equation 1
is ``lambda(g) = exp(s + w g)``, whose density (Equation 3) is

    f(g) = exp(s + w g + (e^s - e^(s + w g)) / w).

The training loss (Equation 5) puts an exponent ``alpha`` on the gap:
``-[s + w g^alpha + (e^s - e^(s + w g^alpha)) / w]``. For ``alpha = 1`` this is the exact
negative log-likelihood of the gap. For ``alpha != 1`` it is not the likelihood of
``lambda(g) = exp(s + w g^alpha)`` (whose integral has no closed form); it is the exact negative
log-density of the transformed gap ``u = g^alpha`` under ``exp(s + w u)``, without the Jacobian
``alpha g^(alpha - 1)``. The paper (and its authors' code) use it as the loss all the same.

The expected gap (Equation 4) is integrated numerically as the authors' code does: Simpson's rule
on ``g f(g)`` over 0-100 h and 100-700 h with 3,000 intervals each; the mass beyond the 700 h
cut-off is left out, and the code's expectation ignores ``alpha`` (``expectation="code"``).
``expectation="transformed"`` integrates the gap under the distribution the loss fits
(``u = g^alpha`` with density ``f``), on the same grid.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["EXPECTATIONS", "expected_gap", "gap_bucket", "log_density", "simpson_grid",
           "time_loss"]

EXPECTATIONS = ("code", "transformed")
#: The authors' integration: (start, stop, intervals) pieces in hours, cut-off 700 h.
PIECES = ((0.0, 100.0, 3000), (100.0, 700.0, 3000))


def log_density(s: torch.Tensor, w: torch.Tensor, g: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """``s + w x + (e^s - e^(s + w x)) / w`` with ``x = g ** alpha``: the closed form of
    Equation 5 (the log-likelihood the loss negates)."""
    x = g.pow(alpha) if alpha != 1.0 else g
    return s + w * x + (torch.exp(s) - torch.exp(s + w * x)) / w


def time_loss(s: torch.Tensor, w: torch.Tensor, g: torch.Tensor, alpha: float,
              mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``-log_density`` over the rows where ``mask`` holds (zero without rows)."""
    if not bool(mask.any()):
        return s.sum() * 0.0
    return -log_density(s[mask], w, g[mask], alpha).mean()


def simpson_grid(pieces: tuple[tuple[float, float, int], ...] = PIECES
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Points and Simpson weights whose dot product with ``f(points)`` integrates ``f`` over
    the pieces (each with an even number of intervals)."""
    points, weights = [], []
    for start, stop, n in pieces:
        if n % 2:
            raise ValueError(f"Simpson's rule needs an even number of intervals, got {n}")
        x = np.linspace(start, stop, n + 1)
        c = np.ones(n + 1)
        c[1:-1:2], c[2:-1:2] = 4.0, 2.0
        points.append(x)
        weights.append(c * (stop - start) / n / 3.0)
    return np.concatenate(points), np.concatenate(weights)


def expected_gap(s: np.ndarray, w: float, alpha: float = 1.0, expectation: str = "code",
                 pieces: tuple[tuple[float, float, int], ...] = PIECES) -> np.ndarray:
    """Expected gap in hours for each ``s``, truncated at the last piece's end."""
    g, c = simpson_grid(pieces)
    s = np.asarray(s, np.float64)[:, None]
    if expectation == "code":
        x, jacobian = g, 1.0
    elif expectation == "transformed":
        x = g**alpha
        jacobian = np.zeros_like(g)  # g * f(g) vanishes at 0, so its value there is irrelevant
        jacobian[g > 0] = alpha * g[g > 0] ** (alpha - 1.0)
    else:
        raise ValueError(f"expectation must be one of {EXPECTATIONS}, got {expectation!r}")
    density = np.exp(s + w * x + (np.exp(s) - np.exp(s + w * x)) / w)
    integrand = g * density * jacobian
    # A row-wise sum, not a matrix product: each row's value must not depend on the other rows.
    return (integrand * c).sum(axis=1)


def gap_bucket(gap_seconds: np.ndarray, min_gap: float, n_buckets: int = 500,
               max_hours: float = 500.0) -> np.ndarray:
    """The authors' gap buckets: ``n_buckets`` uniform buckets up to ``max_hours``; gaps at or
    below ``min_gap`` seconds (and unknown gaps, NaN) go to bucket 0."""
    hours = np.asarray(gap_seconds, np.float64) / 3600.0
    width = max_hours / n_buckets
    with np.errstate(invalid="ignore"):
        bucket = np.clip(np.floor(np.nan_to_num(hours, nan=0.0) / width), 0, n_buckets - 1)
        small = ~(np.asarray(gap_seconds) > min_gap)
    return np.where(small, 0, bucket).astype(np.int64)
