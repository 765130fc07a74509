"""The README's plugin guide works as written: install the example, see it, run it, test it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "lastitem-plugin"


def test_readme_shows_the_example_files_verbatim():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:toml|python)\n(.*?)```", readme, flags=re.S)
    for path in ("pyproject.toml", "harness_lastitem/__init__.py", "tests/test_lastitem.py"):
        assert (EXAMPLE / path).read_text() in blocks, f"README's copy of {path} differs"


def test_example_plugin_installs_lists_runs_and_passes_conformance(tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(EXAMPLE)], check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    listed = subprocess.run([sys.executable, "-m", "harness.cli", "list", "models"],
                            capture_output=True, text=True, env=env, check=True)
    assert re.search(r"lastitem\s+ok\s+harness_lastitem:LastItem", listed.stdout)
    ran = subprocess.run([sys.executable, "-m", "harness.cli", "run", "--models", "lastitem,popularity",
                          "--results", str(tmp_path / "results"), "--quiet"],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert "lastitem" in ran.stdout and "popularity" in ran.stdout
    tested = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             str(EXAMPLE / "tests")], capture_output=True, text=True, env=env,
                            cwd=tmp_path)
    assert tested.returncode == 0 and "9 passed" in tested.stdout, tested.stdout
