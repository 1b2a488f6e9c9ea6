"""The ``panray`` command: demo, submit, status, jobs, job, cancel, logs, sites, serve."""

from __future__ import annotations

import argparse
import json
import sys
import time
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from panray import monitor
from panray.api import Panray
from panray.config import Settings
from panray.exceptions import PanrayError
from panray.statuses import FINAL_JOB_STATES

if TYPE_CHECKING:  # the logging bridge pulls in the Google clients: imported only by `panray logs`
    from panray.logging_bridge import LogSink


def _settings(args: argparse.Namespace) -> Settings:
    s = Settings.load(args.config)
    updates = {}
    if args.db:
        updates["db_url"] = args.db
    if args.home:
        updates["home"] = Path(args.home)
    return s.model_copy(update=updates) if updates else s


def _run_and_show(pr: Panray, ids: list[int], wait: bool) -> int:
    if not wait:
        print(" ".join(map(str, ids)))
        return 0
    statuses = pr.wait(ids, progress=True)
    print(monitor.workflows_table([s for i in ids for s in pr.status(i)]))
    return 0 if all(v == "Finished" for v in statuses.values()) else 1


def cmd_demo(pr: Panray, args: argparse.Namespace) -> int:
    from panray.demo import demo_workflow

    wf = demo_workflow(visits=args.visits, detectors=args.detectors)
    ids = pr.submit(wf)
    print(f"submitted demo workflow {ids[0]}: {len(wf.jobs) + 1} jobs across {', '.join(pr.catalog.names())}")
    code = _run_and_show(pr, ids, wait=True)
    per_site: dict[str, int] = {}
    for j in pr.jobs(ids[0]):
        per_site[j.site or "-"] = per_site.get(j.site or "-", 0) + 1
    print("\njobs per site: " + ", ".join(f"{k} {v}" for k, v in sorted(per_site.items())))
    return code


def cmd_submit(pr: Panray, args: argparse.Namespace) -> int:
    from panray.models import load_campaign_file

    campaign = load_campaign_file(args.file)
    ids = pr.submit_campaign(campaign)
    return _run_and_show(pr, ids, wait=not args.no_wait)


def cmd_status(pr: Panray, args: argparse.Namespace) -> int:
    rows = pr.status(args.workflow)
    print(monitor.to_json(rows) if args.json else monitor.workflows_table(rows))
    return 0


def cmd_jobs(pr: Panray, args: argparse.Namespace) -> int:
    if args.quanta:
        quanta = [q for q in pr.store.quanta(args.workflow) if not args.status or q.status in args.status]
        print(monitor.to_json(quanta) if args.json else monitor.quanta_table(quanta))
        return 0
    rows = pr.jobs(args.workflow, status=args.status)
    pss = pr.store.max_pss(args.workflow)
    print(monitor.to_json(monitor.job_records(rows, pss)) if args.json else monitor.jobs_table(rows, pss))
    return 0


def cmd_job(pr: Panray, args: argparse.Namespace) -> int:
    job = pr.store.job(args.job)
    attempts = pr.store.attempts(args.job)
    if args.json:
        print(monitor.to_json([{"job": job._asdict(), "attempts": [a._asdict() for a in attempts]}]))
        return 0
    print(monitor.jobs_table([job], {a.job_id: a.max_pss_kb for a in attempts[-1:] if a.max_pss_kb is not None}))
    print()
    print(monitor.attempts_table(attempts) if attempts else "no ended attempt yet")
    transfers = pr.store.transfers(args.job)
    if transfers:
        print("\ninputs transferred (the job ran away from them):")
        print(monitor.table(["attempt", "dataset", "from", "to"],
                            [(t.attempt_nr, t.dataset, t.source, t.destination) for t in transfers]))
    return 0


def cmd_cancel(pr: Panray, args: argparse.Namespace) -> int:
    reached = pr.cancel(args.workflow, task_id=args.task, job_ids=args.job)
    if args.task is None and args.job is None:
        print(f"workflow {args.workflow}: cancel " + ("sent to its manager" if reached else "recorded (no manager running)"))
        return 0
    if not reached:
        print(f"workflow {args.workflow}: nothing cancelled, no manager running", file=sys.stderr)
        return 1
    parts = ([f"task {args.task}"] if args.task is not None else []) + [f"job {j}" for j in args.job or ()]
    print(f"workflow {args.workflow}: cancel of {', '.join(parts) or 'no job'} sent to its manager")
    return 0


def cmd_retry(pr: Panray, args: argparse.Namespace) -> int:
    pr.retry(args.workflow)
    print(f"workflow {args.workflow}: rerunning failed, cancelled and pruned jobs")
    return _run_and_show(pr, [args.workflow], wait=not args.no_wait)


def cmd_resume(pr: Panray, args: argparse.Namespace) -> int:
    ids = pr.resume()
    if not ids:
        print("no workflow to resume")
        return 0
    print("resuming workflows " + " ".join(map(str, ids)))
    return _run_and_show(pr, ids, wait=not args.no_wait)


def cmd_prompt_notify(pr: Panray, args: argparse.Namespace) -> int:
    from panray import prompt

    detectors = [int(d) for d in args.detectors.split(",")] if args.detectors else None
    prompt.check_detectors(args.instrument, detectors or ())
    prompt.start(pr.settings, catalog=pr.runtime.catalog)
    for visit in range(args.visit, args.visit + args.visits):
        print(prompt.format_report(prompt.notify(visit, detectors, args.instrument)))
    prompt.flush(args.instrument)
    print(prompt.format_stats(prompt.stats(args.instrument)))
    return 0


def cmd_prompt_stats(pr: Panray, args: argparse.Namespace) -> int:
    from panray import prompt

    pr._connect(start=False)
    print(prompt.format_stats(prompt.stats(args.instrument)))
    return 0


def cmd_logs(pr: Panray, args: argparse.Namespace) -> int:
    from panray.logging_bridge import make_object_store, make_sink

    if args.files:
        if args.job is None:
            raise PanrayError("--files needs a JOB")
        job = pr.store.job(args.job)
        attempt = args.attempt or job.attempt_nr
        from panray.logging_bridge import attempt_prefix

        for key in make_object_store(pr.settings).list(attempt_prefix(job.workflow_id, job.task_id, job.job_id, attempt)):
            print(key)
        return 0
    if args.job is None and args.task is None:
        raise PanrayError("give a JOB or --task T")
    sink = make_sink(pr.settings)
    if args.follow:
        if args.job is None:
            raise PanrayError("--follow needs a JOB")
        _follow_logs(pr, sink, args.job, args.attempt, args.grep)
        return 0
    for e in sink.query(job_id=args.job, task_id=args.task, attempt=args.attempt, grep=args.grep):
        _print_entry(e)
    return 0


FOLLOW_INTERVAL = 0.25  #: seconds between polls of ``panray logs --follow``


def _print_entry(e: dict[str, Any]) -> None:
    print(f"{e.get('pilotTimestamp', '')} {e.get('severity', ''):8} {e.get('PandaJobID', '')} "
          f"{e.get('label', '')}: {e.get('message', '')}", flush=True)


def _follow_logs(pr: Panray, sink: LogSink, job_id: int, attempt: int | None, grep: str | None) -> None:
    """Print a job's entries as they arrive, until the job (or ``attempt``, if given) has ended.

    The store is read before the sink: a pilot drains a payload's last lines into the sink
    before it reports the end, so the query made after the end is seen holds every line.
    """
    final = {s.value for s in FINAL_JOB_STATES}
    shown = 0
    while True:
        job = pr.store.job(job_id)
        ended = job.status in final or (attempt is not None and job.attempt_nr > attempt)
        entries = sink.query(job_id=job_id, attempt=attempt, grep=grep)
        for e in entries[shown:]:
            _print_entry(e)
        shown = len(entries)
        if ended:
            return
        time.sleep(FOLLOW_INTERVAL)


def cmd_site(pr: Panray, args: argparse.Namespace) -> int:
    from panray.site_ops import site_rows

    rows = site_rows(pr)
    if args.json:
        print(monitor.to_json(rows))
        return 0
    shares = {s.name: f"{s.drp_share:.0%}" for s in pr.catalog}
    print(monitor.table(
        ["site", "status", "DRP share", "nodes", "pilots", "queued", "running", "finished", "failed"],
        [(r["site"], r["status"], shares[r["site"]], "-" if r["nodes"] is None else r["nodes"] or "none",
          *("-" if r[k] is None else r[k] for k in ("pilots", "queued", "running")), r["finished"], r["failed"])
         for r in rows],
    ))
    return 0


def cmd_site_status(pr: Panray, args: argparse.Namespace) -> int:
    from panray.site_ops import set_site_status

    applied = set_site_status(pr, args.site, args.status)
    print(f"site {args.site}: {args.status}" + ("" if applied else " (recorded; applied when the cluster starts)"))
    return 0


def cmd_explain(pr: Panray, args: argparse.Namespace) -> int:
    from panray.sites import Decision, format_explanation

    rows = pr.store.decisions(args.job)
    if args.json:
        print(monitor.to_json([{**r._asdict(), "decision": json.loads(r.decision)} for r in rows]))
        return 0
    if not rows:
        print(f"job {args.job}: no brokerage decision recorded (not brokered yet)")
        return 0
    for r in rows:
        print(f"job {r.job_id} attempt {r.attempt_nr}, brokered {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(r.time))}")
        print(format_explanation(Decision.from_dict(json.loads(r.decision))))
    return 0


def cmd_serve(pr: Panray, args: argparse.Namespace) -> int:
    from panray import serve

    if args.stop:
        return serve.stop_server(pr.settings)
    return serve.serve(pr.settings)


#: ``panray bench NAME``: the benchmark scripts of a checkout, with defaults that fit a laptop.
BENCHMARKS = {
    "dag_throughput": ["--jobs", "10000", "--backends", "sqlite", "--baselines", "ray"],
    "submit": ["--jobs", "200000", "--backends", "sqlite"],
    "concurrent": ["--jobs", "200000"],
    "subprocess": ["--jobs", "3000"],
    "prompt_latency": [],
    "recovery": [],
}


def cmd_bench(pr: Panray, args: argparse.Namespace) -> int:
    import subprocess

    root = Path(__file__).resolve().parent.parent
    if not (root / "benchmarks").is_dir():
        raise PanrayError(f"panray bench runs the scripts of a source checkout; {root} has no benchmarks/")
    module = "subprocess_payloads" if args.name == "subprocess" else args.name
    argv = [sys.executable, "-m", f"benchmarks.{module}", *(args.args or BENCHMARKS[args.name])]
    return subprocess.run(argv, cwd=root).returncode


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="panray", description=__doc__)
    p.add_argument("--config", help="YAML settings file (default: $PANRAY_CONFIG)")
    p.add_argument("--db", help="state store URL: sqlite:///path or postgresql://... (default: $PANRAY_DB)")
    p.add_argument("--home", help="panray home directory (default: $PANRAY_HOME or ~/.panray)")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="run a ci_hsc-shaped demo campaign across the three sites")
    d.add_argument("--visits", type=int, default=11)
    d.add_argument("--detectors", type=int, default=3)
    d.set_defaults(func=cmd_demo)

    s = sub.add_parser("submit", help="submit a campaign or workflow file (YAML or JSON)")
    s.add_argument("file")
    s.add_argument("--no-wait", action="store_true", help="return after submitting (needs a running cluster)")
    s.set_defaults(func=cmd_submit)

    st = sub.add_parser("status", help="workflows: status, tasks, jobs")
    st.add_argument("workflow", nargs="?", type=int)
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)

    j = sub.add_parser("jobs", help="jobs of a workflow")
    j.add_argument("workflow", type=int)
    j.add_argument("--status", action="append", help="only jobs in this status (repeatable)")
    j.add_argument("--json", action="store_true")
    j.add_argument("--quanta", action="store_true", help="the quanta inside cluster jobs, with their own outcomes")
    j.set_defaults(func=cmd_jobs)

    jb = sub.add_parser("job", help="one job and its attempt history")
    jb.add_argument("job", type=int)
    jb.add_argument("--json", action="store_true")
    jb.set_defaults(func=cmd_job)

    c = sub.add_parser("cancel", help="cancel a workflow, or only a task or some jobs of it")
    c.add_argument("workflow", type=int)
    c.add_argument("--task", type=int, help="cancel only this task's jobs")
    c.add_argument("--job", type=int, nargs="+", action="extend", help="cancel only these jobs (repeatable)")
    c.set_defaults(func=cmd_cancel)

    r = sub.add_parser("retry", help="rerun the failed, cancelled and pruned jobs of a workflow")
    r.add_argument("workflow", type=int)
    r.add_argument("--no-wait", action="store_true")
    r.set_defaults(func=cmd_retry)

    rs = sub.add_parser("resume", help="restart the managers of unfinished workflows (after a crash)")
    rs.add_argument("--no-wait", action="store_true")
    rs.set_defaults(func=cmd_resume)

    lg = sub.add_parser("logs", help="payload log lines of a job or task; --files lists stored log files")
    lg.add_argument("job", nargs="?", type=int)
    lg.add_argument("--attempt", type=int)
    lg.add_argument("--task", type=int)
    lg.add_argument("--grep")
    lg.add_argument("--files", action="store_true")
    lg.add_argument("--follow", action="store_true", help="print new lines as they arrive until the job ends")
    lg.set_defaults(func=cmd_logs)

    pp = sub.add_parser("prompt", help="prompt processing at USDF: warm pilots, push, cache affinity")
    pp_sub = pp.add_subparsers(dest="prompt_command", required=True)
    pn = pp_sub.add_parser("notify", help="notify the standing task of new visits")
    pn.add_argument("--visit", type=int, required=True)
    pn.add_argument("--visits", type=int, default=1, help="this many visits back to back")
    pn.add_argument("--detectors", help="comma-separated detector numbers (default: all)")
    pn.add_argument("--instrument", default="LSSTCam")
    pn.set_defaults(func=cmd_prompt_notify)
    ps = pp_sub.add_parser("stats", help="latency percentiles and cache hit rate")
    ps.add_argument("--instrument")
    ps.set_defaults(func=cmd_prompt_stats)

    sv = sub.add_parser("serve", help="keep the cluster and panray's actors up for other processes")
    sv.add_argument("--stop", action="store_true", help="stop the server of this home and its cluster")
    sv.set_defaults(func=cmd_serve)

    bn = sub.add_parser("bench", help="run a benchmark script with sensible defaults")
    bn.add_argument("name", choices=sorted(BENCHMARKS))
    bn.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the script instead of the defaults")
    bn.set_defaults(func=cmd_bench)

    si = sub.add_parser("site", help="site operations")
    si_sub = si.add_subparsers(dest="site_command", required=True)
    sl = si_sub.add_parser("list", help="per site: status, nodes, pilots, queued, running, finished")
    sl.add_argument("--json", action="store_true")
    sl.set_defaults(func=cmd_site)
    ss = si_sub.add_parser("set-status", help="online, brokeroff (only pinned work) or offline (re-brokers its queue)")
    ss.add_argument("site")
    ss.add_argument("status", choices=["online", "brokeroff", "offline"])
    ss.set_defaults(func=cmd_site_status)

    ex = sub.add_parser("explain", help="why brokerage sent a job where it did: candidates, weights, filtered sites")
    ex.add_argument("job", type=int)
    ex.add_argument("--json", action="store_true")
    ex.set_defaults(func=cmd_explain)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        with Panray(_settings(args)) as pr:
            return int(args.func(pr, args))
    except PanrayError as exc:
        print(f"panray: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
