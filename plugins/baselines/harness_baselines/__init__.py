"""Counting baselines for ``harness``: exact under the streaming protocol and fast.

* ``popularity``: number of events of the item so far, all users together.
* ``recency``: how recently the user last interacted with the item.
* ``frequency``: number of the user's own events with the item so far.
"""

from __future__ import annotations

from harness_baselines._models import Frequency, Popularity, Recency

__all__ = ["Frequency", "Popularity", "Recency"]
