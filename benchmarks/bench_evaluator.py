"""Evaluator speed on the real Wikipedia stream (issue 4).

Measures the whole valid+test evaluation (31,495 events, 1,000 items, full ranking) of the
simple baselines, and the evaluator's own overhead: everything but the model's scoring and
updating (blocks, slicing, ranks, metrics). Also times one-event-at-a-time evaluation of the
same model, which gives the same ranks.

    python benchmarks/bench_evaluator.py [--data ../shared/data/wikipedia.csv] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from harness.data import open_dataset
from harness.evaluate import Protocol, evaluate, prepare
from harness.runner import resolve_model

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikipedia.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT))
    parser.add_argument("--models", default="popularity,recency,frequency")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    stream = open_dataset(args.data).load()
    protocol = Protocol("streaming")
    data = prepare(stream, protocol)
    print(f"{args.data}: {len(data.events)} valid+test events, {stream.n_items} items")
    print(f"| model | mode | eval s (median of {args.repeats}) | model s | evaluator overhead s "
          "| events/s | test MRR |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        cls = resolve_model(name)
        for mode, max_block in (("blocks", 1024), ("one at a time", 1)):
            runs = []
            for _ in range(args.repeats):
                result = evaluate(cls(), data, Protocol("streaming", max_block=max_block))
                runs.append(result)
            eval_s = statistics.median(r.timing["eval_seconds"] for r in runs)
            model_s = statistics.median(r.timing["eval_model_seconds"] for r in runs)
            overhead = statistics.median(r.timing["eval_seconds"] - r.timing["eval_model_seconds"]
                                         for r in runs)
            print(f"| {name} | {mode} | {eval_s:.2f} | {model_s:.2f} | {overhead:.2f} | "
                  f"{len(data.events) / eval_s:,.0f} | {runs[0].metrics['test']['mrr']:.4f} |")


if __name__ == "__main__":
    tic = time.perf_counter()
    main()
    print(f"\n(total {time.perf_counter() - tic:.1f} s)")
