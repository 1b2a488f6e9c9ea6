"""``panray serve`` as a subprocess for tests: start it, wait until it serves, stop it, check it left nothing."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

PANRAY = [sys.executable, "-m", "panray.cli"]


def panray(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PANRAY, *args], capture_output=True, text=True, timeout=timeout, env=env)


def _served(home: Path) -> dict[str, object] | None:
    try:
        info = json.loads((home / "cluster.json").read_text())
    except (OSError, ValueError):
        return None
    return info if info.get("serve") else None


@contextmanager
def running_server(home: Path, env: dict[str, str], start_timeout: float = 180) -> Iterator[dict[str, object]]:
    """A server for ``home``; yields its cluster.json. On exit: ``--stop``, then no process of it remains."""
    proc = subprocess.Popen([*PANRAY, "--home", str(home), "serve"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    descendants: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + start_timeout
        while (info := _served(home)) is None:
            assert proc.poll() is None, f"panray serve exited with {proc.returncode}:\n{proc.stdout.read()}"
            assert time.monotonic() < deadline, "panray serve did not come up"
            time.sleep(0.2)
        descendants = psutil.Process(proc.pid).children(recursive=True)
        assert any("raylet" in p.name() for p in descendants), [p.name() for p in descendants]
        yield info
        stop = panray("--home", str(home), "serve", "--stop", env=env)
        assert stop.returncode == 0, stop.stdout + stop.stderr
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
        assert f"PANRAY_RAY_ADDRESS={info['address']}" in out
        assert not (home / "cluster.json").exists()
        _, alive = psutil.wait_procs(descendants, timeout=30)
        assert not alive, f"left behind: {[(p.pid, p.name()) for p in alive]}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for p in descendants:
            try:
                p.kill()
            except psutil.Error:
                pass
