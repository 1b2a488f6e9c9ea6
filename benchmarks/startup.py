"""Start and idle cost of the embedded default against a bare ``ray.init``, same run.

What is measured (each system in its own interpreter)
    * **panray**: ``Panray(Settings()).runtime`` on a fresh home: the embedded cluster (one raylet
      carrying the three sites), brokerage, the site queues, the supervisor and its pilots, until
      every pilot answers. Then, after ``--idle`` seconds, the RSS and PSS of every process of the
      tree, summed per kind (``ray::Pilot``, ``gcs_server``, ``dashboard.py``, ...).
    * **raw Ray**: ``ray.init(num_cpus=2)`` and one task, so that one worker runs; the same figures.

Targets (issue 18): panray ready in <= 5 s, idle tree RSS <= 1 GiB.

Usage
    python -m benchmarks.startup [--idle 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402
    RESULT_TAG,
    format_table,
    machine_info,
    print_header,
    run_isolated,
    start_raw_ray,
    versions,
    write_json,
)


def _kind(cmdline: list[str], name: str) -> str:
    """``ray::Pilot``, ``gcs_server``, ``dashboard.py``: what a process of the tree is."""
    if not cmdline:
        return name
    if cmdline[0].startswith("ray::"):
        return cmdline[0].split(".", 1)[0].split()[0]
    words = [os.path.basename(w) for w in cmdline[:3] if not w.startswith("-")]
    if words and words[0].startswith("python"):
        return words[1] if len(words) > 1 else words[0]
    return words[0] if words else name


def tree_memory() -> dict[str, dict[str, float]]:
    """This process and its descendants: count, RSS and PSS (MiB) per kind."""
    import psutil

    me = psutil.Process()
    kinds: dict[str, dict[str, float]] = defaultdict(lambda: {"n": 0, "rss_mib": 0.0, "pss_mib": 0.0})
    for proc in [me, *me.children(recursive=True)]:
        try:
            mem, cmdline, name = proc.memory_full_info(), proc.cmdline(), proc.name()
        except psutil.Error:
            continue
        k = kinds["driver" if proc.pid == me.pid else _kind(cmdline, name)]
        k["n"] += 1
        k["rss_mib"] += mem.rss / 2**20
        k["pss_mib"] += mem.pss / 2**20
    return dict(kinds)


def _totals(system: str, ready_s: float, kinds: dict[str, dict[str, float]]) -> dict[str, Any]:
    return {"system": system, "ready_s": ready_s, "processes": int(sum(k["n"] for k in kinds.values())),
            "rss_mib": sum(k["rss_mib"] for k in kinds.values()), "pss_mib": sum(k["pss_mib"] for k in kinds.values()),
            "kinds": kinds, "ok": True}


def run_panray(idle: float) -> dict[str, Any]:
    import panray  # noqa: F401  (first: keeps Ray on loopback)
    from panray import Panray, Settings

    with Panray(Settings(home=Path(tempfile.mkdtemp(prefix="panray-startup-")))) as pr:
        t0 = time.perf_counter()
        pr.runtime
        ready = time.perf_counter() - t0
        time.sleep(idle)  # the figure is the idle one: start-up transients (imports, compiles) gone
        return _totals("panray", ready, tree_memory())


def run_ray(idle: float) -> dict[str, Any]:
    t0 = time.perf_counter()
    ray = start_raw_ray()
    ray.get(ray.remote(lambda: 1).remote())
    ready = time.perf_counter() - t0
    time.sleep(idle)
    out = _totals("raw Ray", ready, tree_memory())
    ray.shutdown()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--idle", type=float, default=3.0, help="seconds idle before the memory is read")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        run = run_panray if spec["system"] == "panray" else run_ray
        print(RESULT_TAG + json.dumps(run(spec["idle"])), flush=True)
        return 0
    info, vers = machine_info(), versions()
    print_header("startup: start-to-ready and idle memory", info, vers)
    rows = []
    for system in ("panray", "ray"):
        print(f"-- running {system} ...", file=sys.stderr, flush=True)
        r = run_isolated("benchmarks.startup", {"system": system, "idle": args.idle}, timeout=600)
        r.setdefault("system", system)
        rows.append(r)
    print(format_table(rows, ["system", "ready_s", "processes", "rss_mib", "pss_mib", "ok"]))
    for r in rows:
        kinds = sorted(r.get("kinds", {}).items(), key=lambda kv: -kv[1]["rss_mib"])
        print(f"\n{r['system']}, idle, per kind of process:")
        print(format_table([{"kind": k, **v} for k, v in kinds], ["kind", "n", "rss_mib", "pss_mib"]))
    print("targets: panray ready <= 5 s, idle RSS <= 1,024 MiB")
    path = write_json("startup", {"machine": info, "versions": vers, "results": rows})
    print(f"results: {path}")
    return 0 if all(r.get("ok") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
