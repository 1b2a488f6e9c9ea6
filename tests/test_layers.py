"""The layer contract (``[tool.importlinter]`` in pyproject.toml) holds, and it would catch a break.

The repository keeps actors/, dag/, sites/ and logging_bridge/ beside panray/ and installs them as
its subpackages (``package-dir``); import-linter reads packages from the file system, so the test
lays the package out as a wheel would, in a temporary directory, and lints that.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"


@pytest.fixture
def package_tree(tmp_path: Path) -> Path:
    """``tmp_path/panray`` with every subpackage where an installed panray has it."""
    dirs = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["package-dir"]
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.yaml")
    shutil.copytree(ROOT / dirs["panray"], tmp_path / "panray", ignore=skip)
    for name, folder in dirs.items():
        if name != "panray":
            shutil.copytree(ROOT / folder, tmp_path / Path(*name.split(".")), ignore=skip, dirs_exist_ok=True)
    return tmp_path


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; lint_imports_command()",
         str(PYPROJECT), "--no-cache"],
        cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True, timeout=120,
    )


def test_layer_contract_is_kept(package_tree: Path) -> None:
    result = _lint(package_tree)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "2 kept, 0 broken" in result.stdout


def test_an_upward_import_breaks_the_contract(package_tree: Path) -> None:
    (package_tree / "panray" / "store" / "upward.py").write_text("from panray.api import Panray\n")
    (package_tree / "panray" / "core" / "sql.py").write_text("import sqlite3\n")
    result = _lint(package_tree)
    assert result.returncode != 0
    assert "panray.store is not allowed to import panray.api" in result.stdout
    assert "panray.core is not allowed to import sqlite3" in result.stdout


def test_named_actors_are_looked_up_in_one_place() -> None:
    """``ray.get_actor`` appears only in actors/names.py (``actor``, ``Handles``); serve.py's
    shutdown walk is another engineer's file and is left as it is."""
    import ast

    allowed = {"actors/names.py", "panray/serve.py"}
    calls = []
    for folder in ("panray", "actors", "dag", "sites", "logging_bridge"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Attribute) and node.attr == "get_actor" and rel not in allowed:
                    calls.append(f"{rel}:{node.lineno}")
    assert calls == [], "use panray.actors.names.actor or Handles: " + ", ".join(calls)
