"""panray: submit, follow, triage and control huge DAG workflows across USDF, FrDF and UKDF.

Every command takes the global options before it (``panray --home DIR jobs 7``); every expected
failure is one line on stderr and exit code 2 (``--debug``: the traceback). Output is a table
fitted to the terminal, the plain table when piped, or JSON with ``--json``. Shell completion:
``eval "$(_PANRAY_COMPLETE=bash_source panray)"`` (``zsh_source``, ``fish_source``).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from panray.exceptions import NotFoundError, PanrayError

if TYPE_CHECKING:
    from panray.api import Panray
    from panray.config import Settings

_ID_MAX = 2**63 - 1  #: ids are 1 .. 2**63 - 1 in both databases
_F = TypeVar("_F", bound=Callable[..., Any])
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class StoreId(click.ParamType):
    """An id of the store: an id no store can hold is unknown, like any other missing one."""

    name = "integer"

    def __init__(self, what: str):
        self.what = what

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            n = value
        else:
            try:
                n = int(value)
            except ValueError:
                self.fail(f"{value!r} is not a {self.what} id (an integer)", param, ctx)
        if not 0 < n <= _ID_MAX:
            raise NotFoundError(f"no {self.what} {n} in this store")
        return n


WORKFLOW, JOB, TASK = StoreId("workflow"), StoreId("job"), StoreId("task")


@dataclass(slots=True)
class Globals:
    config: str | None
    db: str | None
    home: str | None
    url: str | None
    token: str | None
    debug: bool


def _settings(g: Globals) -> Settings:
    from panray.config import Settings

    s = Settings.load(g.config)
    updates: dict[str, Any] = {}
    if g.db:
        updates["db_url"] = g.db
    if g.home:
        updates["home"] = Path(g.home)
    return s.model_copy(update=updates) if updates else s


def session(fn: _F) -> _F:
    """Run the command with a :class:`Panray` session (embedded, or the ``--url`` server's client)."""

    @wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        from panray.api import Panray

        g: Globals = click.get_current_context().find_object(Globals)  # type: ignore[assignment]
        with Panray(_settings(g), url=g.url, token=g.token) as pr:
            return fn(pr, *args, **kwargs)

    return run  # type: ignore[return-value]


def _example(*lines: str) -> str:
    """An ``Examples:`` block for a command's help (click keeps ``\\b`` paragraphs as they are)."""
    return "\n\n\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


def _json_out(rows: Any) -> None:
    from panray.monitor import to_json

    print(to_json(rows if isinstance(rows, list) else [rows]))


json_option = click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")


def _said(as_json: bool, text: str, **record: Any) -> None:
    """What a control command did: one line of text, or with ``--json`` the record."""
    print(json.dumps(record) if as_json else text)


@click.group(context_settings=CONTEXT, help=(__doc__ or "").split("\n\n")[0] + _example(
    "panray submit campaign.yaml", "panray status", "panray jobs 7 --status failed --limit 20",
    "panray errors 7", "panray retry 7 --job 120 --memory 8000"))
@click.option("--config", metavar="FILE", help="YAML settings file (default: $PANRAY_CONFIG)")
@click.option("--db", metavar="URL", help="state store URL: sqlite:///path or postgresql://... (default: $PANRAY_DB)")
@click.option("--home", metavar="DIR", help="panray home directory (default: $PANRAY_HOME or ~/.panray)")
@click.option("--debug", is_flag=True, help="show the traceback of an error")
@click.option("--url", metavar="URL", help="a panray server's HTTP API, e.g. http://127.0.0.1:8470 (default: $PANRAY_URL)")
@click.option("--token", metavar="T", help="bearer token for --url (default: $PANRAY_TOKEN, else PANRAY_HOME/token)")
@click.pass_context
def cli(ctx: click.Context, config: str | None, db: str | None, home: str | None, debug: bool, url: str | None,
        token: str | None) -> None:
    ctx.obj = Globals(config, db, home, url, token, debug)


# -- submit and wait -----------------------------------------------------------------------------


def _no_wait_needs_a_server(pr: Panray, no_wait: bool, command: str, untouched: str) -> None:
    """Refuse ``--no-wait`` when nothing would outlive this process: an embedded cluster ends with
    it, and the workflow would stay where it is for good."""
    if no_wait and not pr.remote and pr.running() is None:
        raise PanrayError(f"--no-wait needs a running panray: start one with `panray serve` (or {command} without "
                          f"--no-wait); nothing was {untouched}")


def _run_and_show(pr: Panray, ids: list[int], wait: bool) -> int:
    if not wait:
        print(" ".join(map(str, ids)))
        return 0
    from panray.cli_output import WaitDisplay

    statuses = pr.wait(ids, progress=WaitDisplay())
    _show_status(pr, [s for i in ids for s in pr.status(i)])
    return 0 if all(v == "Finished" for v in statuses.values()) else 1


@cli.command(help="Run a ci_hsc-shaped demo campaign across the three sites." + _example(
    "panray demo", "panray demo --visits 3 --detectors 2"))
@click.option("--visits", type=int, default=11, show_default=True, help="visits of the demo graph")
@click.option("--detectors", type=int, default=3, show_default=True, help="detectors per visit")
@session
def demo(pr: Panray, visits: int, detectors: int) -> int:
    from panray.demo import demo_workflow

    wf = demo_workflow(visits=visits, detectors=detectors)
    ids = pr.submit(wf)
    print(f"submitted demo workflow {ids[0]}: {len(wf.jobs) + 1} jobs across {', '.join(r['site'] for r in pr.sites())}")
    code = _run_and_show(pr, ids, wait=True)
    per_site: dict[str, int] = {}
    for j in pr.jobs(ids[0]):
        per_site[j.site or "-"] = per_site.get(j.site or "-", 0) + 1
    print("\njobs per site: " + ", ".join(f"{k} {v}" for k, v in sorted(per_site.items())))
    return code


@cli.command(help="Validate, persist and run a campaign or workflow file (YAML or JSON)." + _example(
    "panray submit campaign.yaml", "panray --url http://127.0.0.1:8470 submit wf.yaml --no-wait"))
@click.argument("file", type=click.Path(dir_okay=True))
@click.option("--no-wait", is_flag=True,
              help="print the ids and return; needs a server (`panray serve`) or a cluster to keep running it")
@session
def submit(pr: Panray, file: str, no_wait: bool) -> int:
    from panray.models import load_campaign_file

    campaign = load_campaign_file(file, max_jobs=pr.settings.max_workflow_jobs)
    _no_wait_needs_a_server(pr, no_wait, "submit", "stored")
    ids = pr.submit_campaign(campaign)
    return _run_and_show(pr, ids, wait=not no_wait)


# -- read ----------------------------------------------------------------------------------------


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else ""


def _counts(d: dict[str, int]) -> str:
    return " ".join(f"{k}:{v}" for k, v in sorted(d.items())) or "-"


def _alive(value: bool | None) -> str:
    return {True: "alive", False: "gone", None: "-"}[value]


def _show_status(pr: Panray, rows: Sequence[Any], alive: dict[int, bool | None] | None = None) -> None:
    from panray.cli_output import show
    from panray.monitor.tables import _quanta

    alive = alive or {}
    show(["id", "name", "owner", "status", "manager", "tasks", "finished", "failed", "pruned", "total", "quanta",
          "created"],
         [(w.workflow_id, w.name, w.owner, w.status, _alive(alive.get(w.workflow_id)), _counts(w.tasks),
           w.jobs.get("finished", 0), w.jobs.get("failed", 0), w.jobs.get("closed", 0), w.total, _quanta(w.quanta),
           _when(w.created)) for w in rows])


@cli.command(help="Workflows: status, manager (alive or gone), tasks by status, finished/failed/pruned/total."
             + _example("panray status", "panray status 7 --json"))
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
    _show_status(pr, rows, alive)
    return 0


@cli.command(help="The tasks of a workflow: id, label, chunk, status, jobs by status." + _example(
    "panray tasks 7", "panray logs --task 12   # a task id from this table"))
@click.argument("workflow", type=WORKFLOW)
@json_option
@session
def tasks(pr: Panray, workflow: int, as_json: bool) -> int:
    from panray.cli_output import show

    rows = pr.tasks(workflow)
    if as_json:
        _json_out(rows)
        return 0
    held = pr.held(workflow)
    counts = {}
    if not pr.remote:
        counts = pr.store.job_counts(workflow)
    show(["task", "label", "chunk", "status", "jobs", "held", "by status"],
         [(t.task_id, t.label, t.chunk, t.status, t.n_jobs, "yes" if held is True or t.task_id in held else "",
           _counts(counts.get(t.task_id, {}))) for t in rows])
    return 0


_SORTS = {"id": "idx", "duration": "-duration"}


@cli.command(help="Jobs of a workflow: id, attempt n of m, label, status, site, start, end, duration, max PSS, "
             "exit code, error class, diagnostic." + _example(
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
         [(j.job_id, _attempt(j), j.label, j.name, j.status, j.site, _when(j.start_time), _when(j.end_time),
           _duration(j), *map(gb, max_pss_gb(j, pss)), j.exit_code, j.error_class, j.diag or "") for j in rows])


@cli.command(help="Failed attempts of a workflow grouped by error class, exit code and normalised diagnostic "
             "(numbers, ids and paths replaced), with counts and an example job." + _example(
                 "panray errors 7", "panray jobs 7 --error payload --exit-code 3   # the jobs of one group"))
@click.argument("workflow", type=WORKFLOW)
@json_option
@session
def errors(pr: Panray, workflow: int, as_json: bool) -> int:
    from panray.cli_output import show
    from panray.monitor.errors import summarise

    groups = summarise(pr.error_groups(workflow))
    if as_json:
        _json_out(groups)
        return 0
    if not groups:
        print(f"workflow {workflow}: no failed attempt")
        return 0
    show(["attempts", "error", "exit", "message", "example job", "example"],
         [(g.attempts, g.error_class, g.exit_code, g.message, g.example_job_id, g.example_diag) for g in groups])
    return 0


@cli.command(help="One job: its command line decoded, environment, tags, and its attempt history (site, pilot, "
             "exit, memory, max PSS, log URL)." + _example("panray job 120", "panray job 120 --json"))
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
        _json_out([{"job": {**row._asdict(), "command": command}, "attempts": [a._asdict() for a in attempts]}])
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


@cli.command(help="Why brokerage sent a job where it did: candidates, weights and their inputs, filtered sites."
             + _example("panray explain 120"))
@click.argument("job_id", metavar="JOB", type=JOB)
@json_option
@session
def explain(pr: Panray, job_id: int, as_json: bool) -> int:
    from panray.sites import Decision, format_explanation

    row = pr.job(job_id)
    rows = pr.decisions(job_id)
    if as_json:
        _json_out([{**r._asdict(), "decision": json.loads(r.decision)} for r in rows])
        return 0
    inputs = json.loads(row.inputs or "[]")
    print(f"job {job_id} ({row.name}): inputs {', '.join(map(str, inputs)) if inputs else 'none'}; "
          f"memory {row.request_memory} MB, {row.request_cpus} cores" + (f", pinned to {row.site_pin}" if row.site_pin else ""))
    if not rows:
        print(f"job {job_id}: no brokerage decision recorded (status {row.status})")
        return 0
    for r in rows:
        print(f"attempt {r.attempt_nr}, brokered {_when(r.time)}")
        print(format_explanation(Decision.from_dict(json.loads(r.decision))))
    return 0


# -- control -------------------------------------------------------------------------------------


def _scope(task: int | None, job_ids: Sequence[int]) -> str:
    parts = ([f"task {task}"] if task is not None else []) + [f"job {j}" for j in job_ids]
    return ", ".join(parts)


@cli.command(help="Cancel a workflow, or only a task or some jobs of it: running payloads are killed." + _example(
    "panray cancel 7", "panray cancel 7 --task 12", "panray cancel 7 --job 120 --job 121"))
@click.argument("workflow", type=WORKFLOW)
@click.option("--task", type=TASK, help="cancel only this task's jobs")
@click.option("--job", "job_ids", type=JOB, multiple=True, help="cancel only these jobs (repeatable)")
@json_option
@session
def cancel(pr: Panray, workflow: int, task: int | None, job_ids: tuple[int, ...], as_json: bool) -> int:
    pr.workflow(workflow)
    reached = pr.cancel(workflow, task_id=task, job_ids=list(job_ids) if job_ids else None)
    if as_json:
        _said(True, "", workflow_id=workflow, task_id=task, job_ids=list(job_ids), reached=reached)
        return 0 if reached or (task is None and not job_ids) else 1
    if task is None and not job_ids:
        print(f"workflow {workflow}: cancel " + ("sent to its manager" if reached else "recorded (no manager running)"))
        return 0
    if not reached:
        print(f"workflow {workflow}: nothing cancelled, no manager running", file=sys.stderr)
        return 1
    print(f"workflow {workflow}: cancel of {_scope(task, job_ids)} sent to its manager")
    return 0


@cli.command(help="Rerun failed, cancelled and pruned jobs; finished jobs never rerun. Without --task/--job/"
             "--memory/--running: the whole ended workflow. With them: those jobs now, even while it runs." + _example(
                 "panray retry 7", "panray retry 7 --job 120 --memory 8000", "panray retry 7 --task 12 --no-wait",
                 "panray retry 7 --running   # every failed job of a running workflow"))
@click.argument("workflow", type=WORKFLOW)
@click.option("--task", type=TASK, help="only this task's failed jobs")
@click.option("--job", "job_ids", type=JOB, multiple=True, help="only these jobs (repeatable)")
@click.option("--memory", type=click.IntRange(1, 2**31 - 1), help="MB to request for the new attempts")
@click.option("--running", is_flag=True, help="rerun every failed job now, while the workflow runs")
@click.option("--no-wait", is_flag=True, help="return once the retry is accepted")
@session
def retry(pr: Panray, workflow: int, task: int | None, job_ids: tuple[int, ...], memory: int | None, running: bool,
          no_wait: bool) -> int:
    pr.workflow(workflow)
    _no_wait_needs_a_server(pr, no_wait, "retry", "changed")
    if task is None and not job_ids and memory is None and not running:
        pr.retry(workflow)
        print(f"workflow {workflow}: rerunning failed, cancelled and pruned jobs")
    else:
        n = pr.retry_jobs(workflow, task_id=task, job_ids=list(job_ids) if job_ids else None, memory=memory)
        what = _scope(task, job_ids) or "all failed jobs"
        print(f"workflow {workflow}: {n} jobs rerun ({what}, with the jobs they pruned)"
              + (f", {memory} MB each" if memory else ""))
    return _run_and_show(pr, [workflow], wait=not no_wait)


@cli.command(help="Hold a workflow (or a task): nothing more is brokered, queued jobs are taken back; running "
             "jobs go on." + _example("panray hold 7", "panray hold 7 --task 12", "panray release 7"))
@click.argument("workflow", type=WORKFLOW)
@click.option("--task", type=TASK, help="hold only this task")
@json_option
@session
def hold(pr: Panray, workflow: int, task: int | None, as_json: bool) -> int:
    reached = pr.hold(workflow, task_id=task)
    what = f"task {task} of workflow {workflow}" if task is not None else f"workflow {workflow}"
    _said(as_json, f"{what}: held" + ("" if reached else " (recorded; applied when its manager runs)"),
          workflow_id=workflow, task_id=task, held=pr.held(workflow), reached=reached)
    return 0


@cli.command(help="Release a held workflow (or task): its jobs are brokered again." + _example(
    "panray release 7", "panray release 7 --task 12"))
@click.argument("workflow", type=WORKFLOW)
@click.option("--task", type=TASK, help="release only this task")
@json_option
@session
def release(pr: Panray, workflow: int, task: int | None, as_json: bool) -> int:
    reached = pr.release(workflow, task_id=task)
    what = f"task {task} of workflow {workflow}" if task is not None else f"workflow {workflow}"
    _said(as_json, f"{what}: released" + ("" if reached else " (recorded; applied when its manager runs)"),
          workflow_id=workflow, task_id=task, held=pr.held(workflow), reached=reached)
    return 0


@cli.command(help="Set the priority of a workflow's jobs (or a task's, or some jobs): higher ones are brokered "
             "first." + _example("panray priority 7 100", "panray priority 7 -5 --task 12"))
@click.argument("workflow", type=WORKFLOW)
@click.argument("value", type=click.IntRange(-(2**31), 2**31 - 1))
@click.option("--task", type=TASK, help="only this task's jobs")
@click.option("--job", "job_ids", type=JOB, multiple=True, help="only these jobs (repeatable)")
@json_option
@session
def priority(pr: Panray, workflow: int, value: int, task: int | None, job_ids: tuple[int, ...], as_json: bool) -> int:
    n = pr.set_priority(workflow, value, task_id=task, job_ids=list(job_ids) if job_ids else None)
    _said(as_json, f"workflow {workflow}: priority {value} for {n} jobs", workflow_id=workflow, priority=value, jobs=n)
    return 0


@cli.command(help="Restart the managers of unfinished workflows (after a crash)." + _example(
    "panray resume", "panray resume --no-wait"))
@click.option("--no-wait", is_flag=True, help="return once the managers are started")
@session
def resume(pr: Panray, no_wait: bool) -> int:
    _no_wait_needs_a_server(pr, no_wait, "resume", "changed")
    ids = pr.resume()
    if not ids:
        print("no workflow to resume")
        return 0
    print("resuming workflows " + " ".join(map(str, ids)))
    return _run_and_show(pr, ids, wait=not no_wait)


# -- logs ----------------------------------------------------------------------------------------

FOLLOW_INTERVAL = 0.25  #: seconds between polls of ``panray logs --follow``
_LEVELS = ("DEFAULT", "DEBUG", "INFO", "NOTICE", "WARNING", "ERROR", "CRITICAL")
_PAYLOAD_TIMES = ("timestamp", "time", "created", "asctime")  #: a payload record's own time, if it has one


def _stamp(e: dict[str, Any]) -> str:
    """The payload's own timestamp when the line carries one, else the pilot's (epoch seconds, UTC)."""
    from datetime import UTC, datetime

    for key in (*_PAYLOAD_TIMES, "PilotTimeStamp"):
        value = e.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        if isinstance(value, str) and value:
            return value
    return ""


def _print_entry(e: dict[str, Any]) -> None:
    source = " [pilot]" if e.get("source") == "pilot" else ""
    print(f"{_stamp(e)} {e.get('severity', ''):8} {e.get('PandaJobID', '')} #{e.get('attemptNr', '')} "
          f"{e.get('stream', '') or '-':6} {e.get('label', '')}{source}: {e.get('message', '')}", flush=True)


def _at_least(level: str | None) -> Callable[[dict[str, Any]], bool]:
    if level is None:
        return lambda e: True
    floor = _LEVELS.index(level)
    return lambda e: _LEVELS.index(str(e.get("severity", "DEFAULT")).upper()) >= floor \
        if str(e.get("severity", "DEFAULT")).upper() in _LEVELS else True


@cli.command(help="Log lines of a job or a task from the log sink: time (the payload's own when it has one), "
             "severity, job, attempt, stream, label, message; --files lists and --file prints stored files."
             + _example("panray logs 120", "panray logs 120 --follow", "panray logs 120 --severity ERROR --tail 20",
                        "panray logs --task 12 --grep Traceback", "panray logs 120 --file payload.stderr"))
@click.argument("job_id", metavar="[JOB]", type=JOB, required=False)
@click.option("--attempt", type=click.IntRange(1), help="only this attempt")
@click.option("--task", type=TASK, help="every job of this task (see `panray tasks WF`)")
@click.option("--grep", help="only lines whose message contains this text")
@click.option("--files", is_flag=True, help="list the files stored for the attempt (default: the latest)")
@click.option("--file", "file_name", metavar="NAME", help="print one stored file (payload.stdout, payload.stderr, ...)")
@click.option("--source", type=click.Choice(["pilot", "payload", "all"]), default="all", show_default=True,
              help="the payload's lines, the pilot's record of the job, or both")
@click.option("--severity", "--level", "severity", type=click.Choice(_LEVELS, case_sensitive=False),
              help="only lines of this severity or above")
@click.option("--tail", type=click.IntRange(1), help="only the last N lines")
@click.option("--follow", is_flag=True, help="print new lines as they arrive until the job ends or its manager is gone")
@click.option("--json", "as_json", is_flag=True, help="print the entries as JSON (not with --follow)")
@session
def logs(pr: Panray, job_id: int | None, attempt: int | None, task: int | None, grep: str | None, files: bool,
         file_name: str | None, source: str, severity: str | None, tail: int | None, follow: bool,
         as_json: bool) -> int:
    if files or file_name:
        if job_id is None:
            raise PanrayError(f"{'--files' if files else '--file'} needs a JOB")
        keys = pr.log_files(job_id, attempt)
        if files:
            for line in [json.dumps(keys)] if as_json else keys:
                print(line)
            return 0
        return _print_file(pr, job_id, attempt, keys, file_name or "")
    if job_id is None and task is None:
        raise PanrayError("give a JOB or --task T")
    if job_id is not None:
        pr.job(job_id)  # an unknown job is an error, not an empty listing
    src = None if source == "all" else source
    keep = _at_least(severity.upper() if severity else None)
    if follow:
        if job_id is None:
            raise PanrayError("--follow needs a JOB")
        _follow_logs(pr, job_id, attempt, grep, src, keep)
        return 0
    from panray.logging_bridge.sinks import DROPPED_FIELD

    dropped = 0
    shown = []
    for e in pr.logs(job_id, task_id=task, attempt=attempt, grep=grep, source=src):
        if DROPPED_FIELD in e:
            dropped += int(e[DROPPED_FIELD])
        elif keep(e):
            shown.append(e)
    if as_json:
        print(json.dumps(shown[-tail:] if tail else shown, indent=2, default=str))
    else:
        for e in shown[-tail:] if tail else shown:
            _print_entry(e)
    if dropped:
        print(f"panray: note: {dropped} log lines were dropped by a pilot's full log spool "
              "(log_spool_bytes) and never reached the log service", file=sys.stderr)
    return 0


def _print_file(pr: Panray, job_id: int, attempt: int | None, keys: list[str], name: str) -> int:
    """Print one stored file of the attempt to stdout, as bytes."""
    match = [k for k in keys if k.rsplit("/", 1)[-1] == name]
    if not match:
        have = ", ".join(k.rsplit("/", 1)[-1] for k in keys) or "none"
        raise NotFoundError(f"job {job_id} has no stored file {name!r} for attempt {attempt or 'latest'}; stored: {have}")
    if pr.remote:
        raise PanrayError("--file reads the store's objects: run it where the server runs, or open the monitor's job page")
    from panray.logging_bridge import make_object_store

    sys.stdout.buffer.write(make_object_store(pr.settings).get(match[0]))
    sys.stdout.flush()
    return 0


def _follow_logs(pr: Panray, job_id: int, attempt: int | None, grep: str | None, source: str | None,
                 keep: Callable[[dict[str, Any]], bool]) -> None:
    """Print a job's entries as they arrive, until the job (or ``attempt``) has ended or its manager is gone.

    The store is read before the sink: a pilot drains a payload's last lines into the sink
    before it reports the end, so with the local sink the query made after the end is seen holds
    every line. Cloud Logging delivery goes on after the job's end (a log outage must not hold
    the payload's slot): lines still in a pilot's spool then show in a later ``panray logs``.
    """
    from panray.statuses import FINAL_JOB_STATES

    final = {s.value for s in FINAL_JOB_STATES}
    shown = 0
    checked = time.monotonic()
    while True:
        job_row = pr.job(job_id)
        ended = job_row.status in final or (attempt is not None and job_row.attempt_nr > attempt)
        gone = False
        if not ended and time.monotonic() - checked > 5:
            checked = time.monotonic()
            gone = pr.manager_alive(job_row.workflow_id) is False
        entries = pr.logs(job_id, attempt=attempt, grep=grep, source=source)
        for e in entries[shown:]:
            if keep(e):
                _print_entry(e)
        shown = len(entries)
        if ended:
            return
        if gone:
            print(f"panray: job {job_id} is {job_row.status} but the manager of workflow {job_row.workflow_id} is "
                  "gone; stopped following (`panray resume` restarts it)", file=sys.stderr)
            return
        time.sleep(FOLLOW_INTERVAL)


# -- sites, prompt -------------------------------------------------------------------------------


@cli.group(help="Site operations: the catalog with live figures, and site statuses.")
def site() -> None:
    pass


@site.command("list", help="Per site: status, DRP share, nodes, pilots, queued, running, finished, failed."
              + _example("panray site list", "panray site list --json"))
@json_option
@session
def site_list(pr: Panray, as_json: bool) -> int:
    from panray.cli_output import show

    rows = pr.sites()
    if as_json:
        _json_out(rows)
        return 0
    show(["site", "status", "DRP share", "nodes", "pilots", "queued", "running", "finished", "failed"],
         [(r["site"], r["status"], f"{r['drp_share']:.0%}", "-" if r["nodes"] is None else r["nodes"] or "none",
           *("-" if r[k] is None else r[k] for k in ("pilots", "queued", "running")), r["finished"], r["failed"])
          for r in rows])
    return 0


@site.command("set-status", help="online, brokeroff (only pinned work) or offline (re-brokers its queue); kept "
              "across restarts." + _example("panray site set-status UKDF offline"))
@click.argument("name", metavar="SITE")
@click.argument("new_status", metavar="STATUS", type=click.Choice(["online", "brokeroff", "offline"]))
@json_option
@session
def site_status(pr: Panray, name: str, new_status: str, as_json: bool) -> int:
    applied = pr.set_site_status(name, new_status)
    _said(as_json, f"site {name}: {new_status}" + ("" if applied else " (recorded; applied when the cluster starts)"),
          site=name, status=new_status, applied=applied)
    return 0


@cli.group(help="Prompt processing at USDF: warm pilots, push, cache affinity.")
def prompt() -> None:
    pass


def _detectors(text: str) -> list[int]:
    try:
        return [int(d) for d in text.split(",")]
    except ValueError:
        raise PanrayError(f"--detectors {text[:60]!r}: expected comma-separated detector numbers, e.g. 0,1,2") from None


@prompt.command(help="Notify the standing task of new visits." + _example(
    "panray prompt notify --visit 1", "panray prompt notify --visit 10 --visits 5 --detectors 0,1,2"))
@click.option("--visit", type=int, required=True, help="the (first) visit number")
@click.option("--visits", type=int, default=1, show_default=True, help="this many visits back to back")
@click.option("--detectors", help="comma-separated detector numbers (default: all)")
@click.option("--instrument", default="LSSTCam", show_default=True, help="instrument of the visits")
@session
def notify(pr: Panray, visit: int, visits: int, detectors: str | None, instrument: str) -> int:
    print(pr.prompt_notify(visit, visits=visits, detectors=_detectors(detectors) if detectors else None,
                           instrument=instrument))
    return 0


@prompt.command(help="Latency percentiles and cache hit rate." + _example("panray prompt stats"))
@click.option("--instrument", help="only this instrument")
@session
def stats(pr: Panray, instrument: str | None) -> int:
    from panray import prompt as prompt_client

    pr._connect(start=False)
    print(prompt_client.format_stats(prompt_client.stats(instrument)))
    return 0


# -- server, tokens, benchmarks, deploy ----------------------------------------------------------


@cli.command(help="Keep the cluster and panray's actors up and serve the HTTP API; --stop stops the server of "
             "this home." + _example("panray serve", "panray serve --stop"))
@click.option("--stop", is_flag=True, help="stop the server of this home and its cluster; warns of work running")
@click.pass_obj
def serve(g: Globals, stop: bool) -> int:
    """Runs without a Panray session: the server is the service, never a client of one."""
    from panray import serve as server

    settings = _settings(g)
    if stop:
        return server.stop_server(settings)
    return server.serve(settings)


#: ``panray bench NAME``: the benchmark scripts of a checkout, with defaults that fit a laptop.
BENCHMARKS = {
    "dag_throughput": ["--jobs", "10000", "--backends", "sqlite", "--baselines", "ray"],
    "submit": ["--jobs", "200000", "--backends", "sqlite"],
    "concurrent": ["--jobs", "200000"],
    "subprocess": ["--jobs", "3000"],
    "prompt_latency": [],
    "recovery": [],
}


@cli.command(help="Print a token signed with the home's local key (the embedded server's issuer)." + _example(
    "panray token", "panray token --user erin --role production --hours 1"))
@click.option("--user", help="user name (default: the local user)")
@click.option("--role", multiple=True, type=click.Choice(["user", "production", "admin"]),
              help="role to grant (repeatable; default: all, as the local user has embedded)")
@click.option("--hours", type=float, default=24.0, show_default=True, help="lifetime")
@click.pass_obj
def token(g: Globals, user: str | None, role: tuple[str, ...], hours: float) -> int:
    import getpass

    from panray.identity import Role
    from panray.server.auth import issue_token

    roles = [Role(r) for r in role] if role else list(Role)
    print(issue_token(_settings(g), user or getpass.getuser(), {Role.USER, *roles}, hours=hours))
    return 0


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
             help="Run a benchmark script of a source checkout with sensible defaults." + _example(
                 "panray bench submit", "panray bench submit --jobs 500 --backends sqlite"))
@click.argument("name", type=click.Choice(sorted(BENCHMARKS)))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(name: str, args: tuple[str, ...]) -> int:
    import subprocess

    root = Path(__file__).resolve().parent.parent
    if not (root / "benchmarks").is_dir():
        raise PanrayError(f"panray bench runs the scripts of a source checkout; {root} has no benchmarks/")
    module = "subprocess_payloads" if name == "subprocess" else name
    argv = [sys.executable, "-m", f"benchmarks.{module}", *(args or BENCHMARKS[name])]
    return subprocess.run(argv, cwd=root).returncode


@cli.group(help="Kubernetes manifests: KubeRay, CloudNativePG, the server.")
def deploy() -> None:
    pass


@deploy.command(help="Print the manifests of an install as YAML." + _example(
    "panray deploy render | kubectl apply -f -", "panray deploy render --values production -o install.yaml"))
@click.option("--values", multiple=True, metavar="FILE",
              help="values file, repeatable, later wins; laptop or production name the packaged ones (default: laptop)")
@click.option("--output", "-o", help="write to this file instead of standard output")
def render(values: tuple[str, ...], output: str | None) -> int:
    from panray.deploy.command import render_manifests

    return render_manifests(list(values), output)


# -- entry point ---------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; every expected failure is one line on stderr and exit 2 (``--debug``: traceback)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args[: next((k for k, a in enumerate(args) if a in cli.commands), len(args))]
    try:
        return int(cli.main(args=args, prog_name="panray", standalone_mode=False) or 0)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        print(f"panray: error: {exc.format_message()}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, click.Abort):
        return 130
    except (PanrayError, OSError) as exc:
        if debug:
            raise
        print(f"panray: error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug: still one line, the traceback behind --debug
        if debug:
            raise
        print(f"panray: internal error: {type(exc).__name__}: {str(exc)[:200]} (run with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
