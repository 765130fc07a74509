"""Loading speed: JODIE CSV parsing (cold) and the binary cache (warm).

    python benchmarks/bench_loading.py [--repeats 3] [--skip-reddit] [--json out.json]

Cases:
* ``wikipedia``: ``../shared/data/wikipedia.csv`` (157,474 events, no features).
* ``synthetic-reddit``: the ``synthetic-reddit`` preset (672,447 events, 10,000 users, 1,000
  items, 172 features) written to a temporary JODIE CSV, then loaded.

"cold" is the first load into an empty data directory (checksum, parse, cache write); "cached" is
a later load with a new dataset object (remembered checksum, arrays read from the cache). Every
sample is kept; the summary reports min and median. Targets (issue 3): wikipedia cold < 1 s,
Reddit-sized cold < 20 s and cached < 1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WIKIPEDIA = Path(os.environ.get("HARNESS_BENCH_WIKIPEDIA",
                                ROOT.parent / "shared" / "data" / "wikipedia.csv"))


def _fresh_home() -> str:
    home = tempfile.mkdtemp(prefix="harness-bench-home-")
    os.environ["HARNESS_DATA"] = home
    return home


def time_loads(path: Path, repeats: int) -> dict:
    from harness.data import FileDataset

    cold, cached, cold_cpu, load = [], [], [], []
    for _ in range(repeats):
        _fresh_home()
        load.append(os.getloadavg()[0] if hasattr(os, "getloadavg") else None)
        before = os.times()
        start = time.perf_counter()
        stream = FileDataset(path).load()
        cold.append(time.perf_counter() - start)
        after = os.times()
        cold_cpu.append(sum(after[:4]) - sum(before[:4]))  # this process and its workers
        start = time.perf_counter()
        again = FileDataset(path).load()
        cached.append(time.perf_counter() - start)
        assert len(again) == len(stream)
    return {
        "file": str(path), "bytes": path.stat().st_size, "events": len(stream),
        "features": stream.n_features, "repeats": repeats, "warmup": 0,
        "cold_s": cold, "cold_cpu_s": cold_cpu, "cached_s": cached, "loadavg_1min": load,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-reddit", action="store_true")
    parser.add_argument("--json", help="write raw samples here")
    args = parser.parse_args()

    results: dict = {
        "python": sys.version.split()[0], "machine": platform.machine(),
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cases": {},
    }
    if WIKIPEDIA.is_file():
        results["cases"]["wikipedia"] = time_loads(WIKIPEDIA, args.repeats)
    else:
        print(f"skipping wikipedia: {WIKIPEDIA} not found", file=sys.stderr)
    if not args.skip_reddit:
        from harness.data import write_jodie_csv
        from harness.data.synthetic import SyntheticDataset

        start = time.perf_counter()
        stream = SyntheticDataset("reddit").load()
        generated = time.perf_counter() - start
        with tempfile.TemporaryDirectory(prefix="harness-bench-") as tmp:
            path = Path(tmp) / "synthetic-reddit.csv"
            start = time.perf_counter()
            write_jodie_csv(stream, path)
            written = time.perf_counter() - start
            del stream
            case = time_loads(path, args.repeats)
        case.update(generate_s=generated, write_s=written)
        results["cases"]["synthetic-reddit"] = case

    print(f"{'case':<18} {'MB':>7} {'events':>9}  {'cold min/median s':>18}  "
          f"{'cold CPU s':>10}  {'cached min/median s':>20}  {'load':>5}")
    for name, case in results["cases"].items():
        cold, cached = case["cold_s"], case["cached_s"]
        print(f"{name:<18} {case['bytes'] / 1e6:7.1f} {case['events']:9d}  "
              f"{min(cold):8.2f} / {statistics.median(cold):7.2f}  "
              f"{min(case['cold_cpu_s']):10.2f}  "
              f"{min(cached):9.3f} / {statistics.median(cached):8.3f}  "
              f"{max(x or 0 for x in case['loadavg_1min']):5.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
