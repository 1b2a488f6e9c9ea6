"""Real subprocess payloads: panray running N ``true`` jobs vs a bare fork/exec loop and raw Ray, same run.

What is measured (each system in its own interpreter, its process tree's peak RSS sampled)
    * **bare**: ``subprocess.run(["true"])`` N times in one process: the fork/exec cost alone.
    * **raw Ray**: one ``@ray.remote`` task per job running ``subprocess.run(["true"])`` on a plain
      ``ray.init(address="local", num_cpus=2)`` (a cluster of its own, never another session's), all
      submitted at once, timed to ``ray.get`` of every ref.
    * **panray**: one workflow of N independent jobs with ``command=["true"]`` on the embedded
      cluster: each payload gets its work directory, stdout/stderr files, the memory monitor,
      log shipping to the local sink, the upload of its files to the local bucket, and every
      state change persisted. Timed from submit to the end of ``wait``.

    * **pilot runner (no Ray)**: the pilot's part alone, one slot: each payload through
      ``PayloadProcess`` from start to finish (work directory, files, memory monitor, log shipping,
      uploads), CPU per job of the process and its payloads beside the bare loop's.

Targets (issue 18): panray >= 0.80 x the bare loop, ahead of raw Ray, peak RSS no higher than raw Ray's.

Usage
    python -m benchmarks.subprocess_payloads --jobs 3000 [--db URL]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
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


def _cpu_s() -> float:
    """CPU seconds of this process and of its waited-for children."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def run_bare(n: int) -> dict[str, Any]:
    t0, c0 = time.perf_counter(), _cpu_s()
    for _ in range(n):
        subprocess.run(["true"], check=True)
    s = time.perf_counter() - t0
    return {"system": "bare fork/exec", "jobs": n, "seconds": s, "cpu_ms_per_job": (_cpu_s() - c0) * 1e3 / n,
            "ok": True}


def run_runner(n: int) -> dict[str, Any]:
    """The pilot's own part, without Ray: one slot running each payload to its end (start, wait,
    last lines shipped, prmon files, uploads), as the pilot's slot and finisher threads do."""
    from panray.config import Settings
    from panray.core.messages import Dispatch
    from panray.core.payload_runner import PayloadProcess, RunnerServices
    from panray.logging_bridge import make_object_store, make_sink
    from panray.payload import encode_command

    settings = Settings(home=Path(tempfile.mkdtemp(prefix="panray-runner-")))
    services = RunnerServices(work_dir=settings.work_dir, sink=make_sink(settings),
                              object_store=make_object_store(settings))
    payload = encode_command(["true"])

    def one(job_id: int) -> int | None:
        d = Dispatch(job_id, 1, 1, 1, "true", payload, "{}", 2000, 1, "USDF", "workflow-manager:bench:1")
        proc = PayloadProcess(d, "pilot:USDF:0", services)
        return proc.finish(proc.execute()).exit_code

    warm = [one(n + k) for k in range(20)]  # imports and first files out of the figure
    t0, c0 = time.perf_counter(), _cpu_s()
    codes = [one(k) for k in range(n)]
    s, cpu = time.perf_counter() - t0, _cpu_s() - c0
    services.close()
    return {"system": "pilot runner (no Ray)", "jobs": n, "seconds": s, "cpu_ms_per_job": cpu * 1e3 / n,
            "ok": codes + warm == [0] * (n + 20)}


def run_ray(n: int) -> dict[str, Any]:
    ray = start_raw_ray()

    @ray.remote
    def true() -> int:
        return subprocess.run(["true"]).returncode

    ray.get([true.remote() for _ in range(20)])  # workers up, as panray's pilots are
    t0 = time.perf_counter()
    codes = ray.get([true.remote() for _ in range(n)])
    s = time.perf_counter() - t0
    ray.shutdown()
    return {"system": "raw Ray", "jobs": n, "seconds": s, "ok": codes == [0] * n}


def run_panray(n: int, db_url: str | None) -> dict[str, Any]:
    import panray  # noqa: F401  (first: keeps Ray on loopback)
    from panray import Job, Panray, Settings, Workflow

    wf = Workflow(name=f"true-{n}", jobs=[Job(name=f"t{k}", label=f"l{k % 4}", command=["true"]) for k in range(n)])
    with Panray(Settings(home=Path(tempfile.mkdtemp(prefix="panray-subprocess-")), db_url=db_url)) as pr:
        t_setup = time.perf_counter()
        pr.runtime
        setup_s = time.perf_counter() - t_setup
        t0 = time.perf_counter()
        [wf_id] = pr.submit(wf)
        status = pr.wait([wf_id])[wf_id]
        s = time.perf_counter() - t0
        finished = pr.status(wf_id)[0].jobs.get("finished", 0)
    return {"system": "panray", "jobs": n, "seconds": s, "setup_s": setup_s,
            "ok": status == "Finished" and finished == n}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=3000)
    ap.add_argument("--db", help="state store URL (default: a fresh SQLite file)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        run = {"bare": lambda: run_bare(spec["jobs"]), "ray": lambda: run_ray(spec["jobs"]),
               "runner": lambda: run_runner(spec["jobs"]),
               "panray": lambda: run_panray(spec["jobs"], spec.get("db_url"))}[spec["system"]]
        print(RESULT_TAG + json.dumps(run()), flush=True)
        return 0
    info, vers = machine_info(), versions()
    print_header("subprocess: `true` payloads", info, vers)
    rows = []
    for system in ("bare", "runner", "panray", "ray"):
        print(f"-- running {system} ...", file=sys.stderr, flush=True)
        r = run_isolated("benchmarks.subprocess_payloads", {"system": system, "jobs": args.jobs, "db_url": args.db},
                         timeout=300 + args.jobs / 10)
        r.setdefault("system", system)
        if r.get("seconds"):
            r["jobs_per_s"] = r["jobs"] / r["seconds"]
        rows.append(r)
    rate = {r["system"]: r.get("jobs_per_s") for r in rows}
    for r in rows:
        for base, name in (("bare fork/exec", "vs_bare"), ("raw Ray", "vs_ray")):
            r[name] = r["jobs_per_s"] / rate[base] if r.get("jobs_per_s") and rate.get(base) else None
    print(format_table(rows, ["system", "jobs", "seconds", "jobs_per_s", "vs_bare", "vs_ray", "cpu_ms_per_job",
                              "peak_rss_mib", "setup_s", "ok"]))
    print("targets: panray >= 0.80 x bare, > 1.00 x raw Ray, peak RSS <= raw Ray's")
    path = write_json("subprocess", {"machine": info, "versions": vers, "results": rows})
    print(f"results: {path}")
    return 0 if all(r.get("ok") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
