"""JODIE's recurrent baselines (issue 12): RRN, LatentCross and DeepCoevolve, epoch and
evaluation time on Wikipedia and a Reddit-sized synthetic epoch with peak memory.

    python benchmarks/bench_jodie_baselines.py wikipedia --model rrn [--epochs 1] [--threads 1]
    python benchmarks/bench_jodie_baselines.py wikipedia-cpu --model deepcoevolve   # CPU seconds
    python benchmarks/bench_jodie_baselines.py synthetic --model latentcross [--epochs 1]

Prints one JSON line per measurement (raw samples kept). Run one at a time on a shared machine;
the load average before and after is recorded beside the times.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

WIKIPEDIA = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikipedia.csv"


def _emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def _model(name: str, threads: int | None) -> Any:
    if name == "rrn":
        from harness_rrn import RRN

        return RRN(num_threads=threads)
    if name == "deepcoevolve":
        from harness_deepcoevolve import DeepCoevolve

        return DeepCoevolve(num_threads=threads)
    from harness_latentcross import LatentCross

    return LatentCross(num_threads=threads)


def wikipedia(name: str, epochs: int, threads: int | None) -> None:
    from harness.data.jodie import load_jodie_csv
    from harness.evaluate import Protocol, evaluate

    stream = load_jodie_csv(WIKIPEDIA)
    load = os.getloadavg()
    tic, cpu = time.perf_counter(), time.process_time()
    result = evaluate(_model(name, threads), stream, Protocol(), epochs=epochs, seed=0)
    _emit({
        "bench": "wikipedia", "model": name, "epochs": epochs, "threads": threads,
        "wall_seconds": time.perf_counter() - tic, "cpu_seconds": time.process_time() - cpu,
        "load_before": load, "load_after": os.getloadavg(), "timing": result.timing,
        "best_epoch": result.best_epoch, "valid": result.metrics.get("valid"),
        "test": result.metrics.get("test"), "report": result.model_report,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    })


def wikipedia_cpu(name: str, threads: int | None) -> None:
    """CPU seconds of the model's own work, in this process: one training epoch, then one frozen
    pass over valid + test in blocks (no model process, no audits). On a loaded machine these
    move far less than wall times."""
    from harness.data.jodie import load_jodie_csv
    from harness.evaluate import Protocol, prepare, replay

    protocol = Protocol()
    data = prepare(load_jodie_csv(WIKIPEDIA), protocol)
    model = _model(name, threads)
    load = os.getloadavg()
    model.fit(data.train, seed=0)
    tic, cpu = time.perf_counter(), time.process_time()
    model.train_epoch()
    epoch = (time.perf_counter() - tic, time.process_time() - cpu)
    tic, cpu = time.perf_counter(), time.process_time()
    replay(model, data, protocol, 1024)
    evaluation = (time.perf_counter() - tic, time.process_time() - cpu)
    _emit({"bench": "wikipedia-cpu", "model": name, "threads": threads,
           "epoch_wall_seconds": epoch[0], "epoch_cpu_seconds": epoch[1],
           "eval_wall_seconds": evaluation[0], "eval_cpu_seconds": evaluation[1],
           "eval_events": len(data.events), "load_before": load, "load_after": os.getloadavg()})


def synthetic(name: str, epochs: int, threads: int | None, train_fraction: float) -> None:
    from harness.data.synthetic import SyntheticDataset

    stream = SyntheticDataset(preset="reddit").load()
    train = stream[: int(train_fraction * len(stream))]
    model = _model(name, threads)
    load = os.getloadavg()
    tic = time.perf_counter()
    model.fit(train, seed=0)
    setup = time.perf_counter() - tic
    samples, cpu_samples = [], []
    for _ in range(epochs):
        tic, cpu = time.perf_counter(), time.process_time()
        model.train_epoch()
        samples.append(time.perf_counter() - tic)
        cpu_samples.append(time.process_time() - cpu)
    _emit({"bench": "synthetic-reddit", "model": name, "threads": threads,
           "events": len(stream), "train_events": len(train), "counts": stream.counts(),
           "setup_seconds": setup, "epoch_seconds": samples, "epoch_cpu_seconds": cpu_samples,
           "load_before": load, "load_after": os.getloadavg(),
           "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
           "report": model.fit_report})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["wikipedia", "wikipedia-cpu", "synthetic"])
    parser.add_argument("--model", choices=["rrn", "latentcross", "deepcoevolve"], required=True)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train-fraction", type=float, default=0.8,
                        help="synthetic: leading share of the stream to train on (1 = all events)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's)")
    args = parser.parse_args(argv)
    threads = args.threads or None
    if args.what == "wikipedia":
        wikipedia(args.model, args.epochs, threads)
    elif args.what == "wikipedia-cpu":
        wikipedia_cpu(args.model, threads)
    else:
        synthetic(args.model, args.epochs, threads, args.train_fraction)


if __name__ == "__main__":
    sys.exit(main())
