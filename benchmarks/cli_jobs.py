"""``panray jobs`` and ``panray --help`` at 200k jobs: wall time of the whole command, as a user waits.

A DRP-shaped workflow of about ``--jobs`` jobs goes into a fresh SQLite store and a throwaway
PostgreSQL through the store's submit path and is put mid-run by the monitor benchmark's batch
(finished, failed with varied diagnostics, pruned, running, waiting). Each command runs as its
own ``python -m panray.cli`` process (start-up and imports included), ``--runs`` times; the
unlimited listing of every job is timed once beside it, for the ratio.

Targets: ``jobs WF --limit 50`` under 1 s, ``--help`` under 0.5 s. ``in_process_s`` is the same
command called in this process once imported: what the store and the rendering cost, without the
interpreter's start (which a loaded machine stretches most).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import format_table, machine_info, postgres_server, print_header, versions, write_json
from benchmarks.monitor import _populate

COLUMNS = ["backend", "command", "runs", "median_s", "max_s", "in_process_s", "lines", "meets_target"]


def _time(argv: list[str], runs: int) -> tuple[list[float], int]:
    times, lines = [], 0
    for _ in range(runs):
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "panray.cli", *argv], capture_output=True, text=True, timeout=600)
        times.append(time.perf_counter() - t0)
        if out.returncode != 0:
            raise RuntimeError(f"panray {' '.join(argv)} failed: {out.stderr[-500:]}")
        lines = len(out.stdout.splitlines())
    return times, lines


def _in_process(argv: list[str], runs: int) -> float:
    """Median seconds of the command itself (imports done): what the store and the rendering cost."""
    import contextlib
    import io

    from panray.cli import main

    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            main(argv)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _stage(url: str, n_jobs: int) -> int:
    from panray import Campaign, Job, Workflow
    from panray.dag import drp
    from panray.sites import load_catalog
    from panray.store import open_store
    from panray.submission import build_campaign

    shape = drp(n_jobs)
    wf = Workflow(name=f"bench-cli-{len(shape)}", owner="alice", jobs=[
        Job(name=n, label=lb, parents=ps, tags=tg) for n, lb, ps, tg in zip(shape.names, shape.labels, shape.parents,
                                                                            shape.tags)])
    store = open_store(url)
    [sub] = store.submit(build_campaign(Campaign(name=wf.name, owner="alice", workflows=[wf]),
                                        load_catalog())).workflows
    _populate(store, sub.workflow_id)
    store.close()
    return sub.workflow_id


def run(n_jobs: int, runs: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    home = Path(tempfile.mkdtemp(prefix="panray-cli-bench-"))
    with postgres_server() as pg:
        for backend, url in (("sqlite", f"sqlite://{home}/state.db"), ("postgres", pg.create_database("cli_bench"))):
            wf = _stage(url, n_jobs)
            base = ["--home", str(home), "--db", url]
            cases = [
                ("jobs WF --limit 50", [*base, "jobs", str(wf), "--limit", "50"], runs, 1.0),
                ("jobs WF --status failed --limit 50", [*base, "jobs", str(wf), "--status", "failed", "--limit", "50"],
                 runs, 1.0),
                ("jobs WF --sort duration --limit 50", [*base, "jobs", str(wf), "--sort", "duration", "--limit", "50"],
                 runs, 1.0),
                ("jobs WF --offset 199000 --limit 50", [*base, "jobs", str(wf), "--offset", str(n_jobs - 1000),
                                                        "--limit", "50"], runs, 1.0),
                ("errors WF", [*base, "errors", str(wf)], runs, None),
                ("jobs WF (all, before)", [*base, "jobs", str(wf)], 1, None),
                ("--help", ["--help"], runs, 0.5),
            ]
            for name, argv, n, target in cases:
                times, lines = _time(argv, n)
                med = statistics.median(times)
                inner = _in_process(argv, n) if argv[0] != "--help" else None
                rows.append({"backend": backend, "command": name, "runs": n, "median_s": round(med, 3),
                             "max_s": round(max(times), 3), "in_process_s": None if inner is None else round(inner, 3),
                             "lines": lines,
                             "meets_target": "-" if target is None else ("yes" if med < target else "no")})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=200_000)
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args(argv)
    info, vers = machine_info(), versions()
    print_header(f"panray CLI at {args.jobs:,} jobs", info, vers)
    rows = run(args.jobs, args.runs)
    print(format_table(rows, COLUMNS))
    write_json("cli_jobs", {"machine": info, "versions": vers, "jobs": args.jobs, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
