"""Submission: time and peak memory to validate and persist one huge DRP-shaped workflow.

What is measured
    In a fresh interpreter per backend (so that peak RSS is this submission's alone):

    1. ``shape``  – ``panray.dag.drp(n)`` as plain lists (the user's input; not part of the total);
    2. ``model``  – the pydantic ``Job`` per node + ``Workflow`` + ``Campaign`` (boundary validation);
    3. ``build``  – ``panray.submission.build_campaign`` (DAG checks: cycles, dangling parents,
       duplicates; site pins; tasks per label; store rows);
    4. ``store``  – ``store.submit`` into a fresh SQLite file or a fresh PostgreSQL database
       (schema already created by ``open_store``, which is not timed).

    ``total`` = model + build + store, the part a user waits for after having the graph in memory;
    ``cpu_s`` is this process's CPU time over the same three phases (PostgreSQL's own not counted),
    which a loaded machine disturbs less than wall time.
    Peak RSS is the interpreter's high-water mark (``getrusage``), which includes the shape.
    No Ray: the site catalog comes from ``panray.sites.load_catalog()``.

    With ``--paths table`` the graph is handed over as columns instead (``model`` then only wraps
    the lists; the column-wise validation is part of ``build``).

Targets (issue 18): total <= 5 s and peak RSS <= 1 GiB at 200k jobs.

Usage
    python -m benchmarks.submit --jobs 200000 [--backends sqlite,postgres] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402
    current_rss_mib,
    format_table,
    machine_info,
    peak_rss_mib,
    postgres_server,
    print_header,
    versions,
    write_json,
)

RESULT_TAG = "RESULT "
TARGET_SECONDS = 5.0
TARGET_RSS_MIB = 1024.0


def submit_once(n_jobs: int, db_url: str, path: str = "models") -> dict[str, Any]:
    """The four phases of one submission, timed one by one (runs in the child).

    ``path`` "models" builds a pydantic Job per node; "table" hands the same graph over as
    columns (:class:`panray.job_table.JobTable`), validated a column at a time in ``build``.
    """
    import panray  # noqa: F401
    from panray.dag import drp
    from panray.job_table import JobTable, TableWorkflow
    from panray.models import Campaign, Job, Workflow
    from panray.sites import load_catalog
    from panray.store import open_store
    from panray.store.base import NewCampaign
    from panray.submission import build_campaign, build_workflow

    catalog = load_catalog()
    store = open_store(db_url)
    gc.collect()
    rss0 = current_rss_mib()
    t = [time.perf_counter()]
    shape = drp(n_jobs)
    t.append(time.perf_counter())
    cpu0 = time.process_time()
    name = f"bench-submit-{len(shape)}"
    if path == "table":
        table = JobTable.from_columns(name=shape.names, label=shape.labels, parents=shape.parents, tags=shape.tags)
        wf: Any = TableWorkflow.of(table, name=name)
    else:
        jobs = [Job(name=n, label=lb, parents=ps, tags=tg)
                for n, lb, ps, tg in zip(shape.names, shape.labels, shape.parents, shape.tags)]
        wf = Workflow(name=name, jobs=jobs)
        campaign = Campaign(name=wf.name, owner=wf.owner, workflows=[wf])
    t.append(time.perf_counter())
    new = (NewCampaign(name, wf.header.owner, [build_workflow(wf, catalog)]) if path == "table"
           else build_campaign(campaign, catalog))
    t.append(time.perf_counter())
    submitted = store.submit(new)
    t.append(time.perf_counter())
    cpu_s = time.process_time() - cpu0
    per_task = store.job_counts(submitted.workflows[0].workflow_id)
    stored = sum(n for counts in per_task.values() for n in counts.values())
    store.close()
    shape_s, model_s, build_s, store_s = (b - a for a, b in zip(t, t[1:]))
    return {
        "jobs": len(shape), "edges": len(new.workflows[0].edges), "shape_s": shape_s, "model_s": model_s,
        "build_s": build_s, "store_s": store_s, "total_s": model_s + build_s + store_s, "cpu_s": cpu_s,
        "rss_start_mib": round(rss0), "peak_rss_mib": round(peak_rss_mib()), "stored_jobs": stored,
        "ok": stored == len(shape),
    }


def _child(spec: dict[str, Any]) -> None:
    db_url = spec["db_url"] or f"sqlite:///{tempfile.mkdtemp(prefix='panray-submit-')}/panray.db"
    print(RESULT_TAG + json.dumps(submit_once(spec["jobs"], db_url, spec.get("path", "models"))), flush=True)


def run_isolated(n_jobs: int, db_url: str | None, timeout: float, path: str = "models") -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.submit", "--child",
           json.dumps({"jobs": n_jobs, "db_url": db_url, "path": path})]
    root = Path(__file__).resolve().parent.parent
    try:
        done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": "timeout"}
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith(RESULT_TAG)]
    if not lines:
        return {"ok": False, "error": done.stderr.strip().splitlines()[-1:] or f"rc={done.returncode}"}
    return json.loads(lines[-1][len(RESULT_TAG):])


def measure(jobs: list[int], backends: list[str], paths: list[str]) -> list[dict[str, Any]]:
    rows = []
    pg_ctx = postgres_server() if "postgres" in backends else None
    pg = pg_ctx.__enter__() if pg_ctx else None
    try:
        for n in jobs:
            for backend, path in ((b, p) for b in backends for p in paths):
                url = pg.create_database(f"submit_{n}_{int(time.time() * 1000)}") if backend == "postgres" else None
                print(f"-- submit {n} jobs on {backend} as {path} ...", file=sys.stderr, flush=True)
                r = run_isolated(n, url, timeout=600, path=path)
                r["backend"], r["path"] = backend, path
                if r.get("total_s") is not None:
                    r["meets_targets"] = r["total_s"] <= TARGET_SECONDS and r["peak_rss_mib"] <= TARGET_RSS_MIB
                rows.append(r)
    finally:
        if pg_ctx:
            pg_ctx.__exit__(None, None, None)
    return rows


COLUMNS = ["backend", "path", "jobs", "edges", "shape_s", "model_s", "build_s", "store_s", "total_s", "cpu_s", "peak_rss_mib",
           "meets_targets", "ok"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, action="append", help="workflow size (repeatable); default 200000")
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument("--paths", default="models,table", help="Job models per node, and/or the columnar table path")
    ap.add_argument("--json", action="store_true", help="also print the result JSON on stdout")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(json.loads(args.child))
        return 0
    info, vers = machine_info(), versions()
    print_header("submit: validate and persist one DRP-shaped workflow", info, vers)
    print(f"targets: total <= {TARGET_SECONDS:.0f} s, peak RSS <= {TARGET_RSS_MIB:.0f} MiB")
    rows = measure(args.jobs or [200_000], [b for b in args.backends.split(",") if b],
                   [p for p in args.paths.split(",") if p])
    print(format_table(rows, COLUMNS))
    payload = {"benchmark": "submit", "machine": info, "versions": vers, "results": rows,
               "targets": {"total_s": TARGET_SECONDS, "peak_rss_mib": TARGET_RSS_MIB}}
    print(f"results: {write_json('submit', payload)}")
    if args.json:
        print(json.dumps(payload, indent=2, default=str))
    return 0 if all(r.get("ok") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
