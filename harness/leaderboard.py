"""Leaderboards generated from run records: mean ± std over seeds, best per column marked."""

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
    "sessions": ["recall@5", "recall@10", "recall@20", "mrr@5", "mrr@10", "mrr@20", "mae"],
}
_LOWER_IS_BETTER = {"mae", "fit s/epoch", "eval s"}
_HEADERS = {"mae": "mae (h)"}  # column headers with their units


def _label(record: dict[str, Any]) -> str:
    changed = dict(record.get("params_changed") or {})
    if record.get("epochs_requested") is not None and record.get("epochs"):
        changed["epochs"] = record["epochs_requested"]  # a different training budget
    if not changed:
        return record["model"]
    inside = ", ".join(f"{k}={v}" for k, v in sorted(changed.items()))
    return f"{record['model']} ({inside})"


def _group_key(record: dict[str, Any]) -> tuple:
    protocol = record["protocol"]
    return (_dataset_key(record), protocol.get("name"), protocol.get("tie_policy"),
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
        row: dict[str, Any] = {"model": key[3], "seeds": len(ok), "status": _status(runs)}
        if ok and not all(audited(r) for r in ok):
            row["status"] += " (unaudited)"
        for column in _COLUMNS.get(key[1], []):
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


def leaderboard(
    records: list[dict[str, Any]],
    *,
    dataset: str | None = None,
    protocol: str | None = None,
    fmt: str = "github",
) -> str:
    """Tables, one per (dataset, protocol, tie policy), sorted by the protocol's main metric."""
    from tabulate import tabulate

    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, but got {fmt!r}")
    out = []
    for (ds, proto, ties), rows in sorted(leaderboard_rows(records, dataset, protocol).items(),
                                          key=lambda kv: tuple(str(x) for x in kv[0])):
        columns = [c for c in [*_COLUMNS.get(proto, []), "fit s/epoch", "eval s"]
                   if any(c in r for r in rows)]
        main = columns[0] if columns else None
        sign = 1 if main in _LOWER_IS_BETTER else -1
        rows.sort(key=lambda r: sign * np.mean(r[main]) if main in r else math.inf)
        trusted = [r for r in rows if r["status"] == "ok"]  # unaudited numbers are never best
        best = {c: (min if c in _LOWER_IS_BETTER else max)(np.mean(r[c]) for r in trusted if c in r)
                for c in columns if any(c in r for r in trusted)}
        table = []
        for r in rows:
            line = [r["model"]]
            for c in columns:
                if c not in r:
                    line.append("—" if r["status"] == "ok" else r["status"])
                    continue
                digits = 1 if c in ("fit s/epoch", "eval s") else 4
                text = _cell(r[c], digits)
                if r["status"] == "ok" and np.mean(r[c]) == best.get(c) and len(rows) > 1:
                    text = {"github": f"**{text}**", "latex": f"\\textbf{{{text}}}"}.get(fmt, text + " *")
                line.append(text)
            line += [r["seeds"], r["status"]]
            table.append(line)
        headers = ["model", *(_HEADERS.get(c, c) for c in columns), "seeds", "status"]
        title = f"{ds} · protocol {proto} · ties {ties} · test split"
        body = tabulate(table, headers=headers, tablefmt={"latex": "latex_raw"}.get(fmt, fmt),
                        disable_numparse=True,
                        colalign=["left", *["right"] * (len(columns) + 1), "left"])
        out.append(f"{title}\n\n{body}" if fmt != "latex" else f"% {title}\n{body}")
    return "\n\n".join(out) if out else "no run records match"
