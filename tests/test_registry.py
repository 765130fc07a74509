"""Plugin discovery: lazy, tolerant of broken plugins, strict about duplicate names."""

from __future__ import annotations

import pytest

from harness.errors import HarnessError, UsageError
from harness.registry import Registry, default_registry, plugin_status


def test_names_are_listed_without_importing():
    registry = Registry("models")
    registry.add("ghost", "no_such_module_anywhere:Model", distribution="ghost-dist")
    assert registry.names() == ["ghost"]  # listing did not try the import


def test_a_broken_plugin_is_reported_not_raised_while_listing():
    registry = Registry("models")
    registry.add("ghost", "no_such_module_anywhere:Model", distribution="ghost-dist")
    registry.add("fine", "toy_models:Counts", distribution="tests")
    [ghost, fine] = [registry.entries()[1], registry.entries()[0]]
    assert plugin_status(ghost).startswith("broken: module 'no_such_module_anywhere' not found")
    assert plugin_status(fine) == "ok"
    assert plugin_status(ghost, import_it=True).startswith("broken: ModuleNotFoundError")
    with pytest.raises(HarnessError, match="plugin 'ghost' .*ghost-dist.* is broken"):
        registry.get("ghost")
    assert registry.get("fine").__name__ == "Counts"


def test_a_plugin_that_fails_at_import_time_is_broken(tmp_path, monkeypatch):
    (tmp_path / "explodes.py").write_text("raise RuntimeError('missing licence key')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = Registry("models")
    registry.add("boom", "explodes:Model", distribution="boom-dist")
    assert plugin_status(registry.entries()[0], import_it=True) == (
        "broken: RuntimeError: missing licence key")


def test_two_distributions_claiming_one_name_is_an_error_naming_both():
    registry = Registry("models")
    registry.add("jodie", "a_pkg:JODIE", distribution="harness-jodie")
    with pytest.raises(HarnessError, match="harness-jodie .*and other-jodie"):
        registry.add("jodie", "b_pkg:JODIE", distribution="other-jodie")


def test_unknown_name_suggests_the_closest():
    with pytest.raises(UsageError, match="did you mean 'popularity'.*Known models: .*recency"):
        default_registry("models").get("popularty")


def test_first_party_plugins_are_discovered_through_entry_points():
    names = default_registry("models").names()
    assert {"popularity", "recency", "frequency", "jodie", "gru4rec", "hawkes"} <= set(names)
    assert "synthetic" in default_registry("datasets").names()
    assert {"mrr", "recall", "auc", "mae"} <= set(default_registry("metrics").names())
