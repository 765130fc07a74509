"""The event stream: columnar numpy arrays ordered by time."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

__all__ = ["Interactions"]


@dataclass(frozen=True, eq=False)
class Interactions:
    """A stream of user-item events ordered by time (ties keep file order).

    ``user`` and ``item`` are dense ids in ``[0, n_users)`` and ``[0, n_items)``; ``t`` is in
    seconds; ``label`` is the state-change label (0/1); ``features`` has shape ``(n, F)`` with
    ``F >= 0``. ``session`` and ``visit`` are set only on sessionized streams: ``session`` numbers
    the sessions used for next-item prediction (long sessions split in parts), ``visit`` the
    sessions before that split, which return-time prediction uses. Slicing returns views that keep
    ``n_users`` and ``n_items`` of the whole stream.
    """

    user: np.ndarray
    item: np.ndarray
    t: np.ndarray
    label: np.ndarray
    features: np.ndarray
    n_users: int
    n_items: int
    session: np.ndarray | None = None
    visit: np.ndarray | None = None
    name: str = field(default="stream", compare=False)

    @classmethod
    def from_arrays(
        cls,
        user,
        item,
        t,
        label=None,
        features=None,
        *,
        n_users: int | None = None,
        n_items: int | None = None,
        session=None,
        visit=None,
        name: str = "stream",
    ) -> Interactions:
        """Build a stream from array-likes, casting to the canonical dtypes.

        Events must already be in time order; ``n_users``/``n_items`` default to ``max id + 1``.
        """
        user = np.ascontiguousarray(user, dtype=np.int32)
        item = np.ascontiguousarray(item, dtype=np.int32)
        t = np.ascontiguousarray(t, dtype=np.float64)
        n = len(user)
        label = np.zeros(n, np.int8) if label is None else np.ascontiguousarray(label, np.int8)
        if features is None:
            features = np.zeros((n, 0), np.float32)
        features = np.ascontiguousarray(features, dtype=np.float32)
        features = features.reshape(n, features.shape[1] if features.ndim == 2 else -1 if n else 0)
        if not (len(item) == len(t) == len(label) == len(features) == n):
            raise ValueError(
                f"all columns must have one entry per event, but got lengths user={n}, "
                f"item={len(item)}, t={len(t)}, label={len(label)}, features={len(features)}"
            )
        if n and np.any(np.diff(t) < 0):
            raise ValueError("events must be in time order; sort them with a stable sort first")
        stream = cls(
            user=user,
            item=item,
            t=t,
            label=label,
            features=features,
            n_users=int(n_users if n_users is not None else (user.max() + 1 if n else 0)),
            n_items=int(n_items if n_items is not None else (item.max() + 1 if n else 0)),
            session=None if session is None else np.ascontiguousarray(session, np.int64),
            visit=None if visit is None else np.ascontiguousarray(visit, np.int64),
            name=name,
        )
        if n and (user.min() < 0 or user.max() >= stream.n_users):
            raise ValueError(f"user ids must lie in [0, {stream.n_users}), got {user.min()}..{user.max()}")
        if n and (item.min() < 0 or item.max() >= stream.n_items):
            raise ValueError(f"item ids must lie in [0, {stream.n_items}), got {item.min()}..{item.max()}")
        return stream

    def __len__(self) -> int:
        return len(self.user)

    @property
    def n_features(self) -> int:
        return self.features.shape[1]

    def __getitem__(self, index) -> Interactions:
        """Events selected by a slice, an index array or a boolean mask (order kept)."""
        if isinstance(index, (int, np.integer)):
            index = slice(int(index), int(index) + 1 if index != -1 else None)
        return replace(
            self,
            user=self.user[index],
            item=self.item[index],
            t=self.t[index],
            label=self.label[index],
            features=self.features[index],
            session=None if self.session is None else self.session[index],
            visit=None if self.visit is None else self.visit[index],
        )

    def counts(self) -> dict[str, int]:
        """Users, items, events, state changes and features, as in the JODIE paper's Table 5."""
        return {
            "users": self.n_users,
            "items": self.n_items,
            "events": len(self),
            "state_changes": int(self.label.sum()),
            "features": self.n_features,
        }
