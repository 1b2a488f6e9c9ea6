"""Many jobs running at once: control-plane memory and heartbeat lag with N held payloads.

What is measured
    One workflow of N independent jobs whose payload is ``["panray:sleep", S]``: each pilot holds
    its jobs as timers (no process), so the machine can hold 200k "running" jobs while panray's
    control plane does the real work — dispatching them, recording every state change, and
    processing heartbeats (each pilot sends one batch per interval for all the jobs it holds:
    one heartbeat per job per ``--heartbeat`` seconds, 60 by default as in debug-mode PanDA).

    Reported: the time until all N jobs are ``running`` in the store, the heartbeat processing
    lag (pilot send -> applied by the workflow manager; p50/p99/max), the RSS of the control
    plane (workflow manager, brokerage, site queues) and of the pilots, sampled while all N are
    running, and the time until the workflow has ended.

Targets (issue 8): control-plane RSS <= 1.5 GiB, heartbeat lag <= 1 s, at 200k.

Usage
    python -m benchmarks.concurrent --jobs 200000 [--sleep 150] [--heartbeat 60] [--db URL]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import format_table, machine_info, print_header, versions, write_json  # noqa: E402


def _actor_rss_mib() -> dict[str, float]:
    """RSS of panray's actor processes, grouped as control plane or pilots."""
    import os

    import psutil
    import ray

    out = {"control_plane": 0.0, "pilots": 0.0}
    for entry in ray.util.list_named_actors(all_namespaces=True):
        name, ns = entry["name"], entry["namespace"]
        if ns != "panray" or not (name.startswith(("pilot:", "workflow-manager:", "site-queue:")) or name == "brokerage"):
            continue
        pid = ray.get(ray.get_actor(name, namespace=ns).__ray_call__.remote(lambda _self: os.getpid()))
        out["pilots" if name.startswith("pilot:") else "control_plane"] += psutil.Process(pid).memory_info().rss / 2**20
    return out


def run(n_jobs: int, sleep_s: float, heartbeat_s: float, db_url: str | None) -> dict[str, Any]:
    import panray  # noqa: F401  (first: keeps Ray on loopback)
    import ray
    from panray import Job, Panray, Settings, Workflow
    from panray.payload import SLEEP

    jobs = [Job(name=f"hold{k:06d}", label=f"hold{k % 8}", command=[SLEEP, str(sleep_s)]) for k in range(n_jobs)]
    wf = Workflow(name=f"concurrent-{n_jobs}", jobs=jobs, task_chunk_size=50_000)
    del jobs
    home = Path(tempfile.mkdtemp(prefix="panray-concurrent-"))
    settings = Settings(home=home, db_url=db_url, heartbeat_interval=heartbeat_s, heartbeat_timeout=7200)
    with Panray(settings) as pr:
        pr.runtime
        t0 = time.perf_counter()
        [wf_id] = pr.submit(wf)
        submit_s = time.perf_counter() - t0
        mgr = pr._manager(wf_id)
        while ray.get(mgr.progress.remote())["counts"].get("running", 0) < n_jobs:
            time.sleep(0.5)
        all_running_s = time.perf_counter() - t0
        time.sleep(max(heartbeat_s * 1.5, 5.0))  # hold: let every pilot send at least one full heartbeat
        rss = _actor_rss_mib()
        stats = ray.get(mgr.stats.remote())
        running_in_store = pr.status(wf_id)[0].jobs.get("running", 0)
        status = pr.wait([wf_id])[wf_id]
        total_s = time.perf_counter() - t0
    return {
        "jobs": n_jobs, "submit_s": submit_s, "all_running_s": all_running_s, "running_in_store": running_in_store,
        "heartbeat_batches": stats["heartbeats"], "heartbeats": stats["beats"],
        "lag_p50_s": stats["lag_p50"], "lag_p99_s": stats["lag_p99"], "lag_max_s": stats["lag_max"],
        "manager_rss_mib": stats["rss_bytes"] / 2**20, "control_plane_rss_mib": rss["control_plane"],
        "pilots_rss_mib": rss["pilots"], "total_s": total_s, "status": status,
        "ok": status == "Finished" and running_in_store == n_jobs,
        "meets_targets": rss["control_plane"] <= 1536 and (stats["lag_max"] or 0) <= 1.0,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=200_000)
    ap.add_argument("--sleep", type=float, default=150.0, help="seconds each payload holds its job")
    ap.add_argument("--heartbeat", type=float, default=60.0, help="pilot heartbeat interval, s")
    ap.add_argument("--db", help="state store URL (default: a fresh SQLite file)")
    args = ap.parse_args(argv)
    info, vers = machine_info(), versions()
    print_header("concurrent: N jobs running at once", info, vers)
    result = run(args.jobs, args.sleep, args.heartbeat, args.db)
    cols = ["jobs", "all_running_s", "running_in_store", "heartbeats", "lag_p50_s", "lag_p99_s", "lag_max_s",
            "control_plane_rss_mib", "manager_rss_mib", "pilots_rss_mib", "total_s", "meets_targets", "ok"]
    print(format_table([result], cols))
    print("targets: control-plane RSS <= 1536 MiB, heartbeat lag <= 1 s")
    path = write_json("concurrent", {"machine": info, "versions": vers, "results": [result]})
    print(f"results: {path}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
