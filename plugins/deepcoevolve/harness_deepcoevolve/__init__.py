"""DeepCoevolve for harness: mutually recursive user and item embeddings and a Rayleigh
point-process intensity of every user-item pair, trained by likelihood with t-Batch."""

from __future__ import annotations

from harness_deepcoevolve._model import DeepCoevolve, max_norm, pair_scores

__all__ = ["DeepCoevolve", "max_norm", "pair_scores"]
