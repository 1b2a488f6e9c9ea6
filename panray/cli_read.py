"""``panray status``, ``tasks``, ``jobs``, ``errors``, ``job`` and ``explain``: what the store says, as
tables fitted to the terminal (plain when piped) or JSON."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from panray.cli_common import (
    JOB,
    WORKFLOW,
    count_text,
    example,
    json_option,
    json_out,
    session,
    show_status,
    when,
)

if TYPE_CHECKING:
    from panray.api import Panray


@click.command(help="Workflows: status, manager (alive or gone), tasks by status, finished/failed/pruned/total."
             + example("panray status", "panray status 7 --json"))
@click.argument("workflow", type=WORKFLOW, required=False)
@json_option
@session
def status(pr: Panray, workflow: int | None, as_json: bool) -> int:
    from panray.statuses import FINAL_WORKFLOW_STATES

    rows = pr.status(workflow)
    final = {s.value for s in FINAL_WORKFLOW_STATES}
    alive = {w.workflow_id: pr.manager_alive(w.workflow_id) for w in rows if w.status not in final}
    if as_json:
        from panray.monitor import to_json

        records = json.loads(to_json(rows))
        for r in records:
            r["manager_alive"] = alive.get(r["workflow_id"])
            r["held"] = pr.held(r["workflow_id"])
        print(json.dumps(records, indent=2, default=str))
        return 0
    show_status(pr, rows, alive)
    return 0


@click.command(help="The tasks of a workflow: id, label, chunk, status, jobs by status." + example(
    "panray tasks 7", "panray logs --task 12   # a task id from this table"))
@click.argument("workflow", type=WORKFLOW)
@json_option
@session
def tasks(pr: Panray, workflow: int, as_json: bool) -> int:
    from panray.cli_output import show

    rows = pr.tasks(workflow)
    if as_json:
        json_out(rows)
        return 0
    held = pr.held(workflow)
    by_task = {}
    if not pr.remote:
        by_task = pr.store.job_counts(workflow)
    show(["task", "label", "chunk", "status", "jobs", "held", "by status"],
         [(t.task_id, t.label, t.chunk, t.status, t.n_jobs, "yes" if held is True or t.task_id in held else "",
           count_text(by_task.get(t.task_id, {}))) for t in rows])
    return 0


_SORTS = {"id": "idx", "duration": "-duration"}


@click.command(help="Jobs of a workflow: id, attempt n of m, label, status, site, start, end, duration, max PSS, "
             "exit code, error class, diagnostic." + example(
                 "panray jobs 7", "panray jobs 7 --status failed --label isr --limit 50",
                 "panray jobs 7 --error memory --sort duration", "panray jobs 7 --quanta"))
@click.argument("workflow", type=WORKFLOW)
@click.option("--status", multiple=True, help="only jobs in this status (repeatable)")
@click.option("--label", help="only jobs of this label")
@click.option("--site", help="only jobs at this site")
@click.option("--error", "error_class", type=click.Choice(["payload", "memory", "system", "cancelled", "pruned"]),
              help="only jobs whose last attempt failed with this error class")
@click.option("--exit-code", type=click.IntRange(0, 255), help="only jobs that exited with this code")
@click.option("--limit", type=click.IntRange(1, 10_000), help="at most this many jobs (default: all)")
@click.option("--offset", type=click.IntRange(0), default=0, help="skip this many jobs first")
@click.option("--sort", type=click.Choice(sorted(_SORTS)), default="id", show_default=True,
              help="in id order, or longest first")
@click.option("--quanta", is_flag=True, help="the quanta inside cluster jobs, with their own outcomes")
@json_option
@session
def jobs(pr: Panray, workflow: int, status: tuple[str, ...], label: str | None, site: str | None,
         error_class: str | None, exit_code: int | None, limit: int | None, offset: int, sort: str, quanta: bool,
         as_json: bool) -> int:
    from panray import monitor

    pr.workflow(workflow)  # an unknown workflow is an error, not an empty table
    if quanta:
        rows = [q for q in pr.quanta(workflow) if not status or q.status in status]
        print(monitor.to_json(rows) if as_json else monitor.quanta_table(rows))
        return 0
    if limit is None and error_class is None and exit_code is None and sort == "id":
        found = pr.jobs(workflow, status=status or None, label=label, site=site, offset=offset)
        total = None
    else:
        from panray.store import JobQuery

        page = pr.job_page(workflow, JobQuery(status, label, site, error_class, exit_code, sort=_SORTS[sort],
                                              limit=limit or 10**9, offset=offset))
        found, total = page.rows, page.total
    pss = pr.max_pss(workflow) if limit is None else _page_pss(pr, found)
    if as_json:
        print(monitor.to_json(monitor.job_records(found, pss)))
        return 0
    _show_jobs(found, pss)
    if total is not None and total > offset + len(found):
        print(f"{len(found)} of {total} jobs from {offset}; next page: --offset {offset + len(found)}", file=sys.stderr)
    return 0


def _page_pss(pr: Panray, rows: Sequence[Any]) -> dict[int, int]:
    """Max PSS of only the listed jobs (a page of a 200k-job workflow must not read all of them)."""
    if pr.remote:
        return pr.max_pss(rows[0].workflow_id) if rows else {}
    return pr.store.jobs_max_pss([j.job_id for j in rows])


def _attempt(j: Any) -> str:
    """``n of m``; past ``max_attempts`` (system errors, requeues and retries by hand do not use the
    budget) ``n (max m)``, never the misleading ``9 of 3``."""
    return f"{j.attempt_nr} of {j.max_attempts}" if j.attempt_nr <= j.max_attempts else \
        f"{j.attempt_nr} (max {j.max_attempts})"


def _duration(j: Any) -> str:
    return f"{j.end_time - j.start_time:.2f}s" if j.start_time and j.end_time else ""


def _show_jobs(rows: Sequence[Any], pss: dict[int, int]) -> None:
    from panray.cli_output import show
    from panray.monitor import max_pss_gb

    def gb(v: float | None) -> str:
        return "" if v is None else f"{v:.3f}"

    show(["job", "attempt", "label", "name", "status", "site", "start", "end", "duration", "max PSS GB",
          "PSS/core GB", "exit", "error", "diag"],
         [(j.job_id, _attempt(j), j.label, j.name, j.status, j.site, when(j.start_time), when(j.end_time),
           _duration(j), *map(gb, max_pss_gb(j, pss)), j.exit_code, j.error_class, j.diag or "") for j in rows])


@click.command(help="Failed attempts of a workflow grouped by task, error class, exit code and normalised diagnostic "
             "(numbers, ids and paths replaced), with counts and an example job." + example(
                 "panray errors 7", "panray jobs 7 --error payload --exit-code 3   # the jobs of one group"))
@click.argument("workflow", type=WORKFLOW)
@json_option
@session
def errors(pr: Panray, workflow: int, as_json: bool) -> int:
    from panray.cli_output import show

    groups = pr.errors(workflow)
    if as_json:
        json_out(groups)
        return 0
    if not groups:
        print(f"workflow {workflow}: no failed attempt")
        return 0
    labels = {t.task_id: t.label for t in pr.tasks(workflow)}
    show(["attempts", "task", "label", "error", "exit", "message", "example job", "example"],
         [(g.attempts, g.task_id, labels.get(g.task_id, ""), g.error_class, g.exit_code, g.cause, g.example_job_id,
           g.example_diag) for g in groups])
    return 0


@click.command(help="One job: its command line decoded, environment, tags, and its attempt history (site, pilot, "
             "exit, memory, max PSS, log URL)." + example("panray job 120", "panray job 120 --json"))
@click.argument("job_id", metavar="JOB", type=JOB)
@json_option
@session
def job(pr: Panray, job_id: int, as_json: bool) -> int:
    from panray import monitor
    from panray.payload import describe

    row = pr.job(job_id)
    attempts = pr.attempts(job_id)
    command = describe(row.payload)
    if as_json:
        json_out([{"job": {**row._asdict(), "command": command}, "attempts": [a._asdict() for a in attempts]}])
        return 0
    _show_jobs([row], {a.job_id: a.max_pss_kb for a in attempts[-1:] if a.max_pss_kb is not None})
    print(f"\ncommand: {command}")
    env, tags = json.loads(row.environment or "{}"), json.loads(row.tags or "{}")
    if env:
        print("environment: " + " ".join(f"{k}={v}" for k, v in env.items()))
    if tags:
        print("tags: " + json.dumps(tags, sort_keys=True))
    print(f"priority: {row.priority}, memory request: {row.request_memory} MB, cores: {row.request_cpus}\n")
    print(monitor.attempts_table(attempts) if attempts else "no ended attempt yet")
    if attempts:
        last = attempts[-1].attempt_nr
        names = [key.rsplit("/", 1)[-1] for key in pr.log_files(job_id, last)]
        print(f"\nfiles of attempt {last}: {', '.join(names) or 'none stored'}")
    transfers = pr.transfers(job_id)
    if transfers:
        print("\ninputs transferred (the job ran away from them):")
        print(monitor.table(["attempt", "dataset", "from", "to"],
                            [(t.attempt_nr, t.dataset, t.source, t.destination) for t in transfers]))
    return 0


@click.command(help="Why brokerage sent a job where it did: the job's inputs and requests, then the candidates with "
                   "their weights and the filtered sites with their reasons."
             + example("panray explain 120"))
@click.argument("job_id", metavar="JOB", type=JOB)
@json_option
@session
def explain(pr: Panray, job_id: int, as_json: bool) -> int:
    from panray.sites import Decision, format_explanation

    row = pr.job(job_id)
    rows = pr.decisions(job_id)
    if as_json:
        json_out([{**r._asdict(), "decision": json.loads(r.decision)} for r in rows])
        return 0
    inputs = json.loads(row.inputs or "[]")
    pin = f", pinned to {row.site_pin}" if row.site_pin else ""
    print(f"job {job_id} ({row.name}): inputs {', '.join(map(str, inputs)) if inputs else 'none'}; "
          f"memory {row.request_memory} MB, {row.request_cpus} cores{pin}")
    if not rows:
        print(f"job {job_id}: no brokerage decision recorded (status {row.status})")
        return 0
    for r in rows:
        print(f"attempt {r.attempt_nr}, brokered {when(r.time)}")
        print(format_explanation(Decision.from_dict(json.loads(r.decision))))
    return 0



COMMANDS = [status, tasks, jobs, errors, job, explain]
