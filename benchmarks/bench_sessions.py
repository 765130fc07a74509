"""Speed and memory of HRNN and THRNN (issue 13) on a LastFM-1K-sized session set.

LastFM-1K after THRNN's preprocessing has 977 users, 630,774 sessions, about 5.1 M events and
94,284 items. The synthetic set has exactly those users, sessions and items (``lastfm_sessions``
below: the project's generator, sessionized, keeps far fewer events, since it collapses repeats
and drops long sessions), cut by the sessions protocol (per user the last 20% of sessions
test, 10% before them valid). The benchmark

1. times generating, sessionizing and cutting the set, and ``fit`` of each model on the whole
   training part (session table, sampler, parameters: 94,284-row item tables);
2. times ``train_epoch`` on a proportional subset, every ``--every``-th user with all of their
   training sessions and the item tables of full size (so a batch has the full set's shape);
   ``--scale k --every 1`` generates 1/k of the users and sessions with every item instead
   (a proportional set without generating the whole one);
   a warm-up epoch, then ``--repeats`` timed ones; training events/s = session events / s;
3. times an evaluation pass as the evaluator makes it (blocks of distinct users and items;
   ``score`` ranking all 94,284 items, ``observe``, ``predict_return_time`` at visit ends) over
   the first ``--eval-events`` evaluation events of the subset, after the state is built;
4. reports peak RSS (the whole training part is fitted in this process first).

Times are wall clock and CPU time of this process (one torch thread): on a machine shared with
other jobs the CPU time is the figure that says what the code costs.

    python benchmarks/bench_sessions.py [--every 10] [--repeats 1] [--eval-events 20000]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from harness.evaluate import Protocol, iter_blocks, prepare
from harness.interactions import Interactions

_USERS, ITEMS, _SESSIONS = 977, 94_284, 630_774


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def lastfm_sessions(seed: int = 0, scale: int = 1) -> Interactions:
    """A sessionized stream with LastFM-1K's sizes after THRNN's preprocessing: 977 users,
    630,774 sessions of 2-20 events (mean about 8.1), 94,284 items of Zipf-like popularity, no
    consecutive repeats, sessions a day apart on average and events minutes apart. ``scale``
    divides the users and sessions (not the items): a proportional subset."""
    rng = np.random.default_rng(seed)
    USERS, SESSIONS = _USERS // scale, _SESSIONS // scale  # noqa: N806
    share = rng.lognormal(0.0, 1.0, USERS)
    per_user = np.maximum(rng.multinomial(SESSIONS - 3 * USERS, share / share.sum()), 0) + 3
    s_user = np.repeat(np.arange(USERS), per_user)
    lengths = np.minimum(1 + rng.geometric(1 / 7.65, SESSIONS), 20)
    first = np.r_[True, s_user[1:] != s_user[:-1]]
    gaps = rng.exponential(86400.0, SESSIONS) + 3600.0
    span = np.zeros(SESSIONS)
    e_session = np.repeat(np.arange(SESSIONS), lengths)
    steps = rng.exponential(180.0, len(e_session)).clip(1.0, 3000.0)
    starts = np.r_[0, np.cumsum(lengths)[:-1]]
    steps[starts] = 0.0
    within = np.cumsum(steps) - np.repeat(np.cumsum(steps)[starts], lengths)
    span[:] = within[starts + lengths - 1]
    step = gaps + np.r_[0, span[:-1]]  # from the previous session start
    step[first] = rng.uniform(0, 30 * 86400.0, int(first.sum()))
    user_start = np.flatnonzero(first)
    begin = np.cumsum(step) - np.repeat(np.cumsum(step)[user_start] - step[user_start],
                                        np.diff(np.r_[user_start, SESSIONS]))
    t = np.repeat(begin, lengths) + within
    popularity = 1.0 / np.arange(1, ITEMS + 1) ** 0.9
    item = np.searchsorted(np.cumsum(popularity / popularity.sum()), rng.random(len(t)))
    item = rng.permutation(ITEMS)[np.minimum(item, ITEMS - 1)]
    repeat = np.r_[False, (item[1:] == item[:-1]) & (e_session[1:] == e_session[:-1])]
    item[repeat] = (item[repeat] + 1) % ITEMS
    order = np.argsort(t, kind="stable")
    user = s_user[e_session]
    return Interactions.from_arrays(user[order], item[order], t[order], n_users=USERS,
                                    n_items=ITEMS, session=e_session[order], visit=e_session[order],
                                    name="synthetic-lastfm-1k-sessions")


def make_set(seed: int = 0, scale: int = 1) -> tuple[Any, dict[str, float]]:
    tic = time.perf_counter()
    stream = lastfm_sessions(seed, scale)
    generated = time.perf_counter() - tic
    data = prepare(stream, Protocol("sessions"))
    return data, {"generate_s": generated, "prepare_s": time.perf_counter() - tic - generated,
                  "events": len(stream), "sessions": int(np.unique(stream.session).size),
                  "items": ITEMS, "users": int(np.unique(stream.user).size), "scale": scale,
                  "train_events": len(data.train)}


def _subset(data: Any, every: int) -> Any:
    keep_train = data.train.user % every == 0
    keep_eval = data.events.user % every == 0
    return replace(data, train=data.train[keep_train], events=data.events[keep_eval],
                   split=data.split[keep_eval], ranked=data.ranked[keep_eval],
                   gap=data.gap[keep_eval], index=data.index[keep_eval])


def bench_model(name: str, data: Any, sub: Any, args: argparse.Namespace) -> dict[str, Any]:
    from harness_hrnn import HRNN
    from harness_thrnn import THRNN

    cls = {"hrnn": HRNN, "thrnn": THRNN}[name]
    params = {"session_gap": 3600.0} if name == "thrnn" else {}
    out: dict[str, Any] = {"params": params}
    full = cls(**params)
    tic = time.perf_counter()
    full.fit(data.train, seed=0)
    out["fit_full_s"] = time.perf_counter() - tic
    out["train_sessions_full"] = full.fit_report["train_sessions"]
    del full

    model = cls(**params)
    model.fit(sub.train, seed=0)
    table = model._table
    samples, cpu = [], []
    for repeat in range(args.repeats + 1):
        tic, cpu_tic = time.perf_counter(), time.process_time()
        losses = model.train_epoch()
        samples.append(time.perf_counter() - tic)
        cpu.append(time.process_time() - cpu_tic)
        # the events the epoch trained on (THRNN's stop rule leaves the last sessions out)
        events = model.fit_report["events_per_epoch"]
        print(f"  {name} epoch {repeat} ({'warm-up' if repeat == 0 else 'timed'}): "
              f"{samples[-1]:.1f} s wall, {cpu[-1]:.1f} s CPU, {events / cpu[-1]:,.0f} events per "
              f"CPU second, {losses}", flush=True)
    timed, timed_cpu = samples[1:] or samples, cpu[1:] or cpu
    out.update({"subset_train_events": int(table.length.sum()), "epoch_events": events,
                "subset_train_sessions": len(table),
                "epoch_seconds": samples, "epoch_cpu_seconds": cpu,
                "warmup": 1 if len(samples) > 1 else 0,
                "train_events_per_s": events / (sum(timed) / len(timed)),
                "train_events_per_cpu_s": events / (sum(timed_cpu) / len(timed_cpu))})

    events_eval = sub.events[: args.eval_events]
    gaps = sub.gap[: args.eval_events]
    tic = time.perf_counter()
    model._ensure_state()
    out["state_build_s"] = time.perf_counter() - tic
    wants_gap = "return_time" in cls.capabilities
    tic, cpu_tic = time.perf_counter(), time.process_time()
    for a, b in iter_blocks(events_eval, 1024):
        block = events_eval[a:b]
        model.score(block)
        model.observe(block)
        ends = ~np.isnan(gaps[a:b])
        if wants_gap and ends.any():
            model.predict_return_time(block.user[ends], block.t[ends])
    seconds, cpu_seconds = time.perf_counter() - tic, time.process_time() - cpu_tic
    out.update({"eval_events": len(events_eval), "eval_seconds": seconds,
                "eval_cpu_seconds": cpu_seconds, "eval_events_per_s": len(events_eval) / seconds,
                "eval_events_per_cpu_s": len(events_eval) / cpu_seconds, "peak_rss_mb": _rss_mb()})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="hrnn,thrnn")
    parser.add_argument("--every", type=int, default=10, help="train on every k-th user")
    parser.add_argument("--scale", type=int, default=1,
                        help="generate 1/k of the users and sessions (all items) instead")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--eval-events", type=int, default=20_000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data, sizes = make_set(scale=args.scale)
    sub = _subset(data, args.every)
    sizes["subset_users"] = int(np.unique(sub.train.user).size)
    print(json.dumps(sizes), flush=True)
    result: dict[str, Any] = {"set": sizes, "torch": torch.__version__, "threads": args.threads,
                              "platform": platform.platform(), "models": {}}
    for name in args.models.split(","):
        result["models"][name] = bench_model(name, data, sub, args)
        print(json.dumps({name: result["models"][name]}, indent=1), flush=True)
    result["peak_rss_mb"] = _rss_mb()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
