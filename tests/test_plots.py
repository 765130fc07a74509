"""harness plot: figures drawn from run records, checked against values computed by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harness.cli import main
from harness.errors import UsageError
from harness.plots import KINDS, plot_all
from harness.records import write_record


def record(model, seed, *, run_id, grid=None, value=None, mrr=0.5, protocol="streaming",
           epoch_seconds=(1.0,), train_events=1000, gaps=None, params_changed=None):
    out = {
        "schema_version": 1, "run_id": run_id, "status": "ok", "model": model, "params": {},
        "params_changed": params_changed or {}, "dataset": {"name": "toyset", "events": 100},
        "protocol": {"name": protocol, "train": 0.8}, "seed": seed, "epochs": [],
        "metrics": {"valid": {}, "test": {"mrr": mrr}},
        "timing": {"fit_seconds": sum(epoch_seconds), "train_events": train_events,
                   "samples": {"epoch_fit_seconds": list(epoch_seconds)}},
        "environment": {},
    }
    if gaps is not None:
        out["metrics"]["test"]["mae_by_gap_hours"] = gaps
    if grid is not None:
        out["tuning"] = {"kind": "grid", "grid": grid, "value": value, "study": "s", "trial": 0,
                         "axis": {"training-fraction": "train_fraction", "thrnn-alpha": "alpha",
                                  "embedding-size": "embedding_size"}.get(grid, "data_fraction")}
    return out


def _figures(kind, records):
    import matplotlib.pyplot as plt

    figures = KINDS[kind]([r for r in records if r["status"] == "ok"])
    out = [(stem, fig.axes[0].get_title(), fig.axes[0]) for stem, fig in figures]
    for _, fig in figures:
        plt.close(fig)
    return out


def test_training_fraction_curve_is_mean_and_std_over_seeds():
    records = [record("jodie", s, run_id=f"a{s}{x}", grid="training-fraction", value=x, mrr=m)
               for x, ms in ((0.1, (0.2, 0.4, 0.3)), (0.5, (0.6, 0.6, 0.9))) for s, m in enumerate(ms)]
    records.append(record("popularity", 0, run_id="b", grid="training-fraction", value=0.1, mrr=0.1))
    ((stem, title, ax),) = _figures("training-fraction", records)
    assert stem == "training-fraction-toyset-streaming"
    assert "toyset" in title and "streaming protocol" in title and "1–3 seeds" in title
    lines = {c.get_label(): c.lines[0] for c in ax.containers}
    np.testing.assert_allclose(np.asarray(lines["jodie"].get_xdata(), float), [10, 50])
    np.testing.assert_allclose(np.asarray(lines["jodie"].get_ydata(), float), [0.3, 0.7])
    # error bars: std over seeds with ddof=1
    bars = {c.get_label(): c for c in ax.containers}["jodie"].lines[2][0].get_segments()
    spans = sorted(abs(seg[1][1] - seg[0][1]) / 2 for seg in bars)
    np.testing.assert_allclose(spans, sorted([np.std([0.2, 0.4, 0.3], ddof=1),
                                              np.std([0.6, 0.6, 0.9], ddof=1)]))


def test_a_rerun_point_replaces_the_older_record():
    records = [record("jodie", 0, run_id="20200101", grid="training-fraction", value=0.2, mrr=0.1),
               record("jodie", 0, run_id="20210101", grid="training-fraction", value=0.2, mrr=0.7)]
    ((_, title, ax),) = _figures("training-fraction", records)
    assert "1 seed" in title
    assert list(ax.get_lines()[0].get_ydata()) == [0.7]


def test_runtime_figure_fits_the_log_log_slope():
    records = [record("jodie", 0, run_id=f"r{n}", grid="data-size", value=n / 8000,
                      train_events=n, epoch_seconds=(2e-4 * n ** 1.5,)) for n in (500, 1000, 2000, 8000)]
    records += [record("popularity", 0, run_id=f"p{n}", grid="data-size", value=n / 8000,
                       train_events=n, epoch_seconds=(3e-3 * n,)) for n in (500, 1000, 2000, 8000)]
    ((_, title, ax),) = _figures("runtime", records)
    labels = sorted(t.get_text() for t in ax.get_legend().get_texts())
    assert labels == ["jodie (slope 1.50)", "popularity (slope 1.00)"]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert "Runtime against the number of events" in title


def test_epoch_time_bars_and_return_time_bins():
    records = [record("jodie", s, run_id=f"j{s}", epoch_seconds=(10.0 + s, 12.0 + s)) for s in (0, 1)]
    records.append(record("popularity", 0, run_id="p", epoch_seconds=()))
    records[-1]["timing"]["fit_seconds"] = 0.5
    ((_, title, ax),) = _figures("epoch-time", records)
    heights = [p.get_height() for p in ax.patches]
    assert heights == pytest.approx([0.5, 11.5])  # sorted by time; jodie: mean of 11 and 12
    assert "1–2 seeds" in title
    gaps = {"[0, 0.5)": {"mae": 0.2, "count": 3}, "[7.5, inf)": {"mae": 4.0, "count": 1}}
    records = [record("hawkes", 0, run_id="h", protocol="sessions", gaps=gaps)]
    ((stem, title, ax),) = _figures("return-time", records)
    assert stem == "return-time-toyset-sessions" and "sessions protocol" in title
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0–0.5", "≥ 7.5"]
    assert [p.get_height() for p in ax.patches] == pytest.approx([0.2, 4.0])


def test_thrnn_alpha_lines_per_alpha_with_hawkes_references():
    def gaps(a, b):
        return {"[0, 0.5)": {"mae": a, "count": 30}, "[1.5, 2.5)": {"mae": b, "count": 5}}

    records = [record("thrnn", s, run_id=f"t{s}{x}", protocol="sessions", grid="thrnn-alpha",
                      value=x, gaps=gaps(m, 2 * m), params_changed={"alpha": x})
               for x, ms in ((0.3, (0.1, 0.3)), (1.0, (0.5, 0.5))) for s, m in enumerate(ms)]
    records.append(record("hawkes", 0, run_id="h", protocol="sessions", gaps=gaps(0.7, 0.9)))
    records.append(record("hawkes", 0, run_id="h2", protocol="sessions", gaps=gaps(0.8, 1.1),
                          params_changed={"history": "all"}))
    ((stem, title, ax),) = _figures("thrnn-alpha", records)
    assert stem == "thrnn-alpha-toyset-sessions" and "Figures 3 and 4" in title
    lines = {c.get_label(): c.lines[0] for c in ax.containers if c.get_label() != "test gaps"}
    assert sorted(lines) == ["hawkes", "hawkes (history=all)", "thrnn α=0.3", "thrnn α=1.0"]
    # the mean over seeds
    np.testing.assert_allclose(np.asarray(lines["thrnn α=0.3"].get_ydata(), float), [0.2, 0.4])
    np.testing.assert_allclose(np.asarray(lines["hawkes (history=all)"].get_ydata(), float), [0.8, 1.1])
    assert lines["hawkes"].get_linestyle() == "--" and lines["thrnn α=1.0"].get_linestyle() == "-"


def test_plot_command_writes_png_and_pdf(tmp_path, capsys):
    for s in (0, 1, 2):
        for x in (0.1, 0.4, 0.8):
            write_record(record("jodie", s, run_id=f"2020-{s}-{x}", grid="training-fraction", value=x,
                                mrr=x / 2 + 0.01 * s), tmp_path)
    assert main(["plot", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out.split()
    assert sorted(Path(p).name for p in out) == ["training-fraction-toyset-streaming.pdf",
                                                 "training-fraction-toyset-streaming.png"]
    png = tmp_path / "figures" / "training-fraction-toyset-streaming.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    pdf = png.with_suffix(".pdf").read_bytes()
    assert pdf[:5] == b"%PDF-" and b"/Title" in pdf and len(pdf) > 5_000


def test_plot_says_which_command_makes_missing_records(tmp_path, capsys):
    assert main(["plot", "runtime", "--results", str(tmp_path)]) == 2
    assert "harness grid data-size" in capsys.readouterr().err
    assert main(["plot", "runtme", "--results", str(tmp_path)]) == 2
    assert "did you mean 'runtime'" in capsys.readouterr().err
    with pytest.raises(UsageError, match="no run records that a figure can use"):
        plot_all([], tmp_path)
