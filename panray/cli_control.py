"""``panray cancel``, ``retry``, ``hold``, ``release``, ``priority`` and ``resume``: acting on a
workflow, a task or some jobs, through the service's authorization and audit."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import click

from panray.cli_common import (
    JOB,
    TASK,
    WORKFLOW,
    example,
    json_option,
    no_wait_needs_a_server,
    run_and_show,
    said,
    session,
)

if TYPE_CHECKING:
    from panray.api import Panray


def _scope(task: int | None, job_ids: Sequence[int]) -> str:
    parts = ([f"task {task}"] if task is not None else []) + [f"job {j}" for j in job_ids]
    return ", ".join(parts)


@click.command(help="Cancel a workflow, or only a task or some jobs of it: running payloads are killed." + example(
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
        said(True, "", workflow_id=workflow, task_id=task, job_ids=list(job_ids), reached=reached)
        return 0 if reached or (task is None and not job_ids) else 1
    if task is None and not job_ids:
        print(f"workflow {workflow}: cancel " + ("sent to its manager" if reached else "recorded (no manager running)"))
        return 0
    if not reached:
        print(f"workflow {workflow}: nothing cancelled, no manager running", file=sys.stderr)
        return 1
    print(f"workflow {workflow}: cancel of {_scope(task, job_ids)} sent to its manager")
    return 0


@click.command(help="Rerun failed, cancelled and pruned jobs; finished jobs never rerun. Without --task/--job/"
             "--memory/--running: the whole ended workflow. With them: those jobs now, even while it runs." + example(
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
    no_wait_needs_a_server(pr, no_wait, "retry", "changed")
    if task is None and not job_ids and memory is None and not running:
        pr.retry(workflow)
        print(f"workflow {workflow}: rerunning failed, cancelled and pruned jobs")
    else:
        n = pr.retry_jobs(workflow, task_id=task, job_ids=list(job_ids) if job_ids else None, memory=memory)
        what = _scope(task, job_ids) or "all failed jobs"
        print(f"workflow {workflow}: {n} jobs rerun ({what}, with the jobs they pruned)"
              + (f", {memory} MB each" if memory else ""))
    return run_and_show(pr, [workflow], wait=not no_wait)


@click.command(help="Hold a workflow (or a task): nothing more is brokered, queued jobs are taken back; running "
             "jobs go on." + example("panray hold 7", "panray hold 7 --task 12", "panray release 7"))
@click.argument("workflow", type=WORKFLOW)
@click.option("--task", type=TASK, help="hold only this task")
@json_option
@session
def hold(pr: Panray, workflow: int, task: int | None, as_json: bool) -> int:
    return _hold(pr, workflow, task, as_json, hold=True)


@click.command(help="Release a held workflow (or task): its jobs are brokered again." + example(
    "panray release 7", "panray release 7 --task 12"))
@click.argument("workflow", type=WORKFLOW)
@click.option("--task", type=TASK, help="release only this task")
@json_option
@session
def release(pr: Panray, workflow: int, task: int | None, as_json: bool) -> int:
    return _hold(pr, workflow, task, as_json, hold=False)


def _hold(pr: Panray, workflow: int, task: int | None, as_json: bool, *, hold: bool) -> int:
    reached = (pr.hold if hold else pr.release)(workflow, task_id=task)
    what = f"task {task} of workflow {workflow}" if task is not None else f"workflow {workflow}"
    said(as_json, f"{what}: {'held' if hold else 'released'}" + ("" if reached else
                                                               " (recorded; applied when its manager runs)"),
         workflow_id=workflow, task_id=task, held=pr.held(workflow), reached=reached)
    return 0


@click.command(help="Set the priority of a workflow's jobs (or a task's, or some jobs): higher ones are brokered "
             "first." + example("panray priority 7 100", "panray priority 7 -5 --task 12"))
@click.argument("workflow", type=WORKFLOW)
@click.argument("value", type=click.IntRange(-(2**31), 2**31 - 1))
@click.option("--task", type=TASK, help="only this task's jobs")
@click.option("--job", "job_ids", type=JOB, multiple=True, help="only these jobs (repeatable)")
@json_option
@session
def priority(pr: Panray, workflow: int, value: int, task: int | None, job_ids: tuple[int, ...], as_json: bool) -> int:
    n = pr.set_priority(workflow, value, task_id=task, job_ids=list(job_ids) if job_ids else None)
    said(as_json, f"workflow {workflow}: priority {value} for {n} jobs", workflow_id=workflow, priority=value, jobs=n)
    return 0


@click.command(help="Restart the managers of unfinished workflows (after a crash)." + example(
    "panray resume", "panray resume --no-wait"))
@click.option("--no-wait", is_flag=True, help="return once the managers are started")
@session
def resume(pr: Panray, no_wait: bool) -> int:
    no_wait_needs_a_server(pr, no_wait, "resume", "changed")
    ids = pr.resume()
    if not ids:
        print("no workflow to resume")
        return 0
    print("resuming workflows " + " ".join(map(str, ids)))
    return run_and_show(pr, ids, wait=not no_wait)



COMMANDS = [cancel, retry, hold, release, priority, resume]
