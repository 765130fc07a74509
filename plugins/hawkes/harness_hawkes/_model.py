"""The ``hawkes`` model: per-user Hawkes processes on visit start times (THRNN's baseline)."""

from __future__ import annotations

import bisect
import math
import multiprocessing
import os
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from itertools import repeat
from typing import Any, ClassVar

import numpy as np

from harness.api import Model
from harness.errors import UsageError, did_you_mean
from harness.interactions import Interactions
from harness_hawkes._process import expected_gap, fit_users, least_squares_fit

__all__ = ["Hawkes"]

#: Decays tried per user when ``decay`` is None, in units of 1 / time unit.
DECAY_GRID = (0.1, 0.3, 1.0, 3.0, 10.0)
#: Window of the ``last15`` variant (THRNN fits on the user's last 15 sessions).
LAST_SESSIONS = 15
#: Fewer fits (users x decays tried) than this run in this process: a spawned worker spends about
#: 3 s importing tick, while one fit takes about 2 ms.
MIN_FITS_FOR_WORKERS = 2000
HISTORIES = ("last15", "all")
REFITS = ("sliding", "frozen")
#: The sliding refit works in days with THRNN's decay ``w = 0.5`` per day by default, and
#: compresses gaps between visit starts longer than 500 h to 500 h, as the authors' code does.
SLIDING_TIME_UNIT = 86400.0
SLIDING_DECAY = 0.5
COMPRESS_GAP = 500 * 3600.0


class Hawkes(Model):
    """Return time from one univariate exponential Hawkes process per user.

    The events of each user's process are the start times of the user's visits (sessions before
    the length split; a visit starts at its first event). Processes are fitted with tick's
    least-squares ``HawkesExpKern``. At the end of a visit, the prediction is the expected time
    to the user's next visit start given the visit starts seen so far (training ones and those
    passed to :meth:`observe`), truncated at ``cutoff`` (the mass beyond the cut-off counts as
    the cut-off). Two ways to fit:

    - ``refit="sliding"`` (default; the THRNN authors' baseline): every prediction refits the
      user's process on the window of their 15 latest visit starts (test visits included once
      they have happened), with a fixed decay (``decay`` per day, default their 0.5) and gaps
      between starts longer than 500 h compressed to 500 h, as their code does. Their code fits
      by EM and predicts by simulation; here the fit is tick's least-squares contrast solved
      exactly in closed form (:func:`~harness_hawkes.least_squares_fit`, microseconds a fit)
      and the expectation is integrated.
    - ``refit="frozen"``: ``fit`` fits each user once, on either the last 15 training visit
      starts (``history="last15"``) or all of them (``history="all"``), and those parameters
      serve every prediction.

    A fit whose adjacency comes out negative is clipped to 0 (a Poisson process); the report
    counts these clipped fits.

    Users with fewer than ``min_sessions`` visits (training visits when frozen, visits in the
    window when sliding), and fits that failed or were degenerate (zero baseline), predict the
    user's mean training return gap (end of a visit to the start of the next), or the mean over
    all users when they have fewer than 2 training visits; users never seen in training get that
    global mean too.

    After ``fit``, ``fit_report`` (a JSON-ready dict the evaluator copies into the run record as
    ``model_report``) holds the counts: ``users``, ``fitted``, ``fallback_few_sessions``,
    ``fallback_failed_fit``, ``clipped_fits``, the rule, the time unit, cut-off and global mean
    gap in seconds, the decays chosen, ``workers``, ``fit_seconds``, and ``predictions``
    (``fitted``, ``fallback``, ``unseen_user``), which counts the queries answered so far. When
    sliding, the fit counts (``fitted``, ``fallback_few_sessions``, ``fallback_failed_fit``,
    ``clipped_fits``) are per prediction and grow as they are made, with ``sliding_fit_seconds``.

    Parameters
    ----------
    history:
        ``"last15"`` or ``"all"``: which training visits the frozen fit sees (sliding windows
        always hold the last 15 visits).
    min_sessions:
        Users (frozen) or windows (sliding) with fewer visits than this are not fitted (>= 2).
    decay:
        Kernel decay ``beta``. Sliding: per day, None for THRNN's 0.5. Frozen: in units of
        1 / time unit, where the time unit is the median gap between consecutive training visit
        starts (so one value suits every dataset); None picks it per user from
        (0.1, 0.3, 1, 3, 10) by the log-likelihood of the fitted process.
    refit:
        ``"sliding"`` (a fit per prediction on the last 15 visits) or ``"frozen"`` (one fit per
        user in ``fit``).
    cutoff:
        Integration cut-off in seconds; None takes the 0.99 quantile of all training return gaps.
    n_jobs:
        Worker processes for the per-user fits (1 fits in this process, -1 uses every core).
        Small jobs (under 2,000 fits, users times decays tried) stay in this process, since a
        worker needs seconds to import tick. Workers are spawned, so scripts that fit must guard
        their entry point with ``if __name__ == "__main__":``.
    """

    capabilities: ClassVar[frozenset[str]] = frozenset({"return_time"})
    supports_blocks: ClassVar[bool] = True
    iterative: ClassVar[bool] = False

    def __init__(
        self,
        history: str = "last15",
        min_sessions: int = 5,
        decay: float | None = None,
        cutoff: float | None = None,
        n_jobs: int = 2,
        refit: str = "sliding",
    ) -> None:
        self.history = history
        self.min_sessions = min_sessions
        self.decay = decay
        self.cutoff = cutoff
        self.n_jobs = n_jobs
        self.refit = refit

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        return {
            "refit": trial.suggest_categorical("refit", list(REFITS)),
            "history": trial.suggest_categorical("history", list(HISTORIES)),
            "decay": trial.suggest_float("decay", 0.05, 20.0, log=True),
        }

    def _check_params(self) -> None:
        if self.history not in HISTORIES:
            raise UsageError(did_you_mean(str(self.history), HISTORIES, "hawkes history"))
        if self.refit not in REFITS:
            raise UsageError(did_you_mean(str(self.refit), REFITS, "hawkes refit"))
        if isinstance(self.min_sessions, bool) or not isinstance(self.min_sessions, int) \
                or self.min_sessions < 2:
            raise UsageError(
                f"hawkes min_sessions must be an integer >= 2 (a fit needs two visits), "
                f"but got {self.min_sessions!r}"
            )
        for name in ("decay", "cutoff"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float))
                                          and math.isfinite(value) and value > 0):
                raise UsageError(f"hawkes {name} must be a positive number or None, "
                                 f"but got {value!r}")
        if isinstance(self.n_jobs, bool) or not isinstance(self.n_jobs, int) \
                or self.n_jobs == 0 or self.n_jobs < -1:
            raise UsageError(
                f"hawkes n_jobs must be a positive integer or -1 (every core), "
                f"but got {self.n_jobs!r}"
            )

    # -- training -----------------------------------------------------------------------------

    def fit(self, train: Interactions, *, seed: int = 0) -> None:
        """Collect every user's training visits and fit the per-user processes.

        The fits are deterministic, so ``seed`` has no effect.
        """
        self._check_params()
        _require_visits(train, "fit")
        tic = time.perf_counter()
        starts, ends, last_visit = _visits_by_user(train)
        self.starts_: dict[int, list[float]] = starts
        self.train_users_ = frozenset(starts)
        self.last_visit_: dict[int, int] = last_visit

        start_gaps = np.concatenate(
            [np.diff(s) for s in starts.values() if len(s) > 1] or [np.empty(0)])
        return_gaps = {u: np.asarray(starts[u][1:]) - np.asarray(ends[u][:-1])
                       for u in starts if len(starts[u]) > 1}
        pooled = np.concatenate(list(return_gaps.values()) or [np.empty(0)])
        positive = start_gaps[start_gaps > 0]
        self.time_unit_ = float(np.median(positive)) if positive.size else 3600.0
        self.global_gap_ = float(pooled.mean()) if pooled.size else self.time_unit_
        if self.cutoff is not None:
            self.cutoff_ = float(self.cutoff)
        elif pooled.size and np.quantile(pooled, 0.99) > 0:
            self.cutoff_ = float(np.quantile(pooled, 0.99))
        else:
            self.cutoff_ = 10.0 * self.time_unit_
        self.fallback_gap_: dict[int, float] = {
            u: float(g.mean()) for u, g in return_gaps.items()}

        sliding = self.refit == "sliding"
        if sliding:
            self.time_unit_ = SLIDING_TIME_UNIT
        window = LAST_SESSIONS if self.history == "last15" else None
        tasks = []
        for user, s in starts.items():
            if len(s) >= self.min_sessions and not sliding:
                times = np.asarray(s[-window:] if window else s)
                tasks.append((user, (times - times[0]) / self.time_unit_))
        if sliding:
            decays: tuple[float, ...] = (SLIDING_DECAY if self.decay is None else float(self.decay),)
        else:
            decays = DECAY_GRID if self.decay is None else (float(self.decay),)
        workers = self._workers(len(tasks), len(decays))
        results = _fit_all(tasks, decays, workers)
        self.params_: dict[int, tuple[float, float, float]] = {
            user: (mu, max(alpha, 0.0), beta) for user, mu, alpha, beta in results
            if math.isfinite(mu)}
        self.decays_ = decays
        self.window_fits_: dict[tuple[int, int], tuple[float, float, float] | None] = {}
        failed = len(tasks) - len(self.params_)
        chosen = Counter(beta for _, _, beta in self.params_.values())
        self.fit_report: dict[str, Any] = {
            "refit": self.refit,
            "history": f"last{LAST_SESSIONS} (sliding)" if sliding else self.history,
            "users": len(starts),
            "fitted": len(self.params_),
            "fallback_few_sessions": 0 if sliding else len(starts) - len(tasks),
            "fallback_failed_fit": failed,
            "clipped_fits": sum(1 for _, mu, alpha, _ in results
                                if math.isfinite(mu) and alpha < 0),
            "sliding_fit_seconds": 0.0,
            "fallback_rule": "the user's mean training return gap; the mean over all users "
                             "when the user has fewer than 2 training visits or none",
            "min_sessions": self.min_sessions,
            "time_unit_seconds": self.time_unit_,
            "cutoff_seconds": self.cutoff_,
            "global_mean_gap_seconds": self.global_gap_,
            "decays_chosen": {f"{beta:g}": n for beta, n in sorted(chosen.items())},
            "workers": workers,
            "fit_seconds": time.perf_counter() - tic,
            "predictions": {"fitted": 0, "fallback": 0, "unseen_user": 0},
        }

    def _workers(self, n_tasks: int, n_decays: int) -> int:
        cores = os.cpu_count() or 1
        wanted = cores if self.n_jobs == -1 else self.n_jobs
        if n_tasks * n_decays < MIN_FITS_FOR_WORKERS:
            return 1
        return max(1, min(wanted, n_tasks))

    # -- streaming ----------------------------------------------------------------------------

    def observe(self, block: Interactions) -> None:
        """Record the start of every new visit in the block."""
        self._check_fitted("observe")
        visits = _require_visits(block, "observe")
        last_visit, starts = self.last_visit_, self.starts_
        for user, visit, t in zip(block.user.tolist(), visits.tolist(), block.t.tolist(),
                                  strict=True):
            if last_visit.get(user) != visit:
                last_visit[user] = visit
                starts.setdefault(user, []).append(t)

    def predict_return_time(self, user: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Expected seconds from ``t`` to each user's next visit start (see the class notes)."""
        self._check_fitted("predict_return_time")
        users = np.asarray(user, dtype=np.int64).ravel()
        times = np.asarray(t, dtype=np.float64).ravel()
        if users.shape != times.shape:
            raise UsageError(f"predict_return_time needs one t per user, but got "
                             f"{users.size} users and {times.size} times")
        if self.refit == "sliding":
            return self._predict_sliding(users, times)
        out = np.empty(users.size)
        rows, mus, alphas, betas, excitations = [], [], [], [], []
        counts = self.fit_report["predictions"]
        window = LAST_SESSIONS if self.history == "last15" else None
        for k, (u, tq) in enumerate(zip(users.tolist(), times.tolist(), strict=True)):
            params = self.params_.get(u)
            if params is None:
                out[k] = self.fallback_gap_.get(u, self.global_gap_)
                counts["fallback" if u in self.train_users_ else "unseen_user"] += 1
                continue
            mu, alpha, beta = params
            starts = self.starts_[u]
            stop = bisect.bisect_right(starts, tq)
            # Visits older than 40 kernel lifetimes add less than exp(-40): skip them.
            lo = bisect.bisect_left(starts, tq - 40.0 * self.time_unit_ / beta)
            if window:
                lo = max(lo, stop - window)
            past = np.asarray(starts[lo:stop])
            rows.append(k)
            mus.append(mu)
            alphas.append(alpha)
            betas.append(beta)
            excitations.append(float(np.exp(-beta * (tq - past) / self.time_unit_).sum()))
            counts["fitted"] += 1
        if rows:
            gaps = expected_gap(np.array(mus), np.array(alphas), np.array(betas),
                                np.array(excitations), self.cutoff_ / self.time_unit_)
            out[rows] = gaps * self.time_unit_
        return out

    def _predict_sliding(self, users: np.ndarray, times: np.ndarray) -> np.ndarray:
        """Refit each user's process on their last 15 visit starts up to the query time.

        A window is named by (user, number of the user's visits up to the query): visits are
        only ever appended in time order, so a repeated query reuses its fit.
        """
        report = self.fit_report
        counts = report["predictions"]
        out = np.empty(users.size)
        todo: list[tuple[int, tuple[int, int], np.ndarray, float]] = []  # row, window, times, query
        for k, (u, tq) in enumerate(zip(users.tolist(), times.tolist(), strict=True)):
            starts = self.starts_.get(u, [])
            stop = bisect.bisect_right(starts, tq)
            if stop < self.min_sessions:
                if (u, stop) not in self.window_fits_:
                    self.window_fits_[(u, stop)] = None
                    report["fallback_few_sessions"] += 1
                out[k] = self.fallback_gap_.get(u, self.global_gap_)
                counts["fallback" if u in self.train_users_ else "unseen_user"] += 1
                continue
            window = np.asarray(starts[max(0, stop - LAST_SESSIONS):stop])
            # Gaps over 500 h shrink to 500 h; times relative to the window, in days.
            steps = np.minimum(np.diff(window), COMPRESS_GAP) / self.time_unit_
            relative = np.r_[0.0, np.cumsum(steps)]
            todo.append((k, (u, stop), relative, relative[-1] + (tq - window[-1]) / self.time_unit_))
        tic = time.perf_counter()
        (beta,) = self.decays_
        for _, key, relative, _ in todo:
            if key not in self.window_fits_:
                mu, alpha, clipped = least_squares_fit(relative, beta)
                ok = math.isfinite(mu)
                self.window_fits_[key] = (mu, alpha, beta) if ok else None
                report["fitted" if ok else "fallback_failed_fit"] += 1
                report["clipped_fits"] += int(ok and clipped)
        report["sliding_fit_seconds"] += time.perf_counter() - tic
        rows, params, excitations = [], [], []
        for k, key, relative, tq in todo:
            fit = self.window_fits_[key]
            if fit is None:
                out[k] = self.fallback_gap_.get(key[0], self.global_gap_)
                counts["fallback"] += 1
                continue
            rows.append(k)
            params.append(fit)
            excitations.append(float(np.exp(-fit[2] * (tq - relative)).sum()))
            counts["fitted"] += 1
        if rows:
            mu, alpha, beta = (np.array(col) for col in zip(*params, strict=True))
            gaps = expected_gap(mu, alpha, beta, np.array(excitations),
                                self.cutoff_ / self.time_unit_)
            out[rows] = gaps * self.time_unit_
        return out

    def _check_fitted(self, what: str) -> None:
        if not hasattr(self, "params_"):
            raise UsageError(f"Hawkes is not fitted; call fit(train) before {what}()")


def _require_visits(stream: Interactions, what: str) -> np.ndarray:
    """The stream's visit ids, or a clear error when it is not sessionized."""
    if stream.visit is None:
        raise UsageError(
            f"hawkes {what}() needs a sessionized stream (visit ids), but {stream.name!r} has "
            "none; run it under the sessions protocol (--protocol sessions)"
        )
    return stream.visit


def _visits_by_user(stream: Interactions) -> tuple[dict[int, list[float]],
                                                    dict[int, list[float]], dict[int, int]]:
    """Per user: visit start times, visit end times (both in time order), last visit id."""
    n = len(stream)
    if n == 0:
        return {}, {}, {}
    order = np.lexsort((np.arange(n), stream.user))
    user, visit, t = stream.user[order], _require_visits(stream, "fit")[order], stream.t[order]
    first = np.r_[True, (user[1:] != user[:-1]) | (visit[1:] != visit[:-1])]
    begin = np.flatnonzero(first)
    end = np.r_[begin[1:] - 1, n - 1]
    starts: dict[int, list[float]] = {}
    ends: dict[int, list[float]] = {}
    last: dict[int, int] = {}
    for u, ts, te, v in zip(user[begin].tolist(), t[begin].tolist(), t[end].tolist(),
                            visit[begin].tolist(), strict=True):
        starts.setdefault(u, []).append(ts)
        ends.setdefault(u, []).append(te)
        last[u] = v
    return starts, ends, last


def _fit_all(tasks: list[tuple[int, np.ndarray]], decays: tuple[float, ...],
             workers: int) -> list[tuple[int, float, float, float]]:
    """Fit every task, in ``workers`` spawned processes when more than one."""
    if workers <= 1:
        return fit_users(tasks, decays)
    # Several chunks per worker balance uneven histories; spawn (not fork) keeps workers safe
    # when the parent already runs threads (torch, BLAS).
    n_chunks = min(len(tasks), 4 * workers)
    chunks = [tasks[i::n_chunks] for i in range(n_chunks)]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        parts = list(pool.map(fit_users, chunks, repeat(decays)))
    return [row for part in parts for row in part]
