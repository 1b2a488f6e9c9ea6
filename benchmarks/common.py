"""Shared helpers for panray's benchmarks: machine info, versions, tables, JSON results, a throwaway
PostgreSQL server and peak-RSS measurement.

Every benchmark prints the machine and versions next to its table so that a figure is never read
without its context, and writes the same data as JSON to ``benchmarks/results/<name>-<stamp>.json``
(the folder is git-ignored).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
TESTS_DIR = Path(__file__).resolve().parent.parent / "tests"


# -- machine and versions --------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return float("nan")


def _version(module: str) -> str:
    try:
        mod = __import__(module)
    except ImportError:
        return "not installed"
    return str(getattr(mod, "__version__", "?"))


def machine_info() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "cpu": _cpu_model(),
        "platform": platform.platform(),
    }


def versions() -> dict[str, str]:
    """Versions of what the figures depend on (imported lazily: ray is heavy)."""
    return {
        "python": platform.python_version(),
        "panray": _version("panray"),
        "ray": _version("ray"),
        "dask": _version("dask"),
        "distributed": _version("distributed"),
        "psycopg": _version("psycopg"),
        "sqlite": sqlite3.sqlite_version,
    }


def print_header(title: str, info: dict[str, Any], vers: dict[str, str]) -> None:
    print(f"== {title}")
    print(f"machine: {info['cores']} cores, {info['memory_gib']} GiB, {info['cpu']}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()))


# -- output ----------------------------------------------------------------------------------


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        if v != v:  # NaN
            return "-"
        return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A plain-text table: text left-aligned, numbers right-aligned."""
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[k]) for row in cells]) for k, c in enumerate(columns)]
    numeric = [all(isinstance(r.get(c), (int, float)) and not isinstance(r.get(c), bool) or r.get(c) is None
                   for r in rows) for c in columns]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    out = [line(list(columns)), line(["-" * w for w in widths])]
    out += [line(row) for row in cells]
    return "\n".join(out)


def write_json(name: str, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``benchmarks/results/<name>-<timestamp>.json``; return the path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    return path


# -- PostgreSQL ------------------------------------------------------------------------------


@contextmanager
def postgres_server() -> Iterator[Any]:
    """A throwaway PostgreSQL cluster (tests/pgserver.py) on 127.0.0.1, stopped and removed after."""
    if str(TESTS_DIR) not in sys.path:
        sys.path.insert(0, str(TESTS_DIR))
    import pgserver  # type: ignore[import-not-found]

    server = pgserver.start()
    try:
        yield server
    finally:
        server.stop()


# -- memory ----------------------------------------------------------------------------------


def peak_rss_mib(children: bool = False) -> float:
    """Peak RSS of this process (or of its waited-for children) in MiB, from getrusage."""
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 1024.0  # ru_maxrss is in KiB on Linux


def current_rss_mib(pid: int | None = None) -> float:
    """Current RSS of ``pid`` (default: this process) from /proc, in MiB."""
    try:
        for line in Path(f"/proc/{pid or 'self'}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux >= 4.0: write 5 to clear_refs); True if it worked."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def hwm_rss_mib() -> float:
    """The process's RSS high-water mark from /proc (honours :func:`reset_peak_rss`), in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return peak_rss_mib()


def tree_rss_mib(root_pid: int) -> float:
    """Sum of the current RSS of ``root_pid`` and all its descendants (via /proc), in MiB."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    total, todo = 0.0, [root_pid]
    while todo:
        pid = todo.pop()
        total += current_rss_mib(pid)
        todo.extend(children.get(pid, []))
    return total


# -- raw Ray ----------------------------------------------------------------------------------


def start_raw_ray(num_cpus: int = 2) -> Any:
    """A plain Ray cluster of this process' own on 127.0.0.1 (never another session's): the peer."""
    import panray  # noqa: F401  (loopback environment)
    import ray
    from panray.sites.topology import loopback_env

    loopback_env()
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
             logging_level="WARNING", log_to_driver=False)
    return ray


# -- one measurement per interpreter -----------------------------------------------------------

RESULT_TAG = "RESULT "


def _sample_rss(pid: int, stop: threading.Event, peak: list[float]) -> None:
    while not stop.wait(0.5):
        peak[0] = max(peak[0], tree_rss_mib(pid))


def run_isolated(module: str, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run ``python -m module --child SPEC`` in a fresh interpreter (its own session) and return
    the dict it printed after :data:`RESULT_TAG`, plus the peak RSS of its process tree."""
    cmd = [sys.executable, "-m", module, "--child", json.dumps(spec)]
    proc = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    stop, peak = threading.Event(), [0.0]
    sampler = threading.Thread(target=_sample_rss, args=(proc.pid, stop, peak), daemon=True)
    sampler.start()
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        out = ""
    stop.set()
    sampler.join()
    lines = [ln for ln in out.splitlines() if ln.startswith(RESULT_TAG)]
    result = json.loads(lines[-1][len(RESULT_TAG):]) if lines else {"ok": False, "error": f"rc={proc.returncode}"}
    result["peak_rss_mib"] = round(peak[0])
    return result
