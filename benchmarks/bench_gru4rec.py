"""Training speed of GRU4Rec (issue 6) on a LastFM-1K-sized session set and on Wikipedia.

LastFM-1K has 992 users, 19,150,868 listening events and about a million distinct tracks. The
synthetic set has those sizes (``harness.data.synthetic.SyntheticDataset(preset="lastfm")`` when
it is installed, otherwise the generator below: Zipf-like item popularity, events minutes
apart, sessions a day apart); sessions end after an hour of inactivity, as in THRNN's LastFM.
The benchmark

1. times ``fit`` on the whole set (sessionizing 19M events, building 1M-row item tables);
2. times ``train_epoch`` on the first ``--train-events`` events of the set (item tables of the
   full size, so sampling and sparse updates touch a million-row table), for the default and
   the published configuration, with a warm-up epoch and ``--repeats`` timed epochs, and reports
   training events/s (target events per second) with the raw samples;
3. on Wikipedia (``--wikipedia``), times one training epoch on the streaming protocol's training
   part and a valid+test evaluation pass in blocks, with test MRR and Recall@10.

    python benchmarks/bench_gru4rec.py [--threads 2] [--repeats 2] [--train-events 100000]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from harness_gru4rec import GRU4Rec

from harness.interactions import Interactions

WIKIPEDIA = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikipedia.csv"
CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    # The published best cross-entropy configuration (RSC15), see REFERENCE.md.
    "published": {"hidden_size": 480, "batch_size": 48, "dropout_hidden": 0.2,
                  "learning_rate": 0.07, "n_sample": 2048, "sample_alpha": 0.2, "logq": 1.0},
}


def lastfm_like(n_users: int, n_items: int, n_events: int, seed: int = 0) -> Interactions:
    """A session stream with LastFM-1K's sizes (used when harness.data.synthetic is missing)."""
    rng = np.random.default_rng(seed)
    share = rng.lognormal(0.0, 1.0, n_users)
    counts = rng.multinomial(n_events, share / share.sum())
    user = np.repeat(np.arange(n_users, dtype=np.int32), counts)  # grouped by user
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.9
    cdf = np.cumsum(popularity / popularity.sum())
    item = np.minimum(np.searchsorted(cdf, rng.random(n_events)), n_items - 1)
    item = rng.permutation(n_items)[item].astype(np.int32)
    lengths = np.minimum(rng.geometric(1 / 10, n_events // 2 + n_users), 20)
    part = np.repeat(np.arange(lengths.size), lengths)[:n_events]
    new_session = np.r_[True, (part[1:] != part[:-1]) | (user[1:] != user[:-1])]
    gap = np.where(new_session, rng.exponential(86400.0, n_events),
                   rng.exponential(240.0, n_events))
    clock = np.cumsum(gap)
    first = np.r_[0, np.cumsum(counts)[:-1]]
    start = np.repeat(clock[first] - rng.uniform(0, 86400.0, n_users), counts)
    t = clock - start
    session = np.cumsum(new_session) - 1
    order = np.argsort(t, kind="stable")
    return Interactions.from_arrays(user[order], item[order], t[order], n_users=n_users,
                                    n_items=n_items, session=session[order], name="lastfm-like")


def synthetic_lastfm(args: argparse.Namespace) -> tuple[Interactions, str]:
    """The project's generator with LastFM-1K's sizes, or the local one when it is missing."""
    try:
        from harness.data.synthetic import SyntheticDataset
    except ImportError as exc:
        source = f"local generator ({exc})"
        return lastfm_like(args.users, args.items, args.events), source
    dataset = SyntheticDataset(preset="lastfm", n_users=args.users, n_items=args.items,
                               n_events=args.events)
    return dataset.load(), f"harness.data.synthetic preset lastfm, {args.users} users, " \
        f"{args.items} items, {args.events} events"


def time_epochs(model: GRU4Rec, train: Interactions, repeats: int) -> dict[str, Any]:
    model.fit(train, seed=0)
    pairs = model.fit_report["train_pairs"]
    tic = time.perf_counter()
    model.train_epoch()
    warmup = time.perf_counter() - tic
    samples = []
    for _ in range(repeats):
        tic = time.perf_counter()
        losses = model.train_epoch()
        samples.append(time.perf_counter() - tic)
    median = statistics.median(samples)
    return {"train_pairs": pairs, "warmup_s": warmup, "epoch_s": samples,
            "events_per_s": pairs / median, "loss": losses["loss"]}


def load_jodie(path: Path) -> Interactions:
    data = np.loadtxt(path, delimiter=",", skiprows=1, usecols=(0, 1, 2, 3))
    data = data[np.argsort(data[:, 2], kind="stable")]
    return Interactions.from_arrays(data[:, 0], data[:, 1], data[:, 2], data[:, 3],
                                    name=path.name)


def wikipedia(path: Path, epochs: int) -> dict[str, Any]:
    from harness.evaluate import iter_blocks

    stream = load_jodie(path)
    n = len(stream)
    cut = int(0.8 * n)
    train, events = stream[:cut], stream[cut:]
    test_from = int(0.9 * n) - cut
    model = GRU4Rec()
    tic = time.perf_counter()
    model.fit(train, seed=0)
    fit_s = time.perf_counter() - tic
    epoch_s = []
    for _ in range(epochs):
        tic = time.perf_counter()
        model.train_epoch()
        epoch_s.append(time.perf_counter() - tic)
    blocks = list(iter_blocks(events, 1024))
    ranks = []
    tic = time.perf_counter()
    for a, b in blocks:
        block = events[a:b]
        scores = model.score(block)
        true = scores[np.arange(b - a), block.item][:, None]
        ranks.append((scores > true).sum(1) + ((scores == true).sum(1) + 1) / 2)
        model.observe(block)
    eval_s = time.perf_counter() - tic
    rank = np.concatenate(ranks)[test_from:]
    pairs = model.fit_report["train_pairs"]
    return {"train_events": cut, "train_pairs": pairs, "fit_s": fit_s, "epoch_s": epoch_s,
            "train_events_per_s": pairs / statistics.median(epoch_s), "eval_events": len(events),
            "blocks": len(blocks), "eval_s": eval_s, "eval_events_per_s": len(events) / eval_s,
            "epochs": epochs, "test_mrr": float(np.mean(1.0 / rank)),
            "test_recall@10": float(np.mean(rank <= 10))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--users", type=int, default=992)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=19_150_868)
    parser.add_argument("--train-events", type=int, default=100_000)
    parser.add_argument("--configs", default="default,published")
    parser.add_argument("--wikipedia", type=Path, default=WIKIPEDIA)
    parser.add_argument("--wikipedia-epochs", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out: dict[str, Any] = {"machine": platform.platform(), "processor": platform.processor(),
                           "torch": torch.__version__, "threads": args.threads}

    tic = time.perf_counter()
    stream, source = synthetic_lastfm(args)
    out["lastfm"] = {"source": source, "generate_s": time.perf_counter() - tic,
                     **{k: int(v) for k, v in stream.counts().items()}}
    print(json.dumps(out, indent=1), flush=True)

    model = GRU4Rec(session_gap=3600.0)
    tic = time.perf_counter()
    model.fit(stream, seed=0)
    out["lastfm"]["sessions"] = model.fit_report["train_sessions"]
    out["lastfm"]["fit_s"] = time.perf_counter() - tic
    out["lastfm"]["train_pairs"] = model.fit_report["train_pairs"]
    out["lastfm"]["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    del model
    print(json.dumps(out["lastfm"], indent=1), flush=True)

    prefix = stream[: args.train_events]
    for name in args.configs.split(","):
        model = GRU4Rec(session_gap=3600.0, **CONFIGS[name])
        result = time_epochs(model, prefix, args.repeats)
        result["epoch_estimate_full_s"] = out["lastfm"]["train_pairs"] / result["events_per_s"]
        out[f"lastfm_{name}"] = {"params": CONFIGS[name], **result}
        print(name, json.dumps(result, indent=1), flush=True)

    if args.wikipedia.exists():
        out["wikipedia"] = wikipedia(args.wikipedia, args.wikipedia_epochs)
        print(json.dumps(out["wikipedia"], indent=1), flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
