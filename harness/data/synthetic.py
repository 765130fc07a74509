"""A synthetic interaction stream: the embedded default dataset, deterministic by seed.

How a stream is made (all vectorized except one short loop per user):

* Items have Zipf-skewed popularity and belong to topics.
* Users have heavy-tailed activity. Each user's events come in sessions (bursts of events minutes
  apart); session starts follow a self-exciting (Hawkes, exponential kernel) process, so
  sessions cluster in time, with at least ``min_session_gap`` hours between sessions.
* Each session has a topic drawn from the user's preferences, which drift from session to session
  (a random walk of topic logits).
* Every event repeats the user's previous item with probability ``repeat_prob``, revisits an item
  of the user's recent history with probability ``history_prob`` (recency-biased), and otherwise
  explores: a popular item of the session's topic (or, rarely, of any topic).
* State-change labels are rare and depend on behaviour: their odds grow with the share of "risky"
  items (one topic) among the user's last ten events.
* Optional features: the item's topic signature plus noise, with a component that tracks risk.

History therefore predicts the next item far better than popularity does, and the session
structure makes return-time models meaningful.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, ClassVar

import numpy as np

from harness.api import Dataset
from harness.data.jodie import renumber
from harness.errors import UsageError, did_you_mean
from harness.interactions import Interactions

__all__ = [
    "PRESETS",
    "SyntheticConfig",
    "SyntheticDataset",
    "SyntheticLastFM",
    "SyntheticMOOC",
    "SyntheticReddit",
    "SyntheticWikipedia",
    "generate",
]

GENERATOR_VERSION = 1
_DAY = 86400.0


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of the generator (see the module docstring for what each one drives)."""

    n_users: int = 300
    n_items: int = 200
    n_events: int = 20_000
    n_features: int = 0
    n_topics: int = 10
    label_rate: float = 0.015
    repeat_prob: float = 0.3
    history_prob: float = 0.3
    history_mean_back: float = 8.0
    global_explore_prob: float = 0.1
    popularity_exponent: float = 1.0
    activity_sigma: float = 1.0
    mean_session_length: float = 5.0
    within_session_gap_s: float = 240.0
    min_session_gap_h: float = 2.0
    horizon_days: float = 30.0
    branching_ratio: float = 0.6
    drift: float = 0.3
    risk_strength: float = 6.0

    def validate(self) -> None:
        """Raise UsageError for values the generator cannot honour."""
        checks = [
            (self.n_users >= 1, "n_users >= 1"),
            (self.n_items >= 1, "n_items >= 1"),
            (self.n_events >= self.n_users, "n_events >= n_users (every user has an event)"),
            (self.n_features >= 0, "n_features >= 0"),
            (self.n_topics >= 1, "n_topics >= 1 (capped at n_items)"),
            (0 <= self.label_rate < 1, "0 <= label_rate < 1"),
            (0 <= self.repeat_prob and 0 <= self.history_prob
             and self.repeat_prob + self.history_prob <= 1,
             "repeat_prob, history_prob >= 0 and repeat_prob + history_prob <= 1"),
            (0 <= self.branching_ratio < 1, "0 <= branching_ratio < 1"),
            (self.mean_session_length >= 1, "mean_session_length >= 1"),
            (self.horizon_days > 0, "horizon_days > 0"),
        ]
        for ok, rule in checks:
            if not ok:
                raise UsageError(f"synthetic dataset: `{rule}` must hold, but got {self}")


PRESETS: dict[str, SyntheticConfig] = {
    "default": SyntheticConfig(),
    # Sized like the JODIE datasets (Table 5 of the JODIE paper), repeat shares as its text gives.
    "wikipedia": SyntheticConfig(n_users=8227, n_items=1000, n_events=157_474, n_features=172,
                                 n_topics=20, label_rate=217 / 157_474, repeat_prob=0.74,
                                 history_prob=0.15, mean_session_length=4.0),
    "reddit": SyntheticConfig(n_users=10_000, n_items=1000, n_events=672_447, n_features=172,
                              n_topics=20, label_rate=366 / 672_447, repeat_prob=0.48,
                              history_prob=0.3, mean_session_length=4.0),
    "mooc": SyntheticConfig(n_users=7047, n_items=98, n_events=411_749, n_features=4,
                            n_topics=7, label_rate=4066 / 411_749, repeat_prob=0.2,
                            history_prob=0.3, mean_session_length=8.0),
    "lastfm": SyntheticConfig(n_users=1000, n_items=1000, n_events=1_293_103, n_features=0,
                              n_topics=20, label_rate=0.0, repeat_prob=0.0, history_prob=0.5,
                              mean_session_length=12.0, history_mean_back=30.0),
}


def _hawkes_times(rng: np.random.Generator, n: int, branching: float, decay: float) -> np.ndarray:
    """``n`` event times of a Hawkes process with baseline 1 and kernel ``a*b*exp(-b t)``.

    Exact simulation for the exponential kernel (Dassios and Zhao, 2013).
    """
    times = np.empty(n)
    u = rng.random((n, 2))
    t = 0.0
    excess = 0.0
    jump = branching * decay
    for k in range(n):
        s2 = -math.log(1.0 - u[k, 0])
        if excess > 0:
            d = 1.0 + decay * math.log(1.0 - u[k, 1]) / excess
            s1 = -math.log(d) / decay if d > 0 else math.inf
        else:
            s1 = math.inf
        gap = min(s1, s2)
        t += gap
        times[k] = t
        excess = excess * math.exp(-decay * gap) + jump
    return times


def generate(config: SyntheticConfig, seed: int = 0, name: str = "synthetic") -> Interactions:
    """Generate the stream described by ``config``; the same seed gives the same stream."""
    config.validate()
    c = config
    rng = np.random.default_rng([GENERATOR_VERSION, seed])
    n_items, n_users, n_topics = c.n_items, c.n_users, min(c.n_topics, c.n_items)

    # Items: Zipf popularity under a random permutation; topics cover every topic.
    popularity = 1.0 / np.arange(1, n_items + 1) ** c.popularity_exponent
    popularity = popularity[rng.permutation(n_items)]
    topic_of = rng.integers(0, n_topics, n_items)
    topic_of[rng.permutation(n_items)[:n_topics]] = np.arange(n_topics)
    topic_items = [np.flatnonzero(topic_of == k) for k in range(n_topics)]
    topic_cdf = [np.cumsum(popularity[ix]) / popularity[ix].sum() for ix in topic_items]
    global_cdf = np.cumsum(popularity) / popularity.sum()

    # Events per user: heavy-tailed activity, at least min(5, n_events // n_users) each.
    floor_events = min(5, c.n_events // n_users)
    activity = rng.lognormal(0.0, c.activity_sigma, n_users)
    per_user = floor_events + rng.multinomial(c.n_events - floor_events * n_users,
                                              activity / activity.sum())

    horizon = c.horizon_days * _DAY
    min_gap = c.min_session_gap_h * 3600.0
    max_sessions = max(1, int(horizon / (min_gap + 3600.0)))
    users, times, sess_of, sess_topic_list = [], [], [], []
    session_base = 0
    for u in range(n_users):
        n_u = int(per_user[u])
        n_s = int(np.clip(round(n_u / c.mean_session_length * rng.uniform(0.7, 1.3)), 1,
                          min(n_u, max_sessions)))
        lengths = 1 + rng.multinomial(n_u - n_s, rng.dirichlet(np.full(n_s, 2.0)))
        # Session starts: a Hawkes process rescaled to the user's active span.
        natural = _hawkes_times(rng, n_s, c.branching_ratio, rng.uniform(3.0, 15.0))
        span = horizon * rng.uniform(0.4, 1.0)
        starts = (natural - natural[0]) * (span / max(natural[-1] - natural[0], 1e-9))
        starts += rng.uniform(0.0, horizon - span)
        gaps = np.clip(rng.exponential(c.within_session_gap_s, n_u), 1.0, 1200.0).round()
        offsets = np.repeat(np.cumsum(lengths) - lengths, lengths)
        within = np.cumsum(gaps) - gaps
        within -= np.repeat(within[np.cumsum(lengths) - lengths], lengths)
        durations = within[np.cumsum(lengths) - 1]
        begin = np.empty(n_s)
        previous_end = -math.inf
        for k in range(n_s):
            begin[k] = max(round(starts[k]), previous_end + min_gap)
            previous_end = begin[k] + durations[k]
        del offsets
        times.append(np.repeat(begin, lengths) + within)
        users.append(np.full(n_u, u))
        sess_of.append(np.repeat(np.arange(session_base, session_base + n_s), lengths))
        session_base += n_s
        # Drifting topic preferences, one topic per session.
        logits = rng.normal(0.0, 1.5, n_topics) + np.cumsum(
            rng.normal(0.0, c.drift, (n_s, n_topics)), axis=0)
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        draws = rng.random(n_s)
        sess_topic_list.append((probs.cumsum(axis=1) < draws[:, None]).sum(axis=1))
    user = np.concatenate(users)
    t = np.concatenate(times)
    session = np.concatenate(sess_of)
    session_topic = np.minimum(np.concatenate(sess_topic_list), n_topics - 1)
    n = len(user)

    # Items, event by event in each user's own order (arrays are grouped by user here).
    user_start = np.repeat(np.cumsum(per_user) - per_user, per_user)
    position = np.arange(n) - user_start
    topic = session_topic[session]
    explore = np.empty(n, np.int64)
    from_topic = rng.random(n) >= c.global_explore_prob
    draws = rng.random(n)
    for k in range(n_topics):
        mask = from_topic & (topic == k)
        explore[mask] = topic_items[k][np.searchsorted(topic_cdf[k], draws[mask], "right")
                                       .clip(max=len(topic_items[k]) - 1)]
    mask = ~from_topic
    explore[mask] = np.searchsorted(global_cdf, draws[mask], "right").clip(max=n_items - 1)
    mode = rng.random(n)
    source = np.arange(n)
    repeat = (mode < c.repeat_prob) & (position > 0)
    source[repeat] = np.flatnonzero(repeat) - 1
    revisit = (mode >= c.repeat_prob) & (mode < c.repeat_prob + c.history_prob) & (position > 0)
    back = 1 + rng.geometric(1.0 / c.history_mean_back, n)
    idx = np.flatnonzero(revisit)
    source[idx] = np.maximum(idx - back[idx], user_start[idx])
    while True:
        jumped = source[source]
        if np.array_equal(jumped, source):
            break
        source = jumped
    item = explore[source]

    # State changes: odds grow with the share of risky items among the last ten events.
    risky = (topic_of[item] == 0).astype(np.int64)
    csum = np.concatenate([[0], np.cumsum(risky)])
    window_start = np.maximum(np.arange(n) - 9, user_start)
    risk = (csum[np.arange(n) + 1] - csum[window_start]) / (np.arange(n) - window_start + 1)
    label = np.zeros(n, np.int8)
    n_labels = int(round(c.label_rate * n))
    if n_labels:
        keys = c.risk_strength * risk + rng.gumbel(size=n)
        label[np.argpartition(-keys, n_labels - 1)[:n_labels]] = 1

    if c.n_features:
        signature = rng.normal(0.0, 1.0, (n_topics, c.n_features))
        item_shift = rng.normal(0.0, 0.5, (n_items, c.n_features))
        features = signature[topic_of[item]] + item_shift[item]
        features += rng.normal(0.0, 0.5, features.shape)
        features[:, 0] += 2.0 * risk
        features = np.round(features, 4).astype(np.float32)
    else:
        features = np.zeros((n, 0), np.float32)

    order = np.argsort(t, kind="stable")
    t = t[order] - t[order][0]
    user_ids = renumber(user[order], n_users)
    item_ids = renumber(item[order], n_items)
    return Interactions.from_arrays(user_ids, item_ids, t, label[order], features[order],
                                    n_users=n_users, n_items=n_items, name=name)


class SyntheticDataset(Dataset):
    """The synthetic stream as a dataset: ``SyntheticDataset(preset="default", seed=0, **overrides)``.

    ``overrides`` are fields of :class:`SyntheticConfig` (``n_users=50``, ``n_features=8``, ...).
    """

    description: ClassVar[str] = ("synthetic stream: drifting preferences, sessions with "
                                  "self-exciting returns, rare behaviour-driven state changes")
    default_preset: ClassVar[str] = "default"

    def __init__(self, preset: str | None = None, seed: int = 0, **overrides: Any) -> None:
        preset = preset or self.default_preset
        if preset not in PRESETS:
            raise UsageError(did_you_mean(preset, list(PRESETS), "synthetic preset"))
        known = {f.name for f in fields(SyntheticConfig)}
        for key in overrides:
            if key not in known:
                raise UsageError(did_you_mean(key, sorted(known), "synthetic parameter"))
        self.preset = preset
        self.seed = seed
        self.config = replace(PRESETS[preset], **overrides)
        self.config.validate()
        self.name = "synthetic" if preset == "default" else f"synthetic-{preset}"
        self._stream: Interactions | None = None

    def load(self) -> Interactions:
        """Generate the stream (once per instance)."""
        if self._stream is None:
            self._stream = generate(self.config, self.seed, name=self.name)
        return self._stream

    def sha256(self) -> str:
        """Digest of the generator version, its parameters and the seed."""
        payload = {"generator": GENERATOR_VERSION, "seed": self.seed, **asdict(self.config)}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(preset={self.preset!r}, seed={self.seed})"

    @staticmethod
    def presets() -> dict[str, str]:
        """The registered presets, by dataset name, with their sizes."""
        out = {}
        for preset, config in PRESETS.items():
            name = "synthetic" if preset == "default" else f"synthetic-{preset}"
            out[name] = (f"{config.n_users:,} users, {config.n_items:,} items, "
                         f"{config.n_events:,} events, {config.n_features} features")
        return out


class SyntheticWikipedia(SyntheticDataset):
    """Synthetic stream sized like JODIE's Wikipedia (8,227 users, 1,000 items, 157,474 events)."""

    description = "synthetic stream sized like JODIE Wikipedia"
    default_preset = "wikipedia"


class SyntheticReddit(SyntheticDataset):
    """Synthetic stream sized like JODIE's Reddit (10,000 users, 1,000 items, 672,447 events)."""

    description = "synthetic stream sized like JODIE Reddit"
    default_preset = "reddit"


class SyntheticMOOC(SyntheticDataset):
    """Synthetic stream sized like JODIE's MOOC (7,047 users, 98 items, 411,749 events)."""

    description = "synthetic stream sized like JODIE MOOC"
    default_preset = "mooc"


class SyntheticLastFM(SyntheticDataset):
    """Synthetic stream sized like JODIE's LastFM (1,000 users, 1,000 items, 1,293,103 events)."""

    description = "synthetic stream sized like JODIE LastFM"
    default_preset = "lastfm"
