"""Speed of the counting baselines on the real Wikipedia stream (issue 6).

Fits each baseline on the first 80% of events and streams the valid+test 20% (31,495 events,
1,000 items, full ranking) through ``score`` and ``observe`` in blocks: maximal runs of
consecutive events with distinct users and items, as the evaluator builds them. Reports the
median of ``--repeats`` runs and the raw samples, plus test MRR (average tie policy), and the
same pass through ``harness.evaluate.evaluate`` when the evaluator can prepare the data.

    python benchmarks/bench_baselines.py [--data ../shared/data/wikipedia.csv] [--repeats 5]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import numpy as np
from harness_baselines import Frequency, Popularity, Recency

from harness.evaluate import iter_blocks
from harness.interactions import Interactions

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikipedia.csv"
MODELS = {"popularity": Popularity, "recency": Recency, "frequency": Frequency}


def load(path: Path) -> Interactions:
    data = np.loadtxt(path, delimiter=",", skiprows=1, usecols=(0, 1, 2, 3))
    order = np.argsort(data[:, 2], kind="stable")
    data = data[order]
    return Interactions.from_arrays(data[:, 0], data[:, 1], data[:, 2], data[:, 3],
                                    name=path.name)


def average_ranks(scores: np.ndarray, items: np.ndarray) -> np.ndarray:
    true = scores[np.arange(len(items)), items][:, None]
    return (scores > true).sum(1) + ((scores == true).sum(1) + 1) / 2


def one_pass(cls: type, train: Interactions, events: Interactions,
             blocks: list[tuple[int, int]]) -> dict[str, float | np.ndarray]:
    model = cls()
    tic = time.perf_counter()
    model.fit(train)
    fit_s = time.perf_counter() - tic
    score_s = observe_s = 0.0
    ranks = []
    for a, b in blocks:
        block = events[a:b]
        tic = time.perf_counter()
        scores = model.score(block)
        score_s += time.perf_counter() - tic
        ranks.append(average_ranks(scores, block.item))
        tic = time.perf_counter()
        model.observe(block)
        observe_s += time.perf_counter() - tic
    return {"fit": fit_s, "score": score_s, "observe": observe_s,
            "ranks": np.concatenate(ranks)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    stream = load(args.data)
    n = len(stream)
    train = stream[: int(0.8 * n)]
    events = stream[int(0.8 * n) :]
    test_from = int(0.9 * n) - int(0.8 * n)
    blocks = list(iter_blocks(events, 1024))
    sizes = np.array([b - a for a, b in blocks])
    print(f"{args.data.name}: {n} events, {stream.n_users} users, {stream.n_items} items; "
          f"valid+test {len(events)} events in {len(blocks)} blocks "
          f"(mean {sizes.mean():.2f}, max {sizes.max()} events)")
    print(f"machine: {platform.processor() or platform.machine()}, python "
          f"{platform.python_version()}, numpy {np.__version__}\n")
    print(f"| model | fit s | score s | observe s | fit+score+observe s (median of {args.repeats}) "
          "| events/s | test MRR | test Recall@10 |")
    print("|---|---|---|---|---|---|---|---|")
    raw = {}
    for name, cls in MODELS.items():
        runs = [one_pass(cls, train, events, blocks) for _ in range(args.repeats)]
        totals = [r["fit"] + r["score"] + r["observe"] for r in runs]
        raw[name] = totals
        med = {k: statistics.median(r[k] for r in runs) for k in ("fit", "score", "observe")}
        total = statistics.median(totals)
        ranks = runs[0]["ranks"][test_from:]
        print(f"| {name} | {med['fit']:.3f} | {med['score']:.3f} | {med['observe']:.3f} | "
              f"{total:.3f} | {len(events) / total:,.0f} | {np.mean(1 / ranks):.4f} | "
              f"{np.mean(ranks <= 10):.4f} |")
    print("\nraw fit+score+observe samples (s):")
    for name, totals in raw.items():
        print(f"  {name}: {', '.join(f'{s:.3f}' for s in totals)}")
    try:
        from harness.evaluate import Protocol, evaluate

        print("\nthrough harness.evaluate.evaluate (streaming protocol, blocks):")
        for name, cls in MODELS.items():
            tic = time.perf_counter()
            result = evaluate(cls(), stream, Protocol("streaming"))
            wall = time.perf_counter() - tic
            print(f"  {name}: wall {wall:.2f} s, eval {result.timing['eval_seconds']:.2f} s, "
                  f"test MRR {result.metrics['test']['mrr']:.4f}, "
                  f"Recall@10 {result.metrics['test']['recall@10']:.4f}")
    except ImportError as exc:  # the evaluator's data modules may not be installed yet
        print(f"\n(harness.evaluate.evaluate not run: {exc})")


if __name__ == "__main__":
    tic = time.perf_counter()
    main()
    print(f"\n(total {time.perf_counter() - tic:.1f} s)")
