"""What isolation and audits cost (issue 10), on the real Wikipedia stream.

For each model, the valid+test evaluation (31,495 events, 1,000 items) three ways, after the same
training:

- ``in-process``: the model object in the evaluator's process, no fork, no audit (how the harness
  ran before models got a process of their own);
- ``isolated``: the model in its own process, a fork per pass, blocks over a socket, no audit;
- ``isolated+audits``: the same with the default audits (16 per pass, a fork every 64 blocks).

Every mode computes on one CPU thread, as `harness run` does. Raw samples are printed as JSON;
the table shows the minimum over repeats (the machine is shared).

    python benchmarks/bench_integrity.py [--models jodie,popularity] [--repeats 2] [--epochs 1]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np

from harness.data import open_dataset
from harness.evaluate import Protocol, _stream, evaluate, iter_blocks, prepare
from harness.metrics import mrr
from harness.runner import build_model, resolve_model
from harness.sandbox import LocalModel, ModelRef

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikipedia.csv"


def in_process(name: str, data, protocol: Protocol, epochs: int) -> tuple[float, float]:
    """Fit and train here, then stream valid+test through the model object (no audits)."""
    cls = resolve_model(name)
    model = build_model(cls, {}, name)
    torch = sys.modules.get("torch")
    if torch is not None:  # one thread, as `harness run` and every pass's fork compute
        torch.set_num_threads(1)
    model.fit(data.train, seed=0)
    if cls.iterative:
        for _ in range(epochs):
            model.train_epoch()
    blocks = list(iter_blocks(data.events, protocol.max_block if cls.supports_blocks else 1))
    local = LocalModel(copy.deepcopy(model))
    tic = time.perf_counter()
    out = _stream(local, data, protocol, cls.capabilities, 0, len(data.events), blocks, None)
    seconds = time.perf_counter() - tic
    split = np.concatenate(out.rank_split)
    test = split == 2
    return seconds, mrr(np.concatenate(out.best)[test], np.concatenate(out.worst)[test])


def isolated(name: str, data, audits: int, epochs: int) -> tuple[float, float, dict]:
    result = evaluate(ModelRef(name), data, Protocol("streaming", audits=audits), epochs=epochs,
                      threads=1)
    return result.timing["eval_seconds"], result.metrics["test"]["mrr"], result.audit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT))
    parser.add_argument("--models", default="jodie,popularity,recency,frequency")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    stream = open_dataset(args.data).load()
    protocol = Protocol("streaming")
    data = prepare(stream, protocol)
    print(f"{args.data}: {len(data.events)} valid+test events, {stream.n_items} items, "
          f"{args.epochs} training epoch(s) for iterative models")
    rows, raw = [], {}
    for name in args.models.split(","):
        samples: dict[str, list[float]] = {"in-process": [], "isolated": [], "isolated+audits": []}
        mrrs, audit = {}, {}
        for _ in range(args.repeats):
            seconds, mrrs["in-process"] = in_process(name, data, protocol, args.epochs)
            samples["in-process"].append(seconds)
            seconds, mrrs["isolated"], _ = isolated(name, data, 0, args.epochs)
            samples["isolated"].append(seconds)
            seconds, mrrs["isolated+audits"], audit = isolated(name, data, 16, args.epochs)
            samples["isolated+audits"].append(seconds)
        raw[name] = {"seconds": samples, "test_mrr": mrrs, "audit": audit}
        base = min(samples["in-process"])
        for mode, values in samples.items():
            best = min(values)
            rows.append(f"| {name} | {mode} | {best:.2f} | {100 * (best / base - 1):+.1f}% | "
                        f"{mrrs[mode]:.4f} |")
    print("| model | mode | valid+test eval s (min) | vs in-process | test MRR |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))
    print("\nraw:", json.dumps(raw))


if __name__ == "__main__":
    tic = time.perf_counter()
    main()
    print(f"\n(total {time.perf_counter() - tic:.1f} s)")
