"""The card's top-level folders install as subpackages of panray, from a wheel as from the checkout."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUBPACKAGES = ["panray.actors", "panray.dag", "panray.sites", "panray.logging_bridge", "panray.store", "panray.configs",
               "panray.deploy", "panray.server", "panray.core", "panray.monitor"]


def test_wheel_holds_subpackages_and_imports_them(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, timeout=300, cwd=tmp_path)
    [wheel] = tmp_path.glob("panray-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"panray", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}
    for pkg in SUBPACKAGES:
        assert pkg.replace(".", "/") + "/__init__.py" in names, pkg
    assert "panray/configs/sites.yaml" in names
    assert {"panray/deploy/values-laptop.yaml", "panray/deploy/values-production.yaml"} <= set(names)
    assert not [n for n in names if "/crds/" in n]  # reference schemas for the tests, not shipped
    assert {"panray/monitor/static/monitor.js", "panray/monitor/static/monitor.css"} <= set(names)
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import sys, importlib; sys.path.insert(0, sys.argv[1]);"
            f"mods = [importlib.import_module(m) for m in {['panray', *SUBPACKAGES]!r}];"
            "assert all(m.__file__.startswith(sys.argv[1]) for m in mods), [m.__file__ for m in mods];"
            "from panray.sites import load_catalog; print(load_catalog().names())")
    r = subprocess.run([sys.executable, "-c", code, str(site)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "USDF" in r.stdout


def test_editable_checkout_imports_subpackages() -> None:
    import importlib

    for pkg in SUBPACKAGES:
        mod = importlib.import_module(pkg)
        assert Path(mod.__file__).resolve().is_relative_to(ROOT), (pkg, mod.__file__)
