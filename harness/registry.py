"""Plugin discovery through entry points: names are listed without importing anything.

A plugin is imported the first time it is asked for. A plugin that fails to import is reported
as broken where it is asked for (``harness list`` shows it) and never breaks the other plugins.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from harness.errors import HarnessError, UsageError, did_you_mean

__all__ = [
    "GROUPS", "PluginEntry", "Registry", "default_registry", "load_object", "plugin_status",
]

GROUPS = {"models": "harness.models", "datasets": "harness.datasets", "metrics": "harness.metrics"}


@dataclass
class PluginEntry:
    """One registered name: where it lives and, once loaded, the object or the load error."""

    name: str
    target: str
    distribution: str
    _loaded: Any = field(default=None, repr=False)
    error: str | None = None

    def load(self) -> Any:
        if self._loaded is None and self.error is None:
            try:
                self._loaded = load_object(self.target)
            except Exception as exc:  # a broken plugin must not break the tool
                self.error = f"{type(exc).__name__}: {exc}"
        if self.error is not None:
            raise HarnessError(
                f"plugin {self.name!r} ({self.target}, from {self.distribution}) is broken: "
                f"{self.error}"
            )
        return self._loaded


def load_object(target: str) -> Any:
    """Import ``package.module:attr`` (the form of ``--plugin`` and of entry points)."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"a plugin must be given as 'package.module:Class', but got {target!r}")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


class Registry:
    """Names of one kind of plugin (models, datasets or metrics).

    Entries come from an entry-point group or from :meth:`add`; a name claimed twice is an error
    that names both claimants.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, PluginEntry] = {}

    @classmethod
    def from_entry_points(cls, kind: str) -> Registry:
        registry = cls(kind)
        for ep in sorted(entry_points(group=GROUPS[kind]), key=lambda e: e.name):
            registry._add_entry_point(ep)
        return registry

    def _add_entry_point(self, ep: EntryPoint) -> None:
        dist = ep.dist.name if ep.dist is not None else "unknown distribution"
        self.add(ep.name, ep.value, distribution=dist)

    def add(self, name: str, target: str | Any, *, distribution: str = "local") -> None:
        """Register ``name`` for a ``"module:attr"`` string or an object."""
        if name in self._entries:
            other = self._entries[name]
            if other.distribution == distribution and other.target == target:
                return  # one distribution seen twice on sys.path
            raise HarnessError(
                f"{self.kind[:-1]} name {name!r} is claimed by both {other.distribution} "
                f"({other.target}) and {distribution} ({target}); uninstall one of them"
            )
        entry = PluginEntry(name, target if isinstance(target, str) else repr(target), distribution)
        if not isinstance(target, str):
            entry._loaded = target
        self._entries[name] = entry

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[PluginEntry]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: str) -> Any:
        """The plugin object for ``name``; unknown names get a did-you-mean error."""
        if name not in self._entries:
            raise UsageError(did_you_mean(name, self.names(), self.kind[:-1]))
        return self._entries[name].load()


def plugin_status(entry: PluginEntry, *, import_it: bool = False) -> str:
    """``ok`` or ``broken: why``. Without ``import_it`` nothing is imported: the module must be
    findable and the distribution's declared dependencies installed."""
    if import_it or entry._loaded is not None:
        try:
            entry.load()
        except HarnessError:
            return f"broken: {entry.error}"
        return "ok"
    module = entry.target.partition(":")[0]
    try:
        if importlib.util.find_spec(module) is None:
            return f"broken: module {module!r} not found"
    except (ImportError, ValueError) as exc:
        return f"broken: {exc}"
    missing = _missing_requirements(entry.distribution)
    return f"broken: missing {', '.join(missing)}" if missing else "ok"


def _missing_requirements(distribution: str) -> list[str]:
    from importlib.metadata import PackageNotFoundError, requires, version

    try:
        requirements = requires(distribution) or []
    except PackageNotFoundError:
        return []
    missing = []
    for requirement in requirements:
        if ";" in requirement:
            continue  # extras and environment markers: optional
        name = re.split(r"[\s<>=!~\[(]", requirement.strip(), maxsplit=1)[0]
        try:
            version(name)
        except PackageNotFoundError:
            missing.append(name)
    return missing


_DEFAULT: dict[str, Registry] = {}


def default_registry(kind: str) -> Registry:
    """The registry of installed plugins of one kind, built on first use."""
    if kind not in GROUPS:
        raise UsageError(did_you_mean(kind, list(GROUPS), "plugin kind"))
    if kind not in _DEFAULT:
        _DEFAULT[kind] = Registry.from_entry_points(kind)
    return _DEFAULT[kind]
