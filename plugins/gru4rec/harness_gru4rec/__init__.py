"""GRU4Rec (Hidasi et al.) as a harness model plugin: ``harness run --models gru4rec``."""

from harness_gru4rec._batching import session_parallel_batches, session_sequences, session_starts
from harness_gru4rec._losses import LOSSES, bpr_max_loss, cross_entropy_loss, top1_max_loss
from harness_gru4rec._model import GRU4Rec
from harness_gru4rec._sampling import PopularitySampler

__all__ = [
    "LOSSES",
    "GRU4Rec",
    "PopularitySampler",
    "bpr_max_loss",
    "cross_entropy_loss",
    "session_parallel_batches",
    "session_sequences",
    "session_starts",
    "top1_max_loss",
]
