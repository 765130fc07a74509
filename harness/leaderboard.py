"""Leaderboards generated from run records: mean ± std over seeds, a 95% confidence interval
from the per-event outcomes (a bootstrap over users, :mod:`harness.stats`), and the best per
column in bold only when a paired test says it is better than every other row."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FORMATS", "audited", "leaderboard", "leaderboard_rows"]

FORMATS = ("github", "latex", "plain")
_COLUMNS = {
    "streaming": ["mrr", "recall@10", "mrr@10", "recall@1", "auc"],
    "state": ["auc"],
    "sessions": ["recall@5", "recall@10", "recall@20", "mrr@5", "mrr@10", "mrr@20", "mae_thrnn",
                 "mae"],
}
_LOWER_IS_BETTER = {"mae", "mae_thrnn", "fit s/epoch", "eval s"}
#: Column headers that differ from the metric's key (return times are in hours).
_HEADERS = {"mae": "MAE end-to-start (h)", "mae_thrnn": "MAE THRNN (h)"}
#: Protocols whose AUC is a by-product, not what they select on: too few positives to rank by.
_NOISY_AUC = {"streaming"}
#: Bootstrap resamples and their seed: fixed, so that a leaderboard is reproducible.
N_RESAMPLES, BOOTSTRAP_SEED = 2000, 0
_ALPHA = 0.05


def _label(record: dict[str, Any]) -> str:
    changed = dict(record.get("params_changed") or {})
    if record.get("epochs_requested") is not None and record.get("epochs"):
        changed["epochs"] = record["epochs_requested"]  # a different training budget
    if not changed:
        return record["model"]
    inside = ", ".join(f"{k}={v}" for k, v in sorted(changed.items()))
    return f"{record['model']} ({inside})"


def _protocol_label(protocol: dict[str, Any]) -> str:
    """The protocol's name, with its preset and refit when set: runs under a preset never share
    a table with the plain protocol's."""
    label = str(protocol.get("name"))
    if protocol.get("preset"):
        label += f" preset={protocol['preset']}"
    return label + (" refit" if protocol.get("refit") else "")


def _group_key(record: dict[str, Any]) -> tuple:
    protocol = record["protocol"]
    return (_dataset_key(record), _protocol_label(protocol), protocol.get("tie_policy"),
            _label(record), json.dumps(record.get("params"), sort_keys=True))


def _dataset_key(record: dict[str, Any]) -> str:
    """A dataset is its content: one file reached by two paths, or by a path and its registered
    name, is one dataset (records without a checksum fall back to the name)."""
    dataset = record["dataset"]
    return dataset.get("sha256") or dataset["name"]


def _dataset_names(records: list[dict[str, Any]]) -> dict[str, str]:
    """One name per dataset key: a registered name over a path, then the latest used."""
    names: dict[str, list[str]] = defaultdict(list)
    for record in sorted(records, key=lambda r: r["run_id"]):
        names[_dataset_key(record)].append(record["dataset"]["name"])
    return {key: max(reversed(found), key=lambda n: "/" not in n and not n.endswith(".csv"))
            for key, found in names.items()}


def _matches(record: dict[str, Any], dataset: str) -> bool:
    name = record["dataset"]["name"]
    return dataset in (name, Path(name).stem, record["dataset"].get("sha256"))


def leaderboard_rows(
    records: list[dict[str, Any]], dataset: str | None = None, protocol: str | None = None
) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    """Rows per (dataset, protocol, tie policy): the latest record per seed, aggregated."""
    records = [r for r in records if not r.get("tuning")]  # trials belong to their studies
    names = _dataset_names(records)
    if dataset:
        wanted = {_dataset_key(r) for r in records if _matches(r, dataset)}
        records = [r for r in records if _dataset_key(r) in wanted]
    latest: dict[tuple, dict[int, dict[str, Any]]] = defaultdict(dict)
    for record in sorted(records, key=lambda r: r["run_id"]):
        if protocol and record["protocol"].get("name") != protocol:
            continue
        latest[_group_key(record)][record["seed"]] = record
    tables: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for key, by_seed in latest.items():
        runs = list(by_seed.values())
        ok = [r for r in runs if r["status"] == "ok"]
        row: dict[str, Any] = {"model": key[3], "seeds": len(ok), "status": _status(runs),
                               "_runs": ok}
        if ok and not all(audited(r) for r in ok):
            row["status"] += " (unaudited)"
        for column in _COLUMNS.get(key[1].split()[0], []):
            values = [r["metrics"].get("test", {}).get(column) for r in ok]
            values = [v for v in values if v is not None]
            if values:
                row[column] = values
        fit = [np.mean(s) for r in ok if (s := r["timing"]["samples"]["epoch_fit_seconds"])]
        if fit:
            row["fit s/epoch"] = fit
        evals = [r["timing"]["eval_seconds"] for r in ok]
        if evals:
            row["eval s"] = evals
        tables[(names[key[0]], *key[1:3])].append(row)
    return dict(tables)


def audited(record: dict[str, Any]) -> bool:
    """Whether the run was audited (records from before audits existed, and runs with
    ``--audits 0``, were not)."""
    return (record.get("audit") or {}).get("audits_per_pass", 0) > 0


def _status(runs: list[dict[str, Any]]) -> str:
    bad = sorted({r["status"] for r in runs if r["status"] != "ok"})
    return "ok" if not bad else ", ".join(bad)


def _cell(values: list[float], digits: int) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def _outcomes(row: dict[str, Any], column: str) -> tuple[str, tuple[int, ...], list] | None:
    """The row's per-seed outcomes for ``column`` with what pairing needs (their events'
    fingerprint and the seed set), or None when some seed's record has none."""
    from harness.stats import Outcomes, has_outcomes, kind_of

    if not has_outcomes(column):
        return None
    got = [Outcomes.from_record(r, kind_of(column)) for r in row["_runs"]]
    runs = [o for o in got if o is not None]
    if not runs or len(runs) < len(got) or len({o.fingerprint for o in runs}) != 1:
        return None
    seeds = tuple(sorted(r["seed"] for r in row["_runs"]))
    return runs[0].fingerprint, seeds, runs


def _statistics(rows: list[dict[str, Any]], column: str, best: dict[str, Any] | None) -> None:
    """Set ``row["_ci"][column]`` and ``row["_p"][column]`` (paired test against ``best``; None
    when the two cannot be paired: no outcomes, other events or another seed set)."""
    from harness.stats import bootstrap, interval, paired_p

    keyed = {id(r): got for r in rows if column in r and (got := _outcomes(r, column))}
    by_events: dict[str, dict[int, list]] = defaultdict(dict)
    for key, (fingerprint, _, runs) in keyed.items():
        by_events[fingerprint][key] = runs
    reps: dict[int, np.ndarray] = {}
    for groups in by_events.values():
        reps.update(bootstrap(column, groups, n_resamples=N_RESAMPLES, seed=BOOTSTRAP_SEED))
    for r in rows:
        if id(r) in reps:
            r.setdefault("_ci", {})[column] = interval(reps[id(r)])
        paired = best is not None and id(r) in reps and id(best) in reps and r is not best and \
            keyed[id(r)][:2] == keyed[id(best)][:2]
        r.setdefault("_p", {})[column] = paired_p(reps[id(r)], reps[id(best)]) if paired else None


def _text(r: dict[str, Any], c: str, digits: int) -> str:
    text = _cell(r[c], digits)
    if c in r.get("_ci", {}):
        lo, hi = r["_ci"][c]
        text += f" [{lo:.{digits}f}, {hi:.{digits}f}]"
    if c == "auc":
        positives = [run["metrics"]["test"].get("auc_positives") for run in r["_runs"]]
        if positives and None not in positives:
            text += f" · {min(positives)} pos" if len(set(positives)) == 1 else \
                f" · {min(positives)}-{max(positives)} pos"
    return text


_MARKS = {"github": ("**{}**", "{} ≈", "{} ?"), "latex": ("\\textbf{{{}}}", "{} $\\approx$", "{} ?"),
          "plain": ("{} *", "{} ~", "{} ?")}


def leaderboard(
    records: list[dict[str, Any]],
    *,
    dataset: str | None = None,
    protocol: str | None = None,
    fmt: str = "github",
) -> str:
    """Tables, one per (dataset, protocol, tie policy), sorted by the protocol's main metric.

    A metric cell is ``mean [95% CI]`` (``mean ± std over seeds [CI]`` for several seeds); the
    CI is a percentile bootstrap over users of the test split's per-event outcomes (averaged
    over the row's seeds). The column's best is bold only when a paired bootstrap test finds it
    better than every other row (p < 0.05, same events and seeds); rows within noise of the
    best (the best itself included when its lead is not significant) are marked, and so are
    rows that cannot be paired with it (a record without outcomes, another seed set).
    """
    from tabulate import tabulate

    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, but got {fmt!r}")
    bold, tied, unknown = _MARKS[fmt]
    out = []
    for (ds, proto, ties), rows in sorted(leaderboard_rows(records, dataset, protocol).items(),
                                          key=lambda kv: tuple(str(x) for x in kv[0])):
        columns = [c for c in [*_COLUMNS.get(proto.split()[0], []), "fit s/epoch", "eval s"]
                   if any(c in r for r in rows)]
        main = columns[0] if columns else None
        sign = 1 if main in _LOWER_IS_BETTER else -1
        rows.sort(key=lambda r: sign * np.mean(r[main]) if main in r else math.inf)
        trusted = [r for r in rows if r["status"] == "ok"]  # unaudited numbers are never best
        best: dict[str, dict[str, Any]] = {}
        for c in columns:
            have = [r for r in trusted if c in r]
            if have:
                pick = min if c in _LOWER_IS_BETTER else max
                best[c] = pick(have, key=lambda r, c=c: float(np.mean(r[c])))  # type: ignore[misc]
        timed = {"fit s/epoch", "eval s"}
        for c in columns:
            if c not in timed:
                _statistics([r for r in rows if c in r], c, best.get(c))
        table = []
        for r in rows:
            line = [r["model"]]
            for c in columns:
                if c not in r:
                    line.append("—" if r["status"] == "ok" else r["status"])
                    continue
                digits = 1 if c in timed else 4
                text = _text(r, c, digits)
                if r["status"] == "ok" and c in best and len(rows) > 1:
                    text = _marked(text, r, c, best[c], trusted, timed, (bold, tied, unknown))
                line.append(text)
            line += [r["seeds"], r["status"]]
            table.append(line)
        headers = ["model", *[_header(c, proto) for c in columns], "seeds", "status"]
        title = f"{ds} · protocol {proto} · ties {ties} · test split"
        body = tabulate(table, headers=headers, tablefmt={"latex": "latex_raw"}.get(fmt, fmt),
                        disable_numparse=True,
                        colalign=["left", *["right"] * (len(columns) + 1), "left"])
        notes = _notes(proto, columns, (bold, tied, unknown))
        if fmt == "latex":
            out.append(f"% {title}\n{body}\n" + "\n".join(f"% {n}" for n in notes))
        else:
            out.append(f"{title}\n\n{body}\n\n" + "\n".join(notes))
    return "\n\n".join(out) if out else "no run records match"


def _header(column: str, protocol: str) -> str:
    return "auc (noisy)" if column == "auc" and protocol in _NOISY_AUC else _HEADERS.get(column, column)


def _marked(text: str, r: dict[str, Any], c: str, best: dict[str, Any], trusted: list[dict[str, Any]],
            timed: set[str], marks: tuple[str, str, str]) -> str:
    bold, tied, unknown = marks
    if c in timed:  # timings: no test, the fastest is bold as before
        return bold.format(text) if np.mean(r[c]) == np.mean(best[c]) else text
    others = [o for o in trusted if o is not best and c in o]
    if r is best:
        ps = [o["_p"].get(c) for o in others]
        if all(p is not None and p < _ALPHA for p in ps):
            return bold.format(text)
        return tied.format(text) if any(p is not None and p >= _ALPHA for p in ps) \
            else unknown.format(text)
    p = r["_p"].get(c)
    if p is None:
        return unknown.format(text)
    return tied.format(text) if p >= _ALPHA else text


def _notes(protocol: str, columns: list[str], marks: tuple[str, str, str]) -> list[str]:
    bold, tied, unknown = (m.format("x") for m in marks)
    notes = [
        f"[lo, hi]: 95% CI, percentile bootstrap over users ({N_RESAMPLES} resamples, seed "
        f"{BOOTSTRAP_SEED}) of the test events' outcomes; ± is the std over seeds.",
        f"{bold}: best of its column and better than every other row (paired bootstrap over the same "
        f"users, p < {_ALPHA}); {tied}: not significantly different from the column's best, the "
        f"best itself when its lead is not significant; {unknown}: cannot be paired with the best "
        "(no per-event outcomes in its records, or other events or seeds).",
    ]
    if "auc" in columns:
        notes.append(
            "auc (noisy): this protocol selects epochs on MRR and its test split holds few state "
            "changes (pos: positives); the state protocol (--protocol state) reports AUC."
            if protocol in _NOISY_AUC else "auc · N pos: AUC with the number of positive test events.")
    return notes
