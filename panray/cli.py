"""The ``panray`` command: demo, submit, status, jobs, job, cancel, logs, sites, serve."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from panray import monitor
from panray.api import Panray
from panray.config import Settings
from panray.exceptions import NotFoundError, PanrayError
from panray.statuses import FINAL_JOB_STATES

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
    print(f"submitted demo workflow {ids[0]}: {len(wf.jobs) + 1} jobs across {', '.join(r['site'] for r in pr.sites())}")
    code = _run_and_show(pr, ids, wait=True)
    per_site: dict[str, int] = {}
    for j in pr.jobs(ids[0]):
        per_site[j.site or "-"] = per_site.get(j.site or "-", 0) + 1
    print("\njobs per site: " + ", ".join(f"{k} {v}" for k, v in sorted(per_site.items())))
    return code


def cmd_submit(pr: Panray, args: argparse.Namespace) -> int:
    from panray.models import load_campaign_file

    campaign = load_campaign_file(args.file, max_jobs=pr.settings.max_workflow_jobs)
    ids = pr.submit_campaign(campaign)
    return _run_and_show(pr, ids, wait=not args.no_wait)


def cmd_status(pr: Panray, args: argparse.Namespace) -> int:
    rows = pr.status(args.workflow)
    print(monitor.to_json(rows) if args.json else monitor.workflows_table(rows))
    return 0


def cmd_jobs(pr: Panray, args: argparse.Namespace) -> int:
    pr.status(args.workflow)  # an unknown workflow is an error, not an empty table
    if args.quanta:
        quanta = [q for q in pr.quanta(args.workflow) if not args.status or q.status in args.status]
        print(monitor.to_json(quanta) if args.json else monitor.quanta_table(quanta))
        return 0
    rows = pr.jobs(args.workflow, status=args.status)
    pss = pr.max_pss(args.workflow)
    print(monitor.to_json(monitor.job_records(rows, pss)) if args.json else monitor.jobs_table(rows, pss))
    return 0


def cmd_job(pr: Panray, args: argparse.Namespace) -> int:
    job = pr.job(args.job)
    attempts = pr.attempts(args.job)
    if args.json:
        print(monitor.to_json([{"job": job._asdict(), "attempts": [a._asdict() for a in attempts]}]))
        return 0
    print(monitor.jobs_table([job], {a.job_id: a.max_pss_kb for a in attempts[-1:] if a.max_pss_kb is not None}))
    print()
    print(monitor.attempts_table(attempts) if attempts else "no ended attempt yet")
    if attempts:
        last = attempts[-1].attempt_nr
        names = [key.rsplit("/", 1)[-1] for key in pr.log_files(args.job, last)]
        print(f"\nfiles of attempt {last}: {', '.join(names) or 'none stored'}")
    transfers = pr.transfers(args.job)
    if transfers:
        print("\ninputs transferred (the job ran away from them):")
        print(monitor.table(["attempt", "dataset", "from", "to"],
                            [(t.attempt_nr, t.dataset, t.source, t.destination) for t in transfers]))
    return 0


def cmd_cancel(pr: Panray, args: argparse.Namespace) -> int:
    pr.status(args.workflow)
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
    detectors = _detectors(args.detectors) if args.detectors else None
    print(pr.prompt_notify(args.visit, visits=args.visits, detectors=detectors, instrument=args.instrument))
    return 0


def _detectors(text: str) -> list[int]:
    try:
        return [int(d) for d in text.split(",")]
    except ValueError:
        raise PanrayError(f"--detectors {text[:60]!r}: expected comma-separated detector numbers, e.g. 0,1,2") from None


def cmd_prompt_stats(pr: Panray, args: argparse.Namespace) -> int:
    from panray import prompt

    pr._connect(start=False)
    print(prompt.format_stats(prompt.stats(args.instrument)))
    return 0


def cmd_logs(pr: Panray, args: argparse.Namespace) -> int:
    if args.files:
        if args.job is None:
            raise PanrayError("--files needs a JOB")
        for key in pr.log_files(args.job, args.attempt):
            print(key)
        return 0
    if args.job is None and args.task is None:
        raise PanrayError("give a JOB or --task T")
    if args.job is not None:
        pr.job(args.job)  # an unknown job is an error, not an empty listing
    source = None if args.source == "all" else args.source
    if args.follow:
        if args.job is None:
            raise PanrayError("--follow needs a JOB")
        _follow_logs(pr, args.job, args.attempt, args.grep, source)
        return 0
    from panray.logging_bridge.sinks import DROPPED_FIELD

    dropped = 0
    for e in pr.logs(args.job, task_id=args.task, attempt=args.attempt, grep=args.grep, source=source):
        if DROPPED_FIELD in e:
            dropped += int(e[DROPPED_FIELD])
        else:
            _print_entry(e)
    if dropped:
        print(f"panray: note: {dropped} log lines were dropped by a pilot's full log spool "
              "(log_spool_bytes) and never reached the log service", file=sys.stderr)
    return 0


FOLLOW_INTERVAL = 0.25  #: seconds between polls of ``panray logs --follow``


def _when(stamp: Any) -> str:
    """A pilot timestamp (epoch seconds) as UTC ISO time; other values as they are."""
    if isinstance(stamp, int | float):
        from datetime import UTC, datetime

        return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return str(stamp or "")


def _print_entry(e: dict[str, Any]) -> None:
    print(f"{_when(e.get('PilotTimeStamp'))} {e.get('severity', ''):8} {e.get('PandaJobID', '')} "
          f"{e.get('label', '')}{' [pilot]' if e.get('source') == 'pilot' else ''}: {e.get('message', '')}",
          flush=True)


def _follow_logs(pr: Panray, job_id: int, attempt: int | None, grep: str | None, source: str | None = None) -> None:
    """Print a job's entries as they arrive, until the job (or ``attempt``, if given) has ended.

    The store is read before the sink: a pilot drains a payload's last lines into the sink
    before it reports the end, so with the local sink the query made after the end is seen holds
    every line. Cloud Logging delivery goes on after the job's end (a log outage must not hold
    the payload's slot): lines still in a pilot's spool then show in a later ``panray logs``.
    """
    final = {s.value for s in FINAL_JOB_STATES}
    shown = 0
    while True:
        job = pr.job(job_id)
        ended = job.status in final or (attempt is not None and job.attempt_nr > attempt)
        entries = pr.logs(job_id, attempt=attempt, grep=grep, source=source)
        for e in entries[shown:]:
            _print_entry(e)
        shown = len(entries)
        if ended:
            return
        time.sleep(FOLLOW_INTERVAL)


def cmd_site(pr: Panray, args: argparse.Namespace) -> int:
    rows = pr.sites()
    if args.json:
        print(monitor.to_json(rows))
        return 0
    print(monitor.table(
        ["site", "status", "DRP share", "nodes", "pilots", "queued", "running", "finished", "failed"],
        [(r["site"], r["status"], f"{r['drp_share']:.0%}", "-" if r["nodes"] is None else r["nodes"] or "none",
          *("-" if r[k] is None else r[k] for k in ("pilots", "queued", "running")), r["finished"], r["failed"])
         for r in rows],
    ))
    return 0


def cmd_site_status(pr: Panray, args: argparse.Namespace) -> int:
    applied = pr.set_site_status(args.site, args.status)
    print(f"site {args.site}: {args.status}" + ("" if applied else " (recorded; applied when the cluster starts)"))
    return 0


def cmd_explain(pr: Panray, args: argparse.Namespace) -> int:
    from panray.sites import Decision, format_explanation

    pr.job(args.job)
    rows = pr.decisions(args.job)
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


def cmd_serve(args: argparse.Namespace) -> int:
    """Runs without a Panray session: the server is the service, never a client of one."""
    from panray import serve

    settings = _settings(args)
    if args.stop:
        return serve.stop_server(settings)
    return serve.serve(settings)


#: ``panray bench NAME``: the benchmark scripts of a checkout, with defaults that fit a laptop.
BENCHMARKS = {
    "dag_throughput": ["--jobs", "10000", "--backends", "sqlite", "--baselines", "ray"],
    "submit": ["--jobs", "200000", "--backends", "sqlite"],
    "concurrent": ["--jobs", "200000"],
    "subprocess": ["--jobs", "3000"],
    "prompt_latency": [],
    "recovery": [],
}


def cmd_token(args: argparse.Namespace) -> int:
    """Print a token signed with the home's local key (the embedded server's issuer)."""
    import getpass

    from panray.identity import Role
    from panray.server.auth import issue_token

    roles = [Role(r) for r in args.role] if args.role else list(Role)
    print(issue_token(_settings(args), args.user or getpass.getuser(), {Role.USER, *roles}, hours=args.hours))
    return 0


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
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    p.add_argument("--url", help="a panray server's HTTP API, e.g. http://127.0.0.1:8470 (default: $PANRAY_URL)")
    p.add_argument("--token", help="bearer token for --url (default: $PANRAY_TOKEN, else PANRAY_HOME/token)")
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
    lg.add_argument("--source", choices=("pilot", "payload", "all"), default="all",
                    help="the payload's lines, the pilot's record of the job, or both (default)")
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
    sv.set_defaults(func=cmd_serve, local=True)

    tk = sub.add_parser("token", help="print a token for the embedded server (signed with the home's key)")
    tk.add_argument("--user", help="user name (default: the local user)")
    tk.add_argument("--role", action="append", choices=["user", "production", "admin"],
                    help="role to grant (repeatable; default: all, as the local user has embedded)")
    tk.add_argument("--hours", type=float, default=24.0, help="lifetime")
    tk.set_defaults(func=cmd_token, local=True)

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

    from panray.deploy.command import add_parser as add_deploy_parser

    add_deploy_parser(sub)
    return p


#: Arguments holding store ids, and what they name; ids are 1 .. 2**63 - 1 in both databases.
_ID_ARGS = {"workflow": "workflow", "job": "job", "task": "task"}
_ID_MAX = 2**63 - 1


def _check_ids(args: argparse.Namespace) -> None:
    """An id no store can hold is unknown, like any other missing one (not an overflow)."""
    for attr, what in _ID_ARGS.items():
        value = getattr(args, attr, None)
        for n in value if isinstance(value, list) else [value]:
            if isinstance(n, int) and not 0 < n <= _ID_MAX:
                raise NotFoundError(f"no {what} {n} in this store")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; every expected failure is one line on stderr and exit 2 (``--debug``: traceback)."""
    args = parser().parse_args(argv)
    try:
        _check_ids(args)
        if getattr(args, "local", False):
            return int(args.func(args))
        with Panray(_settings(args), url=args.url, token=args.token) as pr:
            return int(args.func(pr, args))
    except KeyboardInterrupt:
        return 130
    except (PanrayError, OSError) as exc:
        if args.debug:
            raise
        print(f"panray: error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug: still one line, the traceback behind --debug
        if args.debug:
            raise
        print(f"panray: internal error: {type(exc).__name__}: {str(exc)[:200]} (run with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
