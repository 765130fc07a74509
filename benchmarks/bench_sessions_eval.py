"""Evaluation speed of HRNN and THRNN as `harness run` evaluates them (issue 13): time order
against user by user.

On the proportional LastFM-1K-sized set of ``bench_sessions.py`` (``--scale k``: 977/k users,
630,774/k sessions, all 94,284 items), a model is fitted (its state built from the training
part; no training epoch: the speed of a pass does not depend on the weights), then about
``--eval-events`` evaluation events (every user's first ones, in time order) are evaluated the
way `harness run` does it: the model in its own process, a fork for the pass, every block's
scores over all 94,284 items sent to the evaluator and ranked there, the default audits (16
look-ahead, 16 twice-scored and, user by user, 16 own-user copies). Once in time order (blocks
of distinct users and items, what every model gets) and once user by user (block k = every
user's k-th event; models that declare ``independent_users``). Audits cost about the same per
pass whatever its length, so a short pass understates the speed of a real one (LastFM-1K's test
part is about a million events). Memory: the evaluator's peak, and the peaks of the model's
process and of the pass's fork (Linux's VmHWM; pages they share are counted in both).

    python benchmarks/bench_sessions_eval.py [--models hrnn,thrnn] [--scale 10] [--eval-events 20000]
    python benchmarks/bench_sessions_eval.py --scale 1 --eval-events 200000 --orders user  # full size
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import numpy as np
import torch
from bench_sessions import _rss_mb, make_set

from harness.evaluate import Protocol, _Auditor, _stream, schedule
from harness.sandbox import ModelProcess, placement


def evaluate_pass(model, data, order: str, audits: int) -> dict:
    """One audited pass over ``data.events`` in ``order``; seconds and blocks."""
    protocol = Protocol("sessions", audits=audits)
    moved, blocks = schedule(data, 1024, order == "user")
    caps = frozenset(type(model).capabilities)
    with ModelProcess.start(model, threads=1) as proc:
        probe = proc.fork()
        auditor = _Auditor(protocol, 0, 1, len(blocks), order == "user") if audits else None
        tic, cpu = time.perf_counter(), time.process_time()
        with placement(probe) as spare:
            out = _stream(probe, moved, protocol, caps, 0, len(moved.events), blocks, None, auditor, spare)
        seconds = time.perf_counter() - tic
        memory = {"model_rss_mb": _peak_mb(proc._process.pid), "pass_rss_mb": _peak_mb(probe.pid)}
        probe.close()
    ranks = np.concatenate(out.best)
    return {"order": order, "events": len(moved.events), "blocks": len(blocks),
            "mean_block": len(moved.events) / len(blocks), "seconds": seconds,
            "evaluator_cpu_s": time.process_time() - cpu,
            "events_per_s": len(moved.events) / seconds, "mrr": float(np.mean(1.0 / ranks)),
            "audit": out.audit, **memory}


def _peak_mb(pid: int | None) -> float | None:
    """Peak resident memory of process ``pid`` (Linux's VmHWM), in MiB."""
    try:
        with open(f"/proc/{pid}/status") as status:
            line = next(x for x in status if x.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None
    return int(line.split()[1]) / 1024.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="hrnn,thrnn")
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--eval-events", type=int, default=20_000)
    parser.add_argument("--audits", type=int, default=16)
    parser.add_argument("--orders", default="time,user")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data, sizes = make_set(0, args.scale)
    # every user's first evaluation events, about --eval-events in all, in time order
    user = data.events.user
    grouped = np.argsort(user, kind="stable")
    first = np.r_[0, np.flatnonzero(np.diff(user[grouped])) + 1]
    position = np.empty(len(user), np.int64)
    position[grouped] = np.arange(len(user)) - np.repeat(first, np.diff(np.r_[first, len(user)]))
    keep = position < -(-args.eval_events // len(first))
    head = replace(data, events=data.events[keep], split=data.split[keep], ranked=data.ranked[keep],
                   gap=data.gap[keep], index=data.index[keep],
                   span=None if data.span is None else data.span[keep])
    print(json.dumps({"set": sizes, "eval_users": int(np.unique(head.events.user).size)}), flush=True)
    from harness_hrnn import HRNN
    from harness_thrnn import THRNN

    for name in args.models.split(","):
        cls = {"hrnn": HRNN, "thrnn": THRNN}[name]
        model = cls(**({"session_gap": 3600.0} if name == "thrnn" else {}))
        tic = time.perf_counter()
        model.fit(data.train, seed=0)
        model._ensure_state()
        fit_s = time.perf_counter() - tic
        for order in args.orders.split(","):
            result = evaluate_pass(model, head, order, args.audits)
            print(json.dumps({"model": name, "fit_s": fit_s, **result, "evaluator_rss_mb": _rss_mb()}),
                  flush=True)


if __name__ == "__main__":
    main()
