"""``harness datasets list|info|download|import``: added to the main parser by
:func:`add_commands`. Each handler takes the parsed arguments and returns an exit status."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

__all__ = ["add_commands", "cmd_download", "cmd_import", "cmd_info", "cmd_list"]


def add_commands(subparsers: Any) -> None:
    """Add the ``datasets`` command to an ``argparse`` sub-parsers object.

    Every leaf parser gets ``handler`` (a function of the parsed args returning an exit code).
    """
    p = subparsers.add_parser("datasets", help="list, inspect, download and import datasets")
    sub = p.add_subparsers(dest="datasets_command", metavar="ACTION", required=True)

    q = sub.add_parser("list", help="registered datasets and whether they are available here")
    q.set_defaults(handler=cmd_list)

    q = sub.add_parser("info", help="a dataset's source, licence, citation and Table 5 statistics")
    q.add_argument("name", help="dataset name or path of a data file")
    q.add_argument("--no-stats", action="store_true", help="do not load the data for statistics")
    q.set_defaults(handler=cmd_info)

    q = sub.add_parser("download", help="download a dataset into the data directory")
    q.add_argument("name")
    q.add_argument("--force", action="store_true", help="download again even if present")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(handler=cmd_download)

    q = sub.add_parser("import", help="register a local copy of a data file under a name")
    q.add_argument("path")
    q.add_argument("--name", required=True, help="a manifest name (e.g. wikipedia) or a new name")
    q.add_argument("--format", choices=["jodie", "lastfm-1k", "reddit-subreddits"],
                   help="file format (default: the manifest's, else detected)")
    q.set_defaults(handler=cmd_import)


def cmd_list(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from harness.data._common import data_home
    from harness.data.datasets import local_source, manifest_names, manifests
    from harness.registry import default_registry

    rows = []
    for entry in default_registry("datasets").entries():
        rows.append([entry.name, "generated", "available", "", _description(entry)])
    known = manifests()
    for name in manifest_names():
        m = known.get(name)
        local = local_source(name)
        status = "downloaded" if local else (
            "manual download" if m and m.manual_download else "not downloaded")
        if local and local.get("origin", "").startswith("import:"):
            status = "imported"
        size = _file_size(local["path"]) if local else m.size if m else ""
        rows.append([name, m.format if m else "imported", status, size,
                     m.title if m else "imported file"])
    print(tabulate(rows, headers=["name", "kind", "status", "size", "description"]))
    print(f"\ndata directory: {data_home()}  (set HARNESS_DATA to move it)")
    return 0


def _description(entry: Any) -> str:
    """A registered dataset's ``description`` (its ``module:Class`` when it cannot be imported)."""
    try:
        return str(entry.load().description) or entry.target
    except Exception:
        return entry.target


def _file_size(path: str) -> str:
    size = float(os.path.getsize(path))
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:,.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError


def cmd_info(args: argparse.Namespace) -> int:
    from harness.data.datasets import dataset_stats, local_source, manifests, open_dataset

    manifest = manifests().get(args.name)
    local = local_source(args.name)
    if manifest is not None:
        print(f"{manifest.name}: {manifest.title}")
        if manifest.description:
            print(f"  {manifest.description}")
        print(f"  source:   {manifest.url}")
        if manifest.homepage and manifest.homepage != manifest.url:
            print(f"  homepage: {manifest.homepage}")
        # a local copy (an import, a subset) is described by itself, not by the manifest
        size = f"{_file_size(local['path'])} here" if local else manifest.size
        print(f"  format:   {manifest.format}   size: {size}   "
              f"session gap: {manifest.session_gap:g} s")
        print(f"  sha256:   {manifest.sha256 or '(recorded on first download)'}")
        print(f"  licence:  {manifest.licence}")
        print("  citation:")
        for line in manifest.citation.strip().splitlines():
            print(f"    {line}")
    if local is not None:
        origin = local.get("origin", "")
        origin = f"imported from {origin[7:]}" if origin.startswith("import:") else origin
        print(f"  local copy: {local['path']}" + (f" ({origin})" if origin else ""))
    if args.no_stats:
        return 0
    if manifest is not None and local is None:
        published = ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}"
                              for k, v in manifest.published.items())
        print(f"  published: {published}")
        print(f"  not downloaded: run `harness datasets download {args.name}` for measured "
              "statistics")
        return 0
    dataset = open_dataset(args.name)
    stats = dataset_stats(dataset.load())
    from tabulate import tabulate

    row = [stats["users"], stats["items"], stats["events"], stats["state_changes"],
           f"{stats['repeat_fraction']:.1%}", stats["features"]]
    print(tabulate([[dataset.name, *row]], headers=["dataset", "users", "items", "events",
                                                    "state changes", "repeat", "features"]))
    print(f"sha256: {dataset.sha256()}")
    presets = getattr(dataset, "presets", None)
    if callable(presets):
        print("\npresets (--dataset NAME):")
        for name, description in presets().items():
            print(f"  {name:<22} {description}")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from harness.data.datasets import download_dataset

    path = download_dataset(args.name, progress=not args.quiet and sys.stderr.isatty(),
                            force=args.force)
    print(f"{args.name}: {path}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from harness.data.datasets import import_dataset

    path = import_dataset(args.path, args.name, format=args.format)
    print(f"{args.name}: imported {args.path} as {path}")
    return 0
