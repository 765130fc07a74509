"""What :func:`harness.api.progress` costs a model per item counted, with the model process's
hook in place (a time check per item, a frame to the evaluator at most five times a second).

    python benchmarks/bench_progress.py [--items 1000000]
"""

from __future__ import annotations

import argparse
import socket
import time

import harness.api
from harness._host import _Host
from harness._wire import Channel
from harness.api import progress


def per_item(items: int, hooked: bool) -> float:
    ours, theirs = socket.socketpair()
    host = _Host()
    host.conn = Channel(theirs)
    ours.setblocking(False)
    tic = time.perf_counter()
    if hooked:
        with host._progress():
            assert harness.api._progress_hook is not None
            for _ in progress(range(items)):
                pass
    else:
        for _ in range(items):
            pass
    seconds = time.perf_counter() - tic
    ours.close()
    theirs.close()
    return seconds / items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    plain = min(per_item(args.items, False) for _ in range(args.repeats))
    hooked = min(per_item(args.items, True) for _ in range(args.repeats))
    print(f"plain loop {plain * 1e9:.0f} ns/item, with progress() counted {hooked * 1e9:.0f} ns/item "
          f"(+{(hooked - plain) * 1e9:.0f} ns per batch)")


if __name__ == "__main__":
    main()
