"""``panray logs``: a job's or a task's log lines from the sink, followed live, filtered by
severity, tailed; and the files stored for an attempt."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from panray.cli_common import (
    JOB,
    TASK,
    example,
    session,
    when,
)
from panray.exceptions import NotFoundError, PanrayError

if TYPE_CHECKING:
    from panray.api import Panray


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


@click.command(help="Log lines of a job or a task from the log sink: time (the payload's own when it has one), "
             "severity, job, attempt, stream, label, message; --files lists and --file prints stored files."
             + example("panray logs 120", "panray logs 120 --follow", "panray logs 120 --severity ERROR --tail 20",
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



COMMANDS = [logs]
