"""Campaign throughput: many workflows submitted at once against one workflow of the same total size.

What is measured
    * **single**: one DRP-shaped workflow of ``workflows x jobs`` no-op jobs (``panray.dag.drp``).
    * **campaign**: ``workflows`` DRP-shaped workflows of ``jobs`` no-op jobs each, submitted in one
      ``submit_campaign`` call, their managers hosted by the pool of ``manager_pool`` actors.
    * **per-workflow** (``--per-workflow``): the same campaign with ``manager_pool: 0``, one manager
      actor (one process) per workflow, as panray ran before the pool.

    Each runs in its own interpreter with a fresh home and SQLite store on the embedded cluster
    (PostgreSQL with ``--backend postgres``), every state change persisted. Timed from the submit
    call to the end of ``wait`` on every workflow (submit included; building the pydantic models and
    starting the cluster are not). ``jobs_per_s`` is jobs over that time; ``vs_single`` is the
    campaign's rate over the single workflow's in the same run.

    While it runs, every 0.5 s the run's processes are counted and their RSS summed: the control
    plane (workflow managers, brokerage, supervisor, site queues: what runs on the head) and the
    whole process tree; the figures are the peaks. ``managers`` is the peak number of manager
    processes.

Usage
    python -m benchmarks.campaign [--workflows 200] [--jobs 1000] [--manager-pool 2] [--per-workflow] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402
from benchmarks.common import RESULT_TAG, format_table, machine_info, postgres_server, print_header  # noqa: E402
from benchmarks.common import versions, write_json  # noqa: E402

#: Ray's process titles of the actors that make panray's control plane (on the head node).
CONTROL_PLANE = ("ray::WorkflowManager", "ray::Brokerage", "ray::Supervisor", "ray::SiteQueue")


class _Sampler(threading.Thread):
    """Peak process counts and RSS of this process's tree, the control plane apart."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.peak = {"control_rss_mib": 0.0, "tree_rss_mib": 0.0, "managers": 0, "control_processes": 0,
                     "processes": 0}

    def run(self) -> None:
        import psutil

        me = psutil.Process(os.getpid())
        while not self.stop.wait(0.5):
            control = tree = 0.0
            managers = n_control = n = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    title = " ".join(p.cmdline())
                    rss = p.memory_info().rss / 2**20
                except psutil.Error:
                    continue
                n += 1
                tree += rss
                if title.startswith(CONTROL_PLANE):
                    n_control += 1
                    control += rss
                    managers += title.startswith(CONTROL_PLANE[0])
            for key, value in (("control_rss_mib", control), ("tree_rss_mib", tree), ("managers", managers),
                               ("control_processes", n_control), ("processes", n)):
                self.peak[key] = max(self.peak[key], value)


def run(kind: str, workflows: int, jobs: int, pool: int, db_url: str | None) -> dict[str, Any]:
    import panray  # noqa: F401  (first: keeps Ray on loopback)
    from panray import Campaign, Job, Panray, Settings, Workflow
    from panray.dag import drp

    def workflow(name: str, n: int) -> Workflow:
        shape = drp(n)
        return Workflow(name=name, jobs=[Job(name=nm, label=lb, parents=ps, tags=tg)
                                         for nm, lb, ps, tg in zip(shape.names, shape.labels, shape.parents, shape.tags)])

    t0 = time.perf_counter()
    wfs = ([workflow(f"bench-single-{workflows * jobs}", workflows * jobs)] if kind == "single"
           else [workflow(f"bench-campaign-{k}", jobs) for k in range(workflows)])
    model_s = time.perf_counter() - t0
    home = Path(tempfile.mkdtemp(prefix="panray-bench-"))
    with Panray(Settings(home=home, db_url=db_url, manager_pool=0 if kind == "per-workflow" else pool)) as pr:
        t_setup = time.perf_counter()
        pr.runtime  # the embedded cluster and actors, outside the timing
        setup_s = time.perf_counter() - t_setup
        sampler = _Sampler()
        sampler.start()
        t1 = time.perf_counter()
        ids = pr.submit_campaign(Campaign(name="bench", workflows=wfs))
        t2 = time.perf_counter()
        statuses = pr.wait(ids)
        t3 = time.perf_counter()
        sampler.stop.set()
        sampler.join()
        total = sum(s.total for s in pr.status())
        finished = sum(s.jobs.get("finished", 0) for s in pr.status())
    return {"workflows": len(ids), "jobs": total, "seconds": t3 - t1, "submit_s": t2 - t1, "model_s": model_s,
            "setup_s": setup_s, "jobs_per_s": total / (t3 - t1), **{k: round(v) for k, v in sampler.peak.items()},
            "ok": finished == total and set(statuses.values()) == {"Finished"}}


COLUMNS = ["kind", "workflows", "jobs", "manager_pool", "seconds", "submit_s", "jobs_per_s", "vs_single", "managers",
           "control_processes", "processes", "control_rss_mib", "tree_rss_mib", "load_avg", "ok"]


def measure(workflows: int, jobs: int, pool: int, per_workflow: bool, backend: str) -> list[dict[str, Any]]:
    kinds = ["single", "campaign"] + (["per-workflow"] if per_workflow else [])
    rows = []
    pg_ctx = postgres_server() if backend == "postgres" else None
    pg = pg_ctx.__enter__() if pg_ctx else None
    try:
        for kind in kinds:
            db_url = pg.create_database(f"bench_{kind.replace('-', '_')}_{int(time.time())}") if pg else None
            spec = {"kind": kind, "workflows": workflows, "jobs": jobs, "pool": pool, "db_url": db_url}
            print(f"-- running {kind} ...", file=sys.stderr, flush=True)
            r = common.run_isolated("benchmarks.campaign", spec, timeout=600 + workflows * jobs / 50)
            r.update(kind=kind, manager_pool=0 if kind == "per-workflow" else pool,
                     load_avg=round(os.getloadavg()[0], 1))
            print(f"   {kind}: {json.dumps(r)}", file=sys.stderr, flush=True)
            rows.append(r)
    finally:
        if pg_ctx:
            pg_ctx.__exit__(None, None, None)
    single = rows[0].get("jobs_per_s")
    for r in rows:
        r["vs_single"] = r["jobs_per_s"] / single if single and r.get("jobs_per_s") else None
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workflows", type=int, default=200, help="workflows in the campaign")
    ap.add_argument("--jobs", type=int, default=1000, help="jobs per workflow (the single one has workflows x jobs)")
    ap.add_argument("--manager-pool", type=int, default=2, help="manager actors hosting the campaign's workflows")
    ap.add_argument("--per-workflow", action="store_true", help="also run the campaign with one manager per workflow")
    ap.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--json", action="store_true", help="also print the result JSON on stdout")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        print(RESULT_TAG + json.dumps(run(spec["kind"], spec["workflows"], spec["jobs"], spec["pool"], spec["db_url"])),
              flush=True)
        return 0
    info, vers = machine_info(), versions()
    print_header(f"campaign: {args.workflows} workflows x {args.jobs:,} no-op jobs against one of "
                 f"{args.workflows * args.jobs:,} ({args.backend})", info, vers)
    rows = measure(args.workflows, args.jobs, args.manager_pool, args.per_workflow, args.backend)
    print(format_table(rows, COLUMNS))
    payload = {"benchmark": "campaign", "machine": info, "versions": vers, "results": rows}
    print(f"results: {write_json('campaign', payload)}")
    if args.json:
        print(json.dumps(payload, indent=2, default=str))
    return 0 if all(r.get("ok") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
