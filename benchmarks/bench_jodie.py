"""JODIE benchmarks (issue 5): epoch and evaluation time on Wikipedia, the authors' protocol,
a Reddit-sized synthetic epoch, and peak memory at 52,501 users x 32,237 items.

    python benchmarks/bench_jodie.py wikipedia [--epochs 1] [--online]   # harness.evaluate
    python benchmarks/bench_jodie.py synthetic                           # Reddit-sized epoch
    python benchmarks/bench_jodie.py memory                              # peak RSS, big catalogue

Prints one JSON line per measurement (raw samples kept). Long runs: start with nohup and poll.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

WIKIPEDIA = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikipedia.csv"


def _emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def wikipedia(epochs: int, online: bool, tie_policy: str, threads: int | None) -> None:
    from harness_jodie import JODIE

    from harness.data.jodie import load_jodie_csv
    from harness.evaluate import Protocol, evaluate

    stream = load_jodie_csv(WIKIPEDIA)
    model = JODIE(online_updates=online, num_threads=threads)
    tic, cpu = time.perf_counter(), time.process_time()
    result = evaluate(model, stream, Protocol(tie_policy=tie_policy), epochs=epochs, seed=0)
    _emit({
        "bench": "wikipedia", "epochs": epochs, "online_updates": online, "tie_policy": tie_policy,
        "wall_seconds": time.perf_counter() - tic, "cpu_seconds": time.process_time() - cpu,
        "timing": result.timing,
        "best_epoch": result.best_epoch, "valid": result.metrics.get("valid"),
        "test": result.metrics.get("test"), "report": result.model_report,
        "losses": [e["losses"] for e in result.epochs],
    })


def synthetic(epochs: int, threads: int | None, train_fraction: float) -> None:
    from harness_jodie import JODIE

    from harness.data.synthetic import SyntheticDataset

    stream = SyntheticDataset(preset="reddit").load()
    train = stream[: int(train_fraction * len(stream))]
    model = JODIE(num_threads=threads)
    tic = time.perf_counter()
    model.fit(train, seed=0)
    setup = time.perf_counter() - tic
    samples, cpu_samples = [], []
    for _ in range(epochs):
        tic, cpu = time.perf_counter(), time.process_time()
        model.train_epoch()
        samples.append(time.perf_counter() - tic)
        cpu_samples.append(time.process_time() - cpu)
    _emit({"bench": "synthetic-reddit", "events": len(stream), "train_events": len(train),
           "counts": stream.counts(), "setup_seconds": setup, "epoch_seconds": samples,
           "epoch_cpu_seconds": cpu_samples,
           "report": model.fit_report})


def memory(n_events: int, threads: int | None) -> None:
    from harness_jodie import JODIE

    from harness.evaluate import Protocol, evaluate
    from harness.interactions import Interactions

    rng = np.random.default_rng(0)
    n_users, n_items = 52_501, 32_237
    stream = Interactions.from_arrays(
        rng.integers(0, n_users, n_events), rng.integers(0, n_items, n_events),
        np.sort(rng.uniform(0, 3e7, n_events)), n_users=n_users, n_items=n_items, name="big")
    model = JODIE(static_size=128, num_threads=threads)
    tic = time.perf_counter()
    result = evaluate(model, stream, Protocol(), epochs=1, seed=0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    _emit({"bench": "memory", "users": n_users, "items": n_items, "events": n_events,
           "peak_rss_gib": peak, "wall_seconds": time.perf_counter() - tic,
           "timing": result.timing, "test_mrr": result.metrics["test"].get("mrr")})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["wikipedia", "synthetic", "memory"])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--online", action="store_true", help="the authors' online updates")
    parser.add_argument("--tie-policy", default="average")
    parser.add_argument("--events", type=int, default=200_000, help="memory: stream length")
    parser.add_argument("--train-fraction", type=float, default=0.8,
                        help="synthetic: leading share of the stream to train on (1 = all events)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's)")
    args = parser.parse_args(argv)
    threads = args.threads or None
    if args.what == "wikipedia":
        wikipedia(args.epochs, args.online, args.tie_policy, threads)
    elif args.what == "synthetic":
        synthetic(args.epochs, threads, args.train_fraction)
    else:
        memory(args.events, threads)


if __name__ == "__main__":
    sys.exit(main())
