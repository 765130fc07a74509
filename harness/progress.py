"""What a run says while it runs, on stderr: tqdm bars on a terminal (training batches as the
model's process counts them, then the validation and test events), and one line per epoch
everywhere (model, seed, epoch k/N, losses, validation metric, seconds), so that output to a file
or a pipe shows progress too."""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Iterator
from typing import Any

__all__ = ["RunProgress", "number"]


class RunProgress:
    """Progress of one run. ``enabled=False`` (``--quiet``) says nothing at all."""

    def __init__(self, model: str, seed: int, epochs: int, *, enabled: bool = True) -> None:
        self.label = f"{model} seed {seed}"
        self.epochs = epochs
        self.enabled = enabled

    def bar(self, desc: str, total: int | None = None, unit: str = "ev") -> Any:
        """A tqdm bar, shown only on a terminal (``disable=None``) and removed when done."""
        from tqdm import tqdm

        return tqdm(total=total, desc=f"{self.label} {desc}", unit=unit, leave=False,
                    mininterval=0.5, disable=None if self.enabled else True, file=sys.stderr)

    @contextlib.contextmanager
    def training(self, desc: str) -> Iterator[Any]:
        """A bar for ``fit`` or one epoch; yields the ``on_progress`` callback for the model's
        counts (see :func:`harness.api.progress`)."""
        with self.bar(desc, unit="batch") as bar:
            if bar.disable:  # no terminal, or --quiet: the counts are not needed
                yield None
                return

            def update(done: int, total: int | None, unit: str) -> None:
                if bar.total != total or bar.unit != unit:
                    bar.total, bar.unit = total, unit
                    bar.refresh()
                bar.update(done - bar.n)

            yield update

    def say(self, text: str) -> None:
        """One line on stderr, above any bar."""
        if self.enabled:
            from tqdm import tqdm

            tqdm.write(f"{self.label} · {text}", file=sys.stderr)

    def epoch(self, record: dict[str, Any], selection: str) -> None:
        """``jodie seed 0 · epoch 3/10 · loss 1.2345 · valid mrr 0.4567 · 12.3 s (fit 10.1)``."""
        losses = " ".join(f"{k} {number(v)}" for k, v in record["losses"].items())
        value = (record.get("valid") or {}).get(selection)
        seconds = record["fit_seconds"] + record.get("valid_seconds", 0.0)
        parts = [f"epoch {record['epoch']}/{self.epochs}", losses,
                 f"valid {selection} {number(value)}" if "valid" in record else "",
                 f"{seconds:.1f} s (fit {record['fit_seconds']:.1f})"]
        self.say(" · ".join(p for p in parts if p))


def number(value: Any) -> str:
    """A metric or loss in four significant places, ``n/a`` when there is none."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.4g}" if abs(value) >= 1e4 or abs(value) < 1e-3 else f"{value:.4f}"
