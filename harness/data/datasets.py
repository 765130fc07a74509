"""The dataset registry: manifests, the local store of downloaded files, and :func:`open_dataset`.

Layout of the data home (``$HARNESS_DATA``, see :func:`harness.data.data_home`)::

    datasets/<name>/<file>        downloaded or imported source files
    datasets/<name>/source.json   where the file came from, its format and checksum
    checksums.json                checksums recorded on first download (manifests without one)
    cache/<sha256>/<format>-v1/   parsed arrays (.npy), keyed by the source's checksum
    hashes/                       remembered checksums of files (by path, size and mtime)
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shutil
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from harness.api import Dataset
from harness.data._common import DataError, atomic_write_bytes, data_home
from harness.data.cache import file_sha256, load_cached, remember_sha256, store_cached
from harness.errors import HarnessError, UsageError, did_you_mean
from harness.interactions import Interactions

__all__ = [
    "FORMATS",
    "FileDataset",
    "Manifest",
    "dataset_stats",
    "detect_format",
    "download_dataset",
    "import_dataset",
    "local_source",
    "manifest_names",
    "manifests",
    "open_dataset",
]

#: Session gaps (seconds) by format, as the THRNN paper uses them.
FORMATS = {"jodie": 3600.0, "lastfm-1k": 3600.0, "reddit-subreddits": 1800.0}


@dataclass(frozen=True)
class Manifest:
    """A registered dataset: where it comes from, what it is, how to cite it."""

    name: str
    title: str
    url: str
    filename: str
    format: str
    description: str = ""
    homepage: str = ""
    sha256: str = ""
    size: str = ""
    session_gap: float = 3600.0
    licence: str = ""
    citation: str = ""
    manual_download: bool = False
    published: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_toml(cls, text: str, origin: str) -> Manifest:
        try:
            raw = tomllib.loads(text)
            known = set(cls.__dataclass_fields__)
            unknown = set(raw) - known
            if unknown:
                raise ValueError(f"unknown keys {sorted(unknown)}")
            manifest = cls(**raw)
        except (tomllib.TOMLDecodeError, TypeError, ValueError) as exc:
            raise HarnessError(f"{origin}: invalid dataset manifest ({exc})") from None
        if manifest.format not in FORMATS:
            raise HarnessError(f"{origin}: format {manifest.format!r} is not one of "
                               f"{sorted(FORMATS)}")
        return manifest


_MANIFESTS: dict[str, Manifest] | None = None


def manifests() -> dict[str, Manifest]:
    """The manifests shipped with harness (``datasets/*.toml``), by name."""
    global _MANIFESTS
    if _MANIFESTS is None:
        found: dict[str, Manifest] = {}
        for entry in resources.files("harness.data").joinpath("manifests").iterdir():
            if entry.name.endswith(".toml"):
                m = Manifest.from_toml(entry.read_text(encoding="utf-8"), f"datasets/{entry.name}")
                found[m.name] = m
        _MANIFESTS = dict(sorted(found.items()))
    return _MANIFESTS


def manifest_names() -> list[str]:
    """Names of the shipped manifests and of datasets imported under a new name."""
    return sorted(set(manifests()) | set(_imported_names()))


def _store(name: str) -> Path:
    return data_home() / "datasets" / name


def _imported_names() -> list[str]:
    root = data_home() / "datasets"
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "source.json").is_file())


def local_source(name: str) -> dict[str, Any] | None:
    """The record of a downloaded or imported dataset (``path``, ``format``, ``sha256``), or None."""
    record_path = _store(name) / "source.json"
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return None
    path = _store(name) / record["filename"]
    if not path.is_file():
        return None
    record["path"] = str(path)
    return record


def _write_source(name: str, filename: str, fmt: str, sha256: str, origin: str) -> None:
    record = {"name": name, "filename": filename, "format": fmt, "sha256": sha256,
              "origin": origin, "stored": _dt.datetime.now(_dt.UTC).isoformat()}
    atomic_write_bytes(_store(name) / "source.json", json.dumps(record, indent=1).encode())


def _recorded_checksums() -> dict[str, Any]:
    try:
        return json.loads((data_home() / "checksums.json").read_text())
    except (OSError, ValueError):
        return {}


def _record_checksum(name: str, url: str, sha256: str) -> None:
    records = _recorded_checksums()
    records[name] = {"sha256": sha256, "url": url,
                     "recorded": _dt.datetime.now(_dt.UTC).isoformat()}
    atomic_write_bytes(data_home() / "checksums.json", json.dumps(records, indent=1).encode())


# -- formats ------------------------------------------------------------------------------------

def detect_format(path: Path) -> str:
    """``jodie``, ``lastfm-1k`` (.tsv, .tar.gz) or ``reddit-subreddits`` (by its header line)."""
    name = path.name.lower()
    if name.endswith((".tsv", ".tar.gz", ".tgz", ".tar")):
        return "lastfm-1k"
    try:
        with open(path, "rb") as fh:
            head = fh.readline(200).strip().lower()
    except OSError:
        return "jodie"
    if head.replace(b" ", b"") == b"username,subreddit,utc":
        return "reddit-subreddits"
    return "jodie"


def _parse(path: Path, fmt: str) -> Interactions:
    if fmt == "jodie":
        from harness.data.jodie import load_jodie_csv

        return load_jodie_csv(path)
    if fmt == "lastfm-1k":
        from harness.data.logs import load_lastfm_1k

        return load_lastfm_1k(path)
    if fmt == "reddit-subreddits":
        from harness.data.logs import load_reddit_subreddits

        return load_reddit_subreddits(path)
    raise UsageError(did_you_mean(fmt, list(FORMATS), "format"))


class FileDataset(Dataset):
    """A dataset read from one file, parsed once and then loaded from the binary cache."""

    description: ClassVar[str] = "a data file"

    def __init__(self, path: str | Path, *, format: str | None = None, name: str | None = None,
                 sha256: str | None = None, session_gap: float | None = None) -> None:
        self.path = Path(path)
        if format is not None and format not in FORMATS:
            raise UsageError(did_you_mean(format, list(FORMATS), "format"))
        self.format = format or detect_format(self.path)
        self.name = name or str(path)
        self._sha256 = sha256
        self.session_gap = float(session_gap if session_gap is not None else FORMATS[self.format])

    def sha256(self) -> str:
        """SHA-256 of the source file (remembered while the file is unchanged)."""
        return self._digest(remember=True)

    def _digest(self, *, remember: bool) -> str:
        if self._sha256 is None:
            if not self.path.is_file():
                from harness.data.jodie import read_source

                read_source(self.path)  # raises the one-line error
            self._sha256 = file_sha256(self.path, remember=remember)
        return self._sha256

    def load(self) -> Interactions:
        """The parsed stream, from the cache when this exact file was parsed before.

        Nothing is written to the data directory unless the file parses.
        """
        digest = self._digest(remember=False)
        cached = load_cached(digest, self.format, self.name)
        if cached is not None:
            return cached
        stream = _parse(self.path, self.format)
        if stream.name != self.name:
            from dataclasses import replace

            stream = replace(stream, name=self.name)
        store_cached(digest, self.format, stream)
        if self.path.is_file():
            remember_sha256(self.path, digest)
        return stream

    def __repr__(self) -> str:
        return f"FileDataset({str(self.path)!r}, format={self.format!r})"


def _looks_like_path(spec: str) -> bool:
    return (os.sep in spec or "/" in spec or spec.lower().endswith(
        (".csv", ".tsv", ".gz", ".tgz", ".tar")) or Path(spec).is_file())


def open_dataset(spec: str, *, progress: bool = True, format: str | None = None) -> Dataset:
    """Resolve ``spec``: a data file path, a registered dataset (entry point) or a manifest name.

    Files are JODIE CSVs unless their name or header says LastFM-1K (.tsv, .tar.gz) or Reddit
    subreddit interactions (header ``username,subreddit,utc``); ``format`` overrides. A manifest
    dataset must have been downloaded or imported first. Unknown names raise
    :class:`~harness.errors.UsageError` with close matches.
    """
    spec = str(spec)
    if _looks_like_path(spec):
        path = Path(spec).expanduser()
        if not path.is_file():
            from harness.data.jodie import read_source

            read_source(path)
        return FileDataset(path, format=format, name=spec)
    from harness.registry import default_registry

    registry = default_registry("datasets")
    if spec in registry:
        obj = registry.get(spec)
        dataset = obj() if isinstance(obj, type) else obj
        if not isinstance(dataset, Dataset):
            raise HarnessError(f"dataset plugin {spec!r} gave {type(dataset).__name__}, which is "
                               "not a harness.api.Dataset")
        dataset.name = spec
        return dataset
    known = manifests()
    record = local_source(spec)
    if record is not None:
        manifest = known.get(spec)
        gap = manifest.session_gap if manifest else None
        return FileDataset(record["path"], format=format or record["format"], name=spec,
                           sha256=record.get("sha256") or None, session_gap=gap)
    if spec in known:
        hint = (f"download it by hand from {known[spec].url}, then run `harness datasets import "
                f"PATH --name {spec}`" if known[spec].manual_download else
                f"run `harness datasets download {spec}` (or `harness datasets import PATH "
                f"--name {spec}` for a copy you have)")
        raise HarnessError(f"dataset {spec!r} is not downloaded yet; {hint}")
    names = sorted(set(registry.names()) | set(manifest_names()))
    raise UsageError(did_you_mean(spec, names, "dataset") +
                     "; or give the path of a JODIE CSV file")


# -- download and import ------------------------------------------------------------------------

def download_dataset(name: str, *, progress: bool = True, force: bool = False) -> Path:
    """Download a manifest's file into the data home, verify it, and return its path."""
    known = manifests()
    if name not in known:
        raise UsageError(did_you_mean(name, list(known), "downloadable dataset"))
    manifest = known[name]
    if manifest.manual_download:
        raise HarnessError(f"dataset {name!r} cannot be downloaded automatically: get "
                           f"{manifest.filename} from {manifest.url} (it needs an account), then "
                           f"run `harness datasets import PATH --name {name}`")
    record = local_source(name)
    if record is not None and not force:
        return Path(record["path"])
    recorded = _recorded_checksums().get(name, {}).get("sha256")
    expected = manifest.sha256 or recorded or None
    from harness.data.download import download_file

    dest = _store(name) / manifest.filename
    try:
        digest = download_file(manifest.url, dest, sha256=expected, progress=progress)
    except BaseException:
        with contextlib.suppress(OSError):
            dest.parent.rmdir()  # only when empty: a partial download stays to resume
        raise
    if not manifest.sha256 and not recorded:
        _record_checksum(name, manifest.url, digest)
    remember_sha256(dest, digest)
    _write_source(name, manifest.filename, manifest.format, digest, manifest.url)
    return dest


def import_dataset(path: str | Path, name: str, *, format: str | None = None,
                   progress: bool = True) -> Path:
    """Copy a local file into the store under ``name`` after checking that it parses.

    For a manifest name the manifest's format applies and, when the manifest has a checksum, the
    file must match it. A new name registers the file as a dataset of that name. A file that does
    not parse leaves nothing behind.
    """
    source = Path(path).expanduser()
    from harness.data.jodie import read_source

    if not source.is_file():
        read_source(source)
    if not name or "/" in name or os.sep in name or name.startswith("."):
        raise UsageError(f"--name must be a plain dataset name like 'mydata', but got {name!r}")
    from harness.registry import default_registry

    if name in default_registry("datasets"):
        raise UsageError(f"{name!r} is a generated dataset and cannot be replaced by a file; "
                         "choose another --name")
    manifest = manifests().get(name)
    fmt = format or (manifest.format if manifest else detect_format(source))
    digest = file_sha256(source)
    if manifest and manifest.sha256 and manifest.sha256 != digest:
        raise DataError(f"{source}: sha256 {digest} does not match the manifest of {name!r} "
                        f"({manifest.sha256}); is it the file from {manifest.url}?")
    stream = FileDataset(source, format=fmt, name=name, sha256=digest).load()  # validates
    del stream
    filename = manifest.filename if manifest else source.name
    dest = _store(name) / filename
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.import")
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    remember_sha256(dest, digest)
    _write_source(name, filename, fmt, digest, f"import:{source.resolve()}")
    return dest


# -- statistics ---------------------------------------------------------------------------------

def dataset_stats(stream: Interactions) -> dict[str, Any]:
    """The JODIE paper's Table 5 columns: users, items, events, state changes, repeat fraction
    (share of events whose item equals the same user's previous item) and features."""
    n = len(stream)
    order = np.argsort(stream.user, kind="stable")
    user, item = stream.user[order], stream.item[order]
    repeats = int(np.count_nonzero((user[1:] == user[:-1]) & (item[1:] == item[:-1]))) if n else 0
    return {
        "users": int(stream.n_users),
        "items": int(stream.n_items),
        "events": n,
        "state_changes": int(stream.label.sum()),
        "repeat_fraction": repeats / n if n else 0.0,
        "features": int(stream.n_features),
    }
