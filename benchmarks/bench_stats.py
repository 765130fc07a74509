"""What honest statistics cost and change, from the run records of a results directory.

    python benchmarks/bench_stats.py RESULTS_DIR [--dataset NAME] [--repeats 3]

For every ok record with per-event outcomes: the bytes its outcomes take in the JSON file, and
the 95% CI width of its test MRR (AUC, MAE) from the bootstrap over users against a bootstrap
over events (each event its own cluster), which is what ignoring the correlation of a user's
events would give. Then the wall time of building the whole leaderboard (statistics included)
against the same tables without outcomes (no bootstrap), best of ``--repeats``.
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import numpy as np

from harness.leaderboard import N_RESAMPLES, leaderboard
from harness.records import load_records
from harness.stats import Outcomes, bootstrap, interval

METRIC = {"rank": "mrr", "state": "auc", "return_time": "mae"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results")
    parser.add_argument("--dataset")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    records = [r for r in load_records(args.results) if r["status"] == "ok"
               and (not args.dataset or args.dataset in r["dataset"]["name"])]
    print("| record | kind | events | users | outcome bytes | bytes/event | CI users | CI events | ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for rec in records:
        for kind, metric in METRIC.items():
            out = Outcomes.from_record(rec, kind)
            if out is None:
                continue
            size = len(json.dumps(rec["outcomes"][kind]))
            events = int(out.counts.sum())
            flat = Outcomes(out.fingerprint, np.ones(events, np.int64), out.columns)
            by_user = interval(bootstrap(metric, {0: [out]}, n_resamples=N_RESAMPLES)[0])
            by_event = interval(bootstrap(metric, {0: [flat]}, n_resamples=N_RESAMPLES)[0])
            wu, we = by_user[1] - by_user[0], by_event[1] - by_event[0]
            print(f"| {rec['model']} (protocol {rec['protocol']['name']}) | {kind} | {events:,} | "
                  f"{out.users:,} | {size:,} | {size / events:.2f} | {wu:.4f} | {we:.4f} | "
                  f"{wu / we:.2f} |")
    bare = copy.deepcopy(records)
    for rec in bare:
        rec.pop("outcomes", None)
    for name, recs in (("with statistics", records), ("without outcomes", bare)):
        samples = []
        for _ in range(args.repeats):
            tic = time.perf_counter()
            leaderboard(recs)  # records already filtered by --dataset
            samples.append(time.perf_counter() - tic)
        print(f"leaderboard of {len(recs)} records {name}: best {min(samples):.2f} s "
              f"(samples {', '.join(f'{s:.2f}' for s in samples)})")


if __name__ == "__main__":
    main()
