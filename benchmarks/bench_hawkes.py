"""Fit time of the Hawkes return-time baseline, serial against parallel (issue 6).

Simulates ``--users`` users whose visit starts follow exponential Hawkes processes (tick's
simulator; per-user baseline, adjacency and decay drawn at random), each visit a few events a
minute apart. Fits ``hawkes`` on every user's first 80% of visits with ``n_jobs`` 1 and 2 (and
more with ``--jobs``), for both variants, and reports the median of ``--repeats`` fits with the
raw samples (the parent has imported tick before timing; spawned workers import it inside the
timed fit). Then streams the last 20% and reports the return-time MAE (hours) of the fitted
model against the user's-mean-gap rule it falls back to.

``--sliding`` times the sliding refit instead (THRNN's baseline: a fit per prediction on the
user's last 15 visits): the whole stream of predictions, and one window fit by the exact
least-squares solve against tick's learner on the same windows.

    python benchmarks/bench_hawkes.py [--users 1000] [--repeats 3] [--jobs 1,2] [--variants ...]
    python benchmarks/bench_hawkes.py --sliding [--users 1000]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
from harness_hawkes import Hawkes

from harness.interactions import Interactions

HOUR = 3600.0


def simulate(n_users: int, seed: int, end_hours: float) -> Interactions:
    from tick.hawkes import SimuHawkesExpKernels

    rng = np.random.default_rng(seed)
    times, users, visits = [], [], []
    visit_id = 0
    for user in range(n_users):
        mu = rng.uniform(0.01, 0.08)  # per hour
        alpha = rng.uniform(0.0, 0.8)
        beta = rng.choice([0.2, 1.0, 5.0])  # per hour
        sim = SimuHawkesExpKernels(adjacency=np.array([[alpha]]), decays=np.array([[beta]]),
                                   baseline=np.array([mu]), end_time=end_hours,
                                   seed=int(rng.integers(2**31 - 1)), verbose=False)
        sim.simulate()
        last = -np.inf
        for start in sim.timestamps[0] * HOUR:
            if start - last < 900.0:  # a visit lasts up to 5 minutes; keep visits apart
                continue
            last = start
            for j in range(int(rng.integers(1, 6))):
                times.append(start + 60.0 * j)
                users.append(user)
                visits.append(visit_id)
            visit_id += 1
    order = np.argsort(times, kind="stable")
    visits_arr = np.asarray(visits)[order]
    return Interactions.from_arrays(np.asarray(users)[order], np.zeros(len(order), int),
                                    np.asarray(times)[order], n_users=n_users, n_items=1,
                                    session=visits_arr, visit=visits_arr, name="simulated")


def split(stream: Interactions) -> tuple[Interactions, Interactions, np.ndarray]:
    """Per user, the last 20% of visits are evaluation; returns train, evaluation events and the
    gap (seconds) from each evaluation event that ends a visit to the next visit, else NaN."""
    n = len(stream)
    order = np.lexsort((np.arange(n), stream.user))
    user, visit, t = stream.user[order], stream.visit[order], stream.t[order]
    new = np.r_[True, (user[1:] != user[:-1]) | (visit[1:] != visit[:-1])]
    number = np.cumsum(new) - 1  # visit number, global
    first_of_user = np.r_[True, user[1:] != user[:-1]]
    base = np.maximum.accumulate(np.where(first_of_user, number, 0))
    rank = number - base  # visit index within the user
    total = np.zeros(stream.n_users, int)
    np.maximum.at(total, user, rank + 1)
    is_eval = rank >= np.ceil(0.8 * total[user])
    ends = np.r_[new[1:], True]
    next_same_user = np.r_[user[1:] == user[:-1], False]
    gap = np.full(n, np.nan)
    has_next = ends & next_same_user
    gap[np.flatnonzero(has_next)] = t[np.flatnonzero(has_next) + 1] - t[has_next]
    evaluated = np.zeros(n, bool)
    evaluated[order] = is_eval
    gap_by_event = np.empty(n)
    gap_by_event[order] = gap
    return stream[~evaluated], stream[evaluated], gap_by_event[evaluated]


def mae_hours(model: Hawkes, events: Interactions, gaps: np.ndarray) -> tuple[float, float]:
    """Stream the evaluation events; MAE of the model and of its fallback rule, in hours."""
    true, pred, rule = [], [], []
    for k in range(len(events)):
        block = events[k : k + 1]
        model.observe(block)
        if not np.isnan(gaps[k]):
            u = int(block.user[0])
            true.append(gaps[k])
            pred.append(model.predict_return_time(block.user, block.t)[0])
            rule.append(model.fallback_gap_.get(u, model.global_gap_))
    true, pred, rule = (np.asarray(a) / HOUR for a in (true, pred, rule))
    return float(np.abs(true - pred).mean()), float(np.abs(true - rule).mean())


def sliding(train: Interactions, events: Interactions, gaps: np.ndarray) -> None:
    """Time the sliding refit over every prediction, and its window fit against tick's."""
    from harness_hawkes import least_squares_fit
    from tick.hawkes import HawkesExpKern

    model = Hawkes(n_jobs=1)
    tic = time.perf_counter()
    model.fit(train)
    fit = time.perf_counter() - tic
    tic = time.perf_counter()
    mae, rule = mae_hours(model, events, gaps)
    stream = time.perf_counter() - tic
    report = model.fit_report
    print(f"sliding: fit {fit:.2f} s; streaming with predictions {stream:.2f} s, of which window "
          f"fits {report['sliding_fit_seconds']:.2f} s; {report['fitted']} window fits, "
          f"{report['clipped_fits']} clipped, {report['fallback_failed_fit']} failed, "
          f"{report['fallback_few_sessions']} too short; MAE {mae:.2f} h (user's mean gap "
          f"{rule:.2f} h)")
    windows = []
    for starts in list(model.starts_.values())[:200]:
        for stop in range(15, len(starts) + 1, 5):
            w = np.asarray(starts[stop - 15:stop])
            windows.append((w - w[0]) / 86400.0)
    for name, fit_one in (("exact least squares", lambda w: least_squares_fit(w, 0.5)),
                          ("tick HawkesExpKern", lambda w: HawkesExpKern(
                              decays=0.5, gofit="least-squares").fit([w]))):
        tic = time.perf_counter()
        for w in windows:
            fit_one(w)
        per = (time.perf_counter() - tic) / len(windows)
        print(f"  one 15-visit window fit, {name}: {per * 1e6:.0f} us ({len(windows)} windows)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--hours", type=float, default=2000.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--jobs", default="1,2")
    parser.add_argument("--sliding", action="store_true", help="time the sliding refit")
    parser.add_argument("--variants", default="last15-grid,last15-fixed,all-grid,all-fixed",
                        help="which of last15-grid, last15-fixed, all-grid, all-fixed to time")
    args = parser.parse_args()
    import tick.hawkes  # noqa: F401  (warm-up: the parent's import of tick is not timed)

    stream = simulate(args.users, seed=0, end_hours=args.hours)
    train, events, gaps = split(stream)
    visits = len(np.unique(stream.visit))
    print(f"simulated: {args.users} users, {visits} visits, {len(stream)} events; "
          f"train {len(train)} events, evaluation {len(events)} events, "
          f"{int((~np.isnan(gaps)).sum())} return-time queries")
    print(f"machine: {os.cpu_count()} cores, python {platform.python_version()}\n")
    if args.sliding:
        sliding(train, events, gaps)
        return
    print(f"| variant | decay | n_jobs | workers | fit s (median of {args.repeats}) | raw s | "
          "fitted | fallback (few / failed) |")
    print("|---|---|---|---|---|---|---|---|")
    fitted_models = {}
    variants = [(v.split("-")[0], None if v.endswith("grid") else 1.0)
                for v in args.variants.split(",")]
    for history, decay in variants:
        for jobs in (int(j) for j in args.jobs.split(",")):
            samples, model = [], None
            for _ in range(args.repeats):
                model = Hawkes(history=history, decay=decay, n_jobs=jobs, refit="frozen")
                tic = time.perf_counter()
                model.fit(train)
                samples.append(time.perf_counter() - tic)
            report = model.fit_report
            fitted_models[(history, decay)] = model
            print(f"| {history} | {'grid' if decay is None else decay} | {jobs} | "
                  f"{report['workers']} | {statistics.median(samples):.2f} | "
                  f"{', '.join(f'{s:.2f}' for s in samples)} | {report['fitted']} | "
                  f"{report['fallback_few_sessions']} / {report['fallback_failed_fit']} |")
    print("\nreturn-time MAE on the last 20% of visits (hours):")
    for (history, decay), model in fitted_models.items():
        tic = time.perf_counter()
        mae, rule = mae_hours(model, events, gaps)
        print(f"  {history}, decay {'grid' if decay is None else decay}: hawkes {mae:.2f}, "
              f"user's mean gap {rule:.2f} ({time.perf_counter() - tic:.1f} s to stream)")


if __name__ == "__main__":
    tic = time.perf_counter()
    main()
    print(f"\n(total {time.perf_counter() - tic:.1f} s)")
