"""HRNN (Quadrana et al., RecSys 2017) as a harness model plugin: ``harness run --models hrnn``.

The shared machinery (sessions, user-parallel batches, :class:`HierarchicalModel`) is public so
that other hierarchical session models (THRNN) build on it.
"""

from harness_hrnn._model import HRNN, MIN_SCORE_ROWS, HierarchicalModel, score_rows
from harness_hrnn._sessions import (
    OnlineSessions,
    SessionTable,
    distinct_runs,
    session_table,
    user_parallel_batches,
)

__all__ = [
    "HRNN",
    "HierarchicalModel",
    "MIN_SCORE_ROWS",
    "OnlineSessions",
    "SessionTable",
    "distinct_runs",
    "score_rows",
    "session_table",
    "user_parallel_batches",
]
