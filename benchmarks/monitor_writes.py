"""What keeping the monitor's aggregates costs the store's writers: the same job lifecycles written
with and without the aggregates (changed per batch by the store since schema version 5, by
triggers before), on SQLite and PostgreSQL, rounds alternating.

A DRP-shaped workflow goes into a fresh store; each job then goes through seven status changes
(defined ... finished, with its history rows and, at the end, its attempt record) in batches of
``--batch`` jobs, as a workflow manager's writer sends them: a batch per status change, or with
``--one-flush`` all seven changes of each job in one batch (a fast no-op job between two flushes
of its manager, whose history the store keeps as one path row). Measured is CPU time (this
process, plus the PostgreSQL backend serving its connection), which the machine's other load
disturbs far less than wall time; the best of ``--rounds`` is kept per variant, also per job.

Usage: python -m benchmarks.monitor_writes [--jobs 10000] [--rounds 3] [--batch 500] [--one-flush]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import format_table, machine_info, postgres_server, print_header, versions, write_json

STEPS = ("defined", "assigned", "activated", "sent", "starting", "running", "finished")
COLUMNS = ["backend", "aggregates", "rounds", "best_cpu_s", "us_per_job", "cost"]


def _cpu(store: Any, url: str | None) -> float:
    """CPU seconds of this process and, on PostgreSQL, of the backend serving the store."""
    own = time.process_time()
    if url is None:
        return own
    pid = store._connection().info.backend_pid  # the store's own connection: its backend does the work
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return own + (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write_lifecycles(wf: Any, url: str | None, triggers: bool, batch: int, one_flush: bool = False) -> float:
    from panray import Campaign, Panray, Settings
    from panray.store import AttemptRow, ChangeBatch, HistoryRow, JobState
    from panray.submission import build_campaign

    pr = Panray(Settings(home=Path(tempfile.mkdtemp(prefix="panray-monitor-writes-")), db_url=url))
    store = pr.store
    if not triggers:
        store.stop_monitor_aggregates()
    [sub] = store.submit(build_campaign(Campaign(name=wf.name, owner="alice", workflows=[wf]), pr.catalog)).workflows
    jobs = store.jobs(sub.workflow_id)
    t0 = _cpu(store, url)
    for i in range(0, len(jobs), batch):
        chunk = jobs[i:i + batch]
        flush: list[Any] = []
        for k, status in enumerate(STEPS):
            now, end = time.time(), status == "finished"
            changes = ChangeBatch(
                jobs=[JobState(j.job_id, status, 1, "USDF" if k else None, "pilot:USDF:0" if k > 2 else None,
                               now if k >= 5 else None, now if end else None, 0 if end else None, None, None,
                               j.request_memory, now) for j in chunk],
                history=[HistoryRow(j.job_id, 1, status, now, STEPS[k - 1] if k else "", "bench") for j in chunk])
            if end:
                changes.attempts = [AttemptRow(j.job_id, 1, status, "USDF", "pilot:USDF:0", now, now, 0, None, None,
                                               j.request_memory, 1000, None) for j in chunk]
            if one_flush:
                flush.append(changes)
            else:
                store.apply(changes)
        if one_flush:
            store.apply(ChangeBatch.merged(flush))
    spent = _cpu(store, url) - t0
    pr.close()
    return spent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--one-flush", action="store_true", help="all seven changes of a job in one batch")
    args = ap.parse_args(argv)
    import panray  # noqa: F401
    from panray import Job, Workflow
    from panray.dag import drp

    info, vers = machine_info(), versions()
    print_header("monitor_writes: store write CPU with and without the monitor's aggregates", info, vers)
    shape = drp(args.jobs)
    wf = Workflow(name=f"bench-writes-{len(shape)}", owner="alice", jobs=[
        Job(name=n, label=lb, parents=ps, tags=tg) for n, lb, ps, tg in zip(shape.names, shape.labels, shape.parents, shape.tags)])
    best: dict[tuple[str, bool], float] = {}
    with postgres_server() as pg:
        for r in range(args.rounds):
            for backend in ("sqlite", "postgres"):
                for triggers in (True, False)[:: 1 if r % 2 == 0 else -1]:  # alternate who goes first
                    url = pg.create_database(f"writes_{r}_{int(triggers)}") if backend == "postgres" else None
                    spent = write_lifecycles(wf, url, triggers, args.batch, args.one_flush)
                    print(f"round {r}: {backend}, aggregates {'on' if triggers else 'off'}: {spent:.2f} s CPU", flush=True)
                    best[(backend, triggers)] = min(spent, best.get((backend, triggers), spent))
    rows = [{"backend": b, "aggregates": t, "rounds": args.rounds, "best_cpu_s": best[(b, t)],
             "us_per_job": best[(b, t)] / len(shape) * 1e6,
             "cost": best[(b, True)] / best[(b, False)] - 1 if t else None} for b in ("sqlite", "postgres") for t in (True, False)]
    print(format_table(rows, COLUMNS))
    print(f"results: {write_json('monitor_writes', {'benchmark': 'monitor_writes', 'machine': info, 'versions': vers, 'jobs': len(shape), 'results': rows})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
