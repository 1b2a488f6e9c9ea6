"""Real subprocess payloads: panray running N ``true`` jobs vs a bare fork/exec loop, same run.

What is measured
    * **bare**: ``subprocess.run(["true"])`` N times in one process: the fork/exec cost alone.
    * **panray**: one workflow of N independent jobs with ``command=["true"]`` on the embedded
      3-site cluster: each payload gets its work directory, stdout/stderr files, the memory
      monitor, log shipping to the local sink, the upload of its files to the local bucket,
      and every state change persisted. Timed from submit to the end of ``wait``.

Target (issue 8): panray >= 80% of the bare rate measured in the same run.

Usage
    python -m benchmarks.subprocess_payloads --jobs 5000 [--db URL]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import format_table, machine_info, print_header, versions, write_json  # noqa: E402


def run_bare(n: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    for _ in range(n):
        subprocess.run(["true"], check=True)
    s = time.perf_counter() - t0
    return {"system": "bare fork/exec", "jobs": n, "seconds": s, "jobs_per_s": n / s}


def run_panray(n: int, db_url: str | None) -> dict[str, Any]:
    import panray  # noqa: F401  (first: keeps Ray on loopback)
    from panray import Job, Panray, Settings, Workflow

    wf = Workflow(name=f"true-{n}", jobs=[Job(name=f"t{k}", label=f"l{k % 4}", command=["true"]) for k in range(n)])
    with Panray(Settings(home=Path(tempfile.mkdtemp(prefix="panray-subprocess-")), db_url=db_url)) as pr:
        pr.runtime
        t0 = time.perf_counter()
        [wf_id] = pr.submit(wf)
        status = pr.wait([wf_id])[wf_id]
        s = time.perf_counter() - t0
        finished = pr.status(wf_id)[0].jobs.get("finished", 0)
    return {"system": "panray", "jobs": n, "seconds": s, "jobs_per_s": n / s, "ok": status == "Finished" and finished == n}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=5000)
    ap.add_argument("--db", help="state store URL (default: a fresh SQLite file)")
    args = ap.parse_args(argv)
    info, vers = machine_info(), versions()
    print_header("subprocess: `true` payloads", info, vers)
    bare = run_bare(args.jobs)
    pan = run_panray(args.jobs, args.db)
    pan["vs_bare"] = pan["jobs_per_s"] / bare["jobs_per_s"]
    bare["vs_bare"] = 1.0
    print(format_table([pan, bare], ["system", "jobs", "seconds", "jobs_per_s", "vs_bare", "ok"]))
    print("target: panray >= 0.80 x bare")
    path = write_json("subprocess", {"machine": info, "versions": vers, "results": [pan, bare]})
    print(f"results: {path}")
    return 0 if pan.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
