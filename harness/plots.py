"""Figures from run records (never from anything else), saved as PNG and PDF.

Each figure is drawn for one dataset and protocol, names both and the number of seeds in its
title, and shows the mean over seeds with the standard deviation as error bars.

- ``training-fraction``: test MRR against the training fraction (``harness grid training-fraction``).
- ``embedding-size``: test MRR against the embedding size (``harness grid embedding-size``).
- ``epoch-time``: training time per epoch per model, a bar chart (``harness run`` records).
- ``runtime``: training time per epoch against the number of training events, log-log, with
  the least-squares slope of each model (``harness grid data-size``).
- ``return-time``: return-time MAE per bin of the true gap (``harness run --protocol sessions``).
- ``thrnn-alpha``: THRNN's MAE per gap bin for each loss exponent alpha (THRNN's Figure 3, from
  ``harness grid thrnn-alpha``), with every other return-time model's runs on the same data
  (the Hawkes fits: Figure 4) as dashed lines and the number of test gaps per bin as bars; the
  THRNN authors' buckets when the records have them (``--preset thrnn``).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.errors import UsageError

__all__ = ["KINDS", "plot_all"]

_HINTS = {
    "training-fraction": "harness grid training-fraction --models jodie,popularity",
    "embedding-size": "harness grid embedding-size --models jodie",
    "epoch-time": "harness run --models jodie,popularity",
    "runtime": "harness grid data-size --models jodie",
    "return-time": "harness run --protocol sessions --models hawkes",
    "thrnn-alpha": "harness grid thrnn-alpha --dataset DATA",
}
_MARKERS = "osD^vP*X"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({
        "figure.figsize": (6.4, 4.2), "figure.dpi": 100, "savefig.dpi": 200,
        "font.size": 10, "axes.titlesize": 10.5, "axes.labelsize": 10, "legend.fontsize": 9,
        "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
        "grid.alpha": 0.3, "pdf.fonttype": 42, "ps.fonttype": 42, "savefig.bbox": "tight",
    })
    return plt


def _label(record: dict[str, Any], drop: str | None = None) -> str:
    changed = {k: v for k, v in (record.get("params_changed") or {}).items() if k != drop}
    if not changed:
        return record["model"]
    return f"{record['model']} ({', '.join(f'{k}={v}' for k, v in sorted(changed.items()))})"


def _grid(record: dict[str, Any]) -> str | None:
    tuning = record.get("tuning") or {}
    return tuning.get("grid") if tuning.get("kind") == "grid" else None


def _latest(records: list[dict[str, Any]], key: Callable[[dict[str, Any]], tuple]) -> list[dict[str, Any]]:
    """The latest record for each key (a rerun or a retried point replaces the older one)."""
    out: dict[tuple, dict[str, Any]] = {}
    for record in sorted(records, key=lambda r: r["run_id"]):
        out[key(record)] = record
    return list(out.values())


def _stats(values: list[float]) -> tuple[float, float]:
    import numpy as np

    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def _by_x(points: dict[Any, list[float]]) -> tuple[list[Any], list[float], list[float], list[int]]:
    """Sorted x values with the mean, standard deviation and count of the values at each."""
    xs = sorted(points)
    stats = [_stats(points[x]) for x in xs]
    return xs, [m for m, _ in stats], [sd for _, sd in stats], [len(points[x]) for x in xs]


def _seeds_text(counts: list[int]) -> str:
    if not counts:
        return "0 seeds"
    lo, hi = min(counts), max(counts)
    if hi == 1:
        return "1 seed"
    span = f"{hi}" if lo == hi else f"{lo}–{hi}"
    return f"{span} seeds (mean ± std)"


def _title(what: str, dataset: str, protocol: str, seeds: list[int], extra: str = "") -> str:
    head = f"{what}\n{dataset} · {protocol} protocol · {_seeds_text(seeds)}"
    return head + (f" · {extra}" if extra else "")


def _colors(labels: list[str]) -> dict[str, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {label: cmap(i % 10) for i, label in enumerate(sorted(labels))}


def _by_dataset(records: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        groups[(record["dataset"]["name"], record["protocol"].get("name", "?"))].append(record)
    return groups


def _main_metric(protocol: str) -> str:
    return {"streaming": "mrr", "state": "auc", "sessions": "recall@20"}.get(protocol, "mrr")


def _epoch_seconds(record: dict[str, Any]) -> tuple[float, bool] | None:
    """Mean training seconds per epoch, and whether the model trains in epochs (otherwise its
    whole one-pass fit is taken as its one epoch)."""
    samples = (record.get("timing") or {}).get("samples", {}).get("epoch_fit_seconds") or []
    if samples:
        return sum(samples) / len(samples), True
    fit = (record.get("timing") or {}).get("fit_seconds")
    return (float(fit), False) if isinstance(fit, (int, float)) else None


# -- the figures -----------------------------------------------------------------------------


def _curve(records: list[dict[str, Any]], grid: str, xlabel: str, what: str, log2: bool) -> list:
    plt = _pyplot()
    figures = []
    chosen = [r for r in records if _grid(r) == grid]
    for (dataset, protocol), group in sorted(_by_dataset(chosen).items()):
        metric = _main_metric(protocol)
        axis = group[0]["tuning"].get("axis")
        def point(r: dict[str, Any], a: Any = axis) -> tuple:
            return (_label(r, a), json.dumps(r["tuning"]["value"]), r["seed"])

        group = _latest(group, point)
        series: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
        for r in group:
            value = r["metrics"].get("test", {}).get(metric)
            if isinstance(value, (int, float)) and math.isfinite(value):
                series[_label(r, axis)][float(r["tuning"]["value"])].append(float(value))
        if not series:
            continue
        fig, ax = plt.subplots()
        colors = _colors(list(series))
        seeds = []
        for i, (label, points) in enumerate(sorted(series.items())):
            xs, means, stds, counts = _by_x(points)
            seeds += counts
            shown = [100 * x for x in xs] if grid == "training-fraction" else xs
            ax.errorbar(shown, means, yerr=stds, label=label,
                        color=colors[label], marker=_MARKERS[i % len(_MARKERS)], capsize=3, lw=1.6,
                        ms=5)
        if log2:
            ax.set_xscale("log", base=2)
            ticks = sorted({x for p in series.values() for x in p})
            ax.set_xticks(ticks)
            ax.set_xticklabels([f"{t:g}" for t in ticks])
            ax.minorticks_off()
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"test {metric.upper() if metric == 'mrr' else metric}")
        extra = "valid, test: next 10% each" if grid == "training-fraction" else ""
        ax.set_title(_title(what, dataset, protocol, seeds, extra))
        ax.legend(frameon=False)
        figures.append((f"{grid}-{dataset}-{protocol}", fig))
    return figures


def _training_fraction(records: list[dict[str, Any]]) -> list:
    return _curve(records, "training-fraction", "training data (% of events)",
                  "MRR against the training fraction", log2=False)


def _embedding_size(records: list[dict[str, Any]]) -> list:
    return _curve(records, "embedding-size", "embedding size", "MRR against the embedding size",
                  log2=True)


def _epoch_time(records: list[dict[str, Any]]) -> list:
    plt = _pyplot()
    figures = []
    plain = [r for r in records if not r.get("tuning")]
    for (dataset, protocol), group in sorted(_by_dataset(plain).items()):
        group = _latest(group, lambda r: (_label(r), r["seed"]))
        times: dict[str, list[float]] = defaultdict(list)
        epochs: dict[str, bool] = {}
        for r in group:
            got = _epoch_seconds(r)
            if got is not None:
                times[_label(r)].append(got[0])
                epochs[_label(r)] = got[1]
        if not times:
            continue
        labels = sorted(times, key=lambda k: _stats(times[k])[0])
        stats = [_stats(times[k]) for k in labels]
        fig, ax = plt.subplots(figsize=(max(4.8, 1.0 + 0.9 * len(labels)), 4.2))
        colors = _colors(labels)
        bars = ax.bar(range(len(labels)), [m for m, _ in stats], yerr=[s for _, s in stats],
                      color=[colors[k] for k in labels], capsize=3, edgecolor="black", lw=0.6)
        for bar, label in zip(bars, labels):
            if not epochs[label]:
                bar.set_hatch("//")
        for x, (m, _) in enumerate(stats):
            ax.annotate(_seconds(m), (x, m), textcoords="offset points", xytext=(0, 3),
                        ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=20 if len(labels) > 4 else 0, ha="right"
                           if len(labels) > 4 else "center")
        positive = [m for m, _ in stats if m > 0]
        if positive and max(positive) / min(positive) > 100:
            ax.set_yscale("log")
        ax.set_ylabel("training time per epoch (s)")
        ax.grid(axis="x", visible=False)
        if not all(epochs.values()):
            from matplotlib.patches import Patch

            ax.legend(handles=[Patch(facecolor="white", edgecolor="black", hatch="//",
                                     label="no epochs: time of the one-pass fit")], frameon=False)
        ax.set_title(_title("Training time per epoch", dataset, protocol,
                            [len(times[k]) for k in labels]))
        ax.set_ylim(top=ax.get_ylim()[1] * (1.6 if ax.get_yscale() == "log" else 1.08))
        figures.append((f"epoch-time-{dataset}-{protocol}", fig))
    return figures


def _seconds(value: float) -> str:
    if value >= 100:
        return f"{value:.0f} s"
    if value >= 1:
        return f"{value:.1f} s"
    if value >= 1e-3:
        return f"{1e3 * value:.0f} ms"
    return f"{1e6 * value:.0f} µs"


def _runtime(records: list[dict[str, Any]]) -> list:
    import numpy as np

    plt = _pyplot()
    figures = []
    chosen = [r for r in records if _grid(r) == "data-size"]
    for (dataset, protocol), group in sorted(_by_dataset(chosen).items()):
        group = _latest(group, lambda r: (_label(r), json.dumps(r["tuning"]["value"]), r["seed"]))
        series: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
        for r in group:
            got = _epoch_seconds(r)
            events = (r.get("timing") or {}).get("train_events")
            if got is not None and events and got[0] > 0:
                series[_label(r)][int(events)].append(got[0])
        if not series:
            continue
        fig, ax = plt.subplots()
        colors = _colors(list(series))
        seeds = []
        for i, (label, points) in enumerate(sorted(series.items())):
            xs, mean_list, stds, counts = _by_x(points)
            seeds += counts
            means = np.array(mean_list)
            text = label
            if len(xs) >= 2:
                slope, intercept = np.polyfit(np.log(xs), np.log(means), 1)
                grid_x = np.geomspace(xs[0], xs[-1], 50)
                ax.plot(grid_x, np.exp(intercept) * grid_x ** slope, color=colors[label], lw=1,
                        ls="--", alpha=0.8)
                text = f"{label} (slope {slope:.2f})"
            ax.errorbar(xs, means, yerr=stds, color=colors[label], ls="none",
                        marker=_MARKERS[i % len(_MARKERS)], capsize=3, ms=5, label=text)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training events")
        ax.set_ylabel("training time per epoch (s)")
        ax.set_title(_title("Runtime against the number of events", dataset, protocol, seeds,
                            "dashed: least-squares fit in log-log"))
        ax.legend(frameon=False)
        figures.append((f"runtime-{dataset}-{protocol}", fig))
    return figures


def _return_time(records: list[dict[str, Any]]) -> list:
    import numpy as np

    plt = _pyplot()
    figures = []
    chosen = [r for r in records if not r.get("tuning")
              and (r["metrics"].get("test") or {}).get("mae_by_gap_hours")]
    for (dataset, protocol), group in sorted(_by_dataset(chosen).items()):
        group = _latest(group, lambda r: (_label(r), r["seed"]))
        per: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for r in group:
            for key, cell in r["metrics"]["test"]["mae_by_gap_hours"].items():
                per[_label(r)][key].append(float(cell["mae"]))
        bins = sorted({b for p in per.values() for b in p}, key=_bin_low)
        labels = sorted(per)
        colors = _colors(labels)
        fig, ax = plt.subplots(figsize=(max(6.4, 0.9 * len(bins) + 1.5), 4.2))
        width = 0.8 / len(labels)
        seeds = []
        for i, label in enumerate(labels):
            stats = [_stats(per[label][b]) if per[label].get(b) else (np.nan, 0.0) for b in bins]
            seeds += [len(per[label][b]) for b in bins if per[label].get(b)]
            xs = np.arange(len(bins)) + (i - (len(labels) - 1) / 2) * width
            ax.bar(xs, [m for m, _ in stats], width, yerr=[s for _, s in stats], label=label,
                   color=colors[label], capsize=2, edgecolor="black", lw=0.5)
        ax.set_xticks(range(len(bins)))
        ax.set_xticklabels([_bin_text(b) for b in bins])
        ax.set_xlabel("true time to the next session (hours)")
        ax.set_ylabel("MAE (hours)")
        ax.grid(axis="x", visible=False)
        ax.set_title(_title("Return-time MAE per gap", dataset, protocol, seeds))
        ax.legend(frameon=False)
        figures.append((f"return-time-{dataset}-{protocol}", fig))
    return figures


def _thrnn_alpha(records: list[dict[str, Any]]) -> list:

    plt = _pyplot()
    figures = []
    def bins_of(r: dict[str, Any]) -> dict[str, Any]:
        # the THRNN authors' buckets (start-to-start gaps) when the run has them (--preset thrnn)
        test = r["metrics"].get("test") or {}
        return test.get("mae_thrnn_by_gap_hours") or test.get("mae_by_gap_hours") or {}

    has_bins = [r for r in records if bins_of(r)]
    chosen = [r for r in has_bins if _grid(r) == "thrnn-alpha"]
    for (dataset, protocol), group in sorted(_by_dataset(chosen).items()):
        group = _latest(group, lambda r: (_label(r, "alpha"), json.dumps(r["tuning"]["value"]),
                                          r["seed"]))
        others = _latest([r for r in has_bins if not r.get("tuning")
                          and (r["dataset"]["name"], r["protocol"].get("name")) == (dataset, protocol)],
                         lambda r: (_label(r), r["seed"]))
        series: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        counts: dict[str, int] = {}
        for r in group:
            name = f"{_label(r, 'alpha')} α={r['tuning']['value']}"
            for key, cell in bins_of(r).items():
                series[name][key].append(float(cell["mae"]))
                counts[key] = int(cell["count"])
        references: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for r in others:
            for key, cell in bins_of(r).items():
                references[_label(r)][key].append(float(cell["mae"]))
        bins = sorted({b for p in (*series.values(), *references.values()) for b in p}, key=_bin_low)
        fig, ax = plt.subplots(figsize=(max(6.4, 0.8 * len(bins) + 2.0), 4.4))
        twin = ax.twinx()
        twin.bar(range(len(bins)), [counts.get(b, 0) for b in bins], color="0.85", zorder=0,
                 label="test gaps")
        twin.set_ylabel("test gaps per bin")
        ax.set_zorder(twin.get_zorder() + 1)
        ax.patch.set_visible(False)
        seeds: list[int] = []
        colors = _colors(list(series) + list(references))
        for style, table in (("-", series), ("--", references)):
            for i, (name, per_bin) in enumerate(sorted(table.items())):
                xs = [k for k, b in enumerate(bins) if per_bin.get(b)]
                stats = [_stats(per_bin[bins[k]]) for k in xs]
                seeds += [len(per_bin[bins[k]]) for k in xs]
                ax.errorbar(xs, [m for m, _ in stats], yerr=[sd for _, sd in stats], ls=style,
                            marker=_MARKERS[i % len(_MARKERS)], color=colors[name], capsize=2,
                            label=name)
        ax.set_xticks(range(len(bins)))
        ax.set_xticklabels([_bin_text(b) for b in bins])
        ax.set_xlabel("true time to the next session (hours)")
        ax.set_ylabel("MAE (hours)")
        ax.set_title(_title("Return-time MAE per gap and THRNN's alpha (THRNN Figures 3 and 4)",
                            dataset, protocol, seeds))
        ax.legend(frameon=False, fontsize=8)
        figures.append((f"thrnn-alpha-{dataset}-{protocol}", fig))
    return figures


def _bin_low(key: str) -> float:
    return float(key.strip("[)").split(",")[0])


def _bin_text(key: str) -> str:
    lo, hi = (part.strip() for part in key.strip("[)").split(","))
    return f"≥ {lo}" if hi == "inf" else f"{lo}–{hi}"


KINDS: dict[str, Callable[[list[dict[str, Any]]], list]] = {
    "training-fraction": _training_fraction,
    "embedding-size": _embedding_size,
    "epoch-time": _epoch_time,
    "runtime": _runtime,
    "return-time": _return_time,
    "thrnn-alpha": _thrnn_alpha,
}


def plot_all(
    records: list[dict[str, Any]],
    out: str | Path,
    *,
    kinds: list[str] | None = None,
    dataset: str | None = None,
) -> list[Path]:
    """Draw every figure of ``kinds`` (default: all that the records allow) into ``out`` as PNG
    and PDF; returns the paths written. A kind asked for by name with no records is an error
    that says which command makes them."""
    for kind in kinds or []:
        if kind not in KINDS:
            from harness.errors import did_you_mean

            raise UsageError(did_you_mean(kind, list(KINDS), "figure kind"))
    ok = [r for r in records if r.get("status") == "ok"
          and (dataset is None or r["dataset"]["name"] == dataset)]
    plt = _pyplot()
    out = Path(out)
    paths: list[Path] = []
    for kind in kinds or list(KINDS):
        figures = KINDS[kind](ok)
        if not figures and kinds:
            raise UsageError(f"no run records for the {kind} figure" +
                             (f" on dataset {dataset!r}" if dataset else "") +
                             f"; make them with `{_HINTS[kind]}`")
        for stem, fig in figures:
            out.mkdir(parents=True, exist_ok=True)
            safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in stem)
            for suffix in (".png", ".pdf"):
                path = out / (safe + suffix)
                fig.savefig(path, metadata={"Title": fig.axes[0].get_title()} if suffix == ".pdf"
                            else None)
                paths.append(path)
            plt.close(fig)
    if not paths:
        raise UsageError("no run records that a figure can use" +
                         (f" on dataset {dataset!r}" if dataset else "") + "; make some with `" +
                         "` or `".join(_HINTS.values()) + "`")
    return paths
