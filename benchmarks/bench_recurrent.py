"""LSTM and Time-LSTM benchmarks (issue 12): training epoch and valid+test evaluation time on
Wikipedia, and a Reddit-sized synthetic epoch with peak memory.

    python benchmarks/bench_recurrent.py wikipedia [--models lstm,time-lstm] [--epochs 2] [--threads 1]
    python benchmarks/bench_recurrent.py reddit [--models lstm,time-lstm] [--threads 1]

In-process measurements (no sandbox, no audits): ``fit`` once, then ``--epochs`` timed
``train_epoch`` calls, then one streaming pass over valid and test in blocks (as the evaluator
forms them) with the last epoch's parameters. Wall and process CPU seconds are both kept (the
machine is shared: CPU seconds of a one-thread run are what an idle core would take), with the
load average at the start. Prints one JSON line per measurement, raw samples kept.
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

import numpy as np

WIKIPEDIA = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikipedia.csv"


def _emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def _model(name: str, threads: int | None, extra: dict[str, Any]) -> Any:
    if name == "lstm":
        from harness_lstm import LSTM

        return LSTM(num_threads=threads, **extra)
    from harness_timelstm import TimeLSTM

    return TimeLSTM(num_threads=threads, **extra)


def _timed(fn: Any) -> tuple[Any, float, float]:
    tic, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - tic, time.process_time() - cpu


def _epochs(model: Any, train: Any, epochs: int) -> dict[str, Any]:
    _, setup, setup_cpu = _timed(lambda: model.fit(train, seed=0))
    wall, cpu, losses = [], [], []
    for _ in range(epochs):
        out, w, c = _timed(model.train_epoch)
        wall.append(w)
        cpu.append(c)
        losses.append(out)
    return {"setup_seconds": setup, "setup_cpu_seconds": setup_cpu, "epoch_seconds": wall,
            "epoch_cpu_seconds": cpu, "losses": losses}


def wikipedia(models: list[str], epochs: int, threads: int | None, extra: dict[str, Any]) -> None:
    from harness.data.jodie import load_jodie_csv
    from harness.evaluate import Protocol, iter_blocks, prepare
    from harness.metrics import mrr, rank_bounds, recall

    stream = load_jodie_csv(WIKIPEDIA)
    protocol = Protocol()
    data = prepare(stream, protocol)
    events = data.events
    blocks = list(iter_blocks(events, protocol.max_block))
    for name in models:
        load = os.getloadavg()
        model = _model(name, threads, extra)
        record = _epochs(model, data.train, epochs)

        def stream_pass(model: Any = model) -> tuple[np.ndarray, np.ndarray]:
            best, worst = np.empty(len(events), np.int64), np.empty(len(events), np.int64)
            for a, b in blocks:
                block = events[a:b]
                best[a:b], worst[a:b] = rank_bounds(model.score(block), block.item)
                model.observe(block)
                model.predict_state(block)
            return best, worst

        (best, worst), wall, cpu = _timed(stream_pass)
        test = (data.split == 2) & data.ranked
        out = {"bench": "wikipedia", "model": name, "params": model.get_params(),
               "train_events": len(data.train), "eval_events": len(events), "blocks": len(blocks),
               "load_average_at_start": load, **record, "eval_seconds": wall,
               "eval_cpu_seconds": cpu, "report": model.fit_report}
        out["test_mrr"] = mrr(best[test], worst[test])
        out["test_recall@10"] = recall(best[test], worst[test], 10)
        _emit(out)


def reddit(models: list[str], threads: int | None, extra: dict[str, Any]) -> None:
    from harness.data.synthetic import SyntheticDataset

    stream = SyntheticDataset(preset="reddit").load()
    for name in models:
        load = os.getloadavg()
        model = _model(name, threads, extra)
        record = _epochs(model, stream, 1)  # the whole stream, as the target asks
        _emit({"bench": "synthetic-reddit", "model": name, "events": len(stream),
               "counts": stream.counts(), "load_average_at_start": load, **record,
               "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
               "report": model.fit_report})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["wikipedia", "reddit"])
    parser.add_argument("--models", default="lstm,time-lstm")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's)")
    parser.add_argument("--param", action="append", default=[], help="KEY=VALUE (JSON value)")
    args = parser.parse_args(argv)
    extra = {}
    for item in args.param:
        key, value = item.split("=", 1)
        try:
            extra[key] = json.loads(value)
        except json.JSONDecodeError:
            extra[key] = value
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.what == "wikipedia":
        wikipedia(models, args.epochs, args.threads or None, extra)
    else:
        reddit(models, args.threads or None, extra)


if __name__ == "__main__":
    sys.exit(main())
