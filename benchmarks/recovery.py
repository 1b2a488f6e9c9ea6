"""Time to recover from each fault, and the duplicate runs it caused (target 0).

What is measured
    For each fault, one workflow of N marker-writing jobs (``tests/faults.py``: each run appends
    a start and an end line, with its attempt number and site, to its job's file), one after
    the other on one embedded cluster and SQLite store (the next starts once every site has all
    its pilots again). Once the run is under way the fault is injected with SIGKILL and nothing
    else is done: no ``panray resume``, no restart. Faults:

    * ``pilot-per-site``: one busy pilot at FrDF and one at UKDF;
    * ``site-pilots``: every pilot of UKDF while its queue holds jobs;
    * ``manager``: the workflow's manager.

    Reported per fault: seconds from the kill to the first run completing after it
    (``first_end_s``), until every run the fault cut short has completed again (``healed_s``),
    the workflow's total time, and from the markers against the store: jobs lost, duplicate
    runs (a job run again after a reported completed run, or one attempt number run twice),
    overlapping attempts, and reruns of completions that a killed pilot never reported
    (``lost_with_pilot``: those outcomes died with the pilot's memory).

Usage
    python -m benchmarks.recovery [--jobs 300] [--seconds 0.4] [--faults pilot-per-site,site-pilots,manager]
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

from benchmarks.common import TESTS_DIR, format_table, machine_info, print_header, versions, write_json  # noqa: E402

FAULTS = ("pilot-per-site", "site-pilots", "manager")
TIMERS = {"heartbeat_interval": 0.5, "heartbeat_timeout": 10.0, "sent_timeout": 30.0, "activated_timeout": 5.0}


def _victims(pr: Any, wf_id: int, fault: str) -> tuple[list[str], frozenset[str]]:
    """The actors to kill once the run is under way, and the sites whose pilots they are."""
    import ray

    from faults import wait_for  # type: ignore[import-not-found]
    from panray.actors.manager_pool import host_of
    from panray.actors.names import manager_name

    if fault == "manager":
        wait_for(lambda: len(pr.jobs(wf_id, status=["finished"])) >= 20, timeout=120, what="20 jobs finished")
        return [str(host_of(manager_name(pr.settings.resolved_db_url, wf_id)))], frozenset()
    if fault == "site-pilots":
        wait_for(lambda: (r := next(x for x in ray.get(pr.runtime.brokerage.sites.remote()) if x["site"] == "UKDF"))
                 ["queued"] > 0 and r["running"] > 0, timeout=120, what="UKDF busy with a queue")
        return [f"pilot:UKDF:{k}" for k in range(pr.catalog.get("UKDF").pilots)], frozenset({"UKDF"})

    def busy() -> list[str] | None:
        running = pr.jobs(wf_id, status=["running"])
        found = [next((j.pilot for j in running if j.site == s and j.pilot), None) for s in ("FrDF", "UKDF")]
        return found if all(found) else None  # type: ignore[return-value]

    return wait_for(busy, timeout=120, what="a busy pilot at FrDF and at UKDF"), frozenset({"FrDF", "UKDF"})


def _all_pilots(pr: Any) -> bool:
    import ray

    return all(r["pilots"] == pr.catalog.get(r["site"]).pilots for r in ray.get(pr.runtime.brokerage.sites.remote()))


def run(pr: Any, fault: str, n_jobs: int, seconds: float) -> dict[str, Any]:
    from faults import Fault, audit, first_end_after, healed_after, kill9, marker_workflow, wait_for

    wait_for(lambda: _all_pilots(pr), timeout=120, what="every site to have all its pilots")
    marks = pr.settings.home / f"marks-{fault}"
    t0 = time.time()
    [wf_id] = pr.submit(marker_workflow(f"recovery-{fault}", n_jobs, marks, seconds))
    names, sites = _victims(pr, wf_id, fault)
    at = kill9(names)
    status = pr.wait([wf_id], timeout=600)[wf_id]
    total_s = time.time() - t0
    result = audit(pr.jobs(wf_id), marks, [Fault(at, sites)])
    return {
        "fault": fault, "killed": len(names), "jobs": n_jobs, "status": status,
        "first_end_s": first_end_after(marks, at), "healed_s": healed_after(marks, at), "total_s": total_s,
        "runs": result.runs, "lost": len(result.lost), "duplicates": result.duplicates,
        "overlapping": len(result.overlapping), "lost_with_pilot": len(result.lost_with_pilot),
        "ok": status == "Finished" and result.clean(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=300)
    ap.add_argument("--seconds", type=float, default=0.4, help="seconds each payload sleeps")
    ap.add_argument("--faults", default=",".join(FAULTS), help=f"comma-separated, of {', '.join(FAULTS)}")
    args = ap.parse_args(argv)
    faults = [f for f in args.faults.split(",") if f]
    unknown = sorted(set(faults) - set(FAULTS))
    if unknown:
        ap.error(f"unknown fault {', '.join(unknown)}; known: {', '.join(FAULTS)}")
    if str(TESTS_DIR) not in sys.path:
        sys.path.insert(0, str(TESTS_DIR))
    info, vers = machine_info(), versions()
    print_header("recovery: time to recover and duplicate runs per fault (kill -9)", info, vers)
    import panray  # noqa: F401  (first: keeps Ray on loopback)
    from panray import Panray, Settings

    home = Path(tempfile.mkdtemp(prefix="panray-recovery-"))
    with Panray(Settings(home=home, flush_interval=0.05, **TIMERS)) as pr:
        pr.runtime
        results = [run(pr, f, args.jobs, args.seconds) for f in faults]
    cols = ["fault", "killed", "jobs", "first_end_s", "healed_s", "total_s", "runs", "lost", "duplicates",
            "overlapping", "lost_with_pilot", "status", "ok"]
    print(format_table(results, cols))
    print("targets: lost 0, duplicates 0, overlapping 0; finished without resume or restart")
    path = write_json("recovery", {"machine": info, "versions": vers, "results": results})
    print(f"results: {path}")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
