"""The web monitor at 200k jobs: how fast its pages answer, and how heavy they are.

A DRP-shaped workflow of about 200k jobs goes into a throwaway PostgreSQL (and, side by side in
the same run, an SQLite file: ``--backends``) through the store's submit path, then one batch puts
it mid-run (finished, failed with varied diagnostics, pruned,
running, waiting; attempts with max PSS; brokerage decisions). A real uvicorn on 127.0.0.1 serves
:func:`panray.monitor.web.monitor_router`; each page's HTML fragment (what the browser fetches
and polls, behind an RS256 token) is requested ``--requests`` times in a row.

Target: p95 <= 300 ms for the workflow page, a filtered jobs page and a job page; no page ships
all jobs (the page weight stays bounded whatever the workflow's size).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from benchmarks.common import (
    TESTS_DIR,
    format_table,
    machine_info,
    postgres_server,
    print_header,
    versions,
    write_json,
)

TARGET_P95_MS = 300.0
COLUMNS = ["backend", "page", "requests", "cold_ms", "p50_ms", "p95_ms", "max_ms", "bytes", "rows_shown", "meets_target"]


def _populate(store: Any, workflow_id: int, seed: int = 1) -> dict[str, int]:
    """Put the stored workflow mid-run in one batch; returns a few ids the pages are asked for."""
    from panray.store import AttemptRow, ChangeBatch, DecisionRow, JobState

    rng = random.Random(seed)
    jobs = store.jobs(workflow_id)
    sites = ("USDF", "FrDF", "UKDF")
    now = time.time()
    batch = ChangeBatch()
    failed_example = 0
    for j in jobs:
        r = rng.random()
        site = sites[j.idx % 3]
        start, end = now - 3600 + rng.random() * 1800, None
        if r < 0.60:
            status, code, error, diag, end = "finished", 0, None, None, start + rng.random() * 600
        elif r < 0.65:
            status, code, error = "failed", rng.choice((1, 2, 137, 139)), "payload"
            diag = rng.choice((f"payload exited with code {code}",
                               f"FileNotFoundError: /repo/main/visit_{rng.randrange(10**6)}/calexp.fits",
                               f"killed: PSS {rng.randrange(4 * 10**6, 9 * 10**6)} kB above request 4000 MB"))
            end = start + rng.random() * 600
            failed_example = failed_example or j.job_id
        elif r < 0.67:
            status, code, error, diag, start, site = "closed", None, "pruned", "an ancestor failed", None, None
        elif r < 0.77:
            status, code, error, diag = "running", None, None, None
        else:
            status, code, error, diag, start, site = "pending", None, None, None, None, None
        if status == "pending":
            continue
        batch.jobs.append(JobState(j.job_id, status, 1, site, f"pilot:{site}:0" if site else None, start, end, code,
                                   error, diag, j.request_memory, now))
        if end is not None:
            batch.attempts.append(AttemptRow(j.job_id, 1, status, site, f"pilot:{site}:0", start, end, code, error,
                                             diag, j.request_memory, rng.randrange(500_000, 3_000_000), None))
        if site is not None and j.idx % 10 == 0:
            batch.decisions.append(DecisionRow(j.job_id, 1, json.dumps({"site": site, "weights": {s: 0.3 for s in sites}}),
                                               start or now))
    store.apply(batch)
    label = jobs[len(jobs) // 2].label
    return {"failed_job": failed_example, "n_jobs": len(jobs), "label_jobs": sum(1 for j in jobs if j.label == label),
            "label": label}  # type: ignore[dict-item]


def _time(client: Any, url: str, n: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    first = client.get(url)
    cold = (time.perf_counter() - t0) * 1000
    first.raise_for_status()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = client.get(url)
        samples.append((time.perf_counter() - t0) * 1000)
        r.raise_for_status()
    samples.sort()
    return {"requests": n, "cold_ms": cold, "p50_ms": statistics.median(samples),
            "p95_ms": samples[min(len(samples) - 1, int(round(0.95 * (len(samples) - 1))))], "max_ms": samples[-1],
            "bytes": len(first.content), "rows_shown": first.text.count("<tr>") - first.text.count("<thead>")}


def run(n_jobs: int, requests: int, backend: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    import httpx
    from fastapi import FastAPI

    import panray  # noqa: F401
    from panray import Campaign, Job, Panray, Settings, Workflow
    from panray.dag import drp
    from panray.monitor.reader import PanrayReader
    from panray.monitor.web import monitor_router
    from panray.submission import build_campaign

    if str(TESTS_DIR) not in sys.path:
        sys.path.insert(0, str(TESTS_DIR))
    from monitor_auth import TokenIssuer, serve  # type: ignore[import-not-found]

    with postgres_server() if backend == "postgres" else nullcontext() as pg:
        url = pg.create_database("monitor_bench") if pg else None  # None: SQLite in the fresh home
        pr = Panray(Settings(home=Path(tempfile.mkdtemp(prefix="panray-monitor-bench-")), db_url=url))
        shape = drp(n_jobs)
        t0 = time.perf_counter()
        wf = Workflow(name=f"bench-monitor-{len(shape)}", owner="alice", jobs=[
            Job(name=n, label=lb, parents=ps, tags=tg)
            for n, lb, ps, tg in zip(shape.names, shape.labels, shape.parents, shape.tags)])
        [sub] = pr.store.submit(build_campaign(Campaign(name=wf.name, owner="alice", workflows=[wf]),
                                               pr.catalog)).workflows
        submit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ids = _populate(pr.store, sub.workflow_id)
        populate_s = time.perf_counter() - t0
        issuer = TokenIssuer()
        app = FastAPI()
        app.include_router(monitor_router(PanrayReader(pr), issuer.authorize))
        wf_id, base = sub.workflow_id, "/monitor/fragment"
        pages = [
            ("workflow list", f"{base}/"),
            ("workflow page", f"{base}/workflows/{wf_id}"),
            ("jobs: status=failed", f"{base}/workflows/{wf_id}/jobs?status=failed"),
            (f"jobs: label={ids['label']} running", f"{base}/workflows/{wf_id}/jobs?label={ids['label']}&status=running"),
            ("jobs: site=FrDF exit 137", f"{base}/workflows/{wf_id}/jobs?site=FrDF&exit_code=137"),
            ("jobs: page after idx 150000", f"{base}/workflows/{wf_id}/jobs?after=150000&offset=150000"),
            ("jobs: longest first", f"{base}/workflows/{wf_id}/jobs?sort=-duration"),
            ("job page (failed job)", f"{base}/jobs/{ids['failed_job']}"),
            ("sites", f"{base}/sites"),
        ]
        rows = []
        with serve(app) as root, httpx.Client(base_url=root, timeout=120,
                                              headers={"Authorization": f"Bearer {issuer.token('alice')}"}) as client:
            for name, path in pages:
                row = {"backend": backend, "page": name, **_time(client, path, requests)}
                row["meets_target"] = row["p95_ms"] <= TARGET_P95_MS
                rows.append(row)
                print(format_table([row], COLUMNS).splitlines()[-1], flush=True)
        pr.close()
    return rows, {"backend": backend, "jobs": ids["n_jobs"], "submit_s": submit_s, "populate_s": populate_s}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=200_000)
    ap.add_argument("--requests", type=int, default=40, help="timed requests per page (after one cold one)")
    ap.add_argument("--backends", default="postgres,sqlite", help="state stores, measured one after the other")
    args = ap.parse_args(argv)
    info, vers = machine_info(), versions()
    print_header("monitor: web pages over a 200k-job workflow in PostgreSQL and SQLite", info, vers)
    print(f"target: p95 <= {TARGET_P95_MS:.0f} ms (workflow page, filtered jobs pages, job page)")
    rows, setups = [], []
    for backend in args.backends.split(","):
        more, setup = run(args.jobs, args.requests, backend)
        rows += more
        setups.append(setup)
        print(f"{backend}: {setup['jobs']:,} jobs, submitted in {setup['submit_s']:.1f} s, put mid-run in "
              f"{setup['populate_s']:.1f} s")
    print(format_table(rows, COLUMNS))
    payload = {"benchmark": "monitor", "machine": info, "versions": vers, "setup": setups, "results": rows,
               "targets": {"p95_ms": TARGET_P95_MS}}
    print(f"results: {write_json('monitor', payload)}")
    return 0 if all(r["meets_target"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
