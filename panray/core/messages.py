"""The messages that travel between actors on the hot path, one tuple per job per hop.

They are NamedTuples (plain tuples on the wire), never pydantic models: a batch of a thousand
jobs pickles in well under a millisecond.
"""

from __future__ import annotations

from typing import NamedTuple


class Dispatch(NamedTuple):
    """A job attempt as a site queue holds it and a pilot receives it."""

    job_id: int
    attempt_nr: int
    workflow_id: int
    task_id: int
    label: str
    payload: str  #: encoded command (panray.payload); "" = in-process no-op
    environment: str  #: JSON object
    request_memory: int  #: MB
    request_cpus: int
    site: str
    manager: str  #: actor name of the workflow's manager, where the pilot reports


class Started(NamedTuple):
    """A pilot started a payload."""

    job_id: int
    attempt_nr: int
    pilot: str
    sent_time: float
    start_time: float


class Outcome(NamedTuple):
    """A pilot's report of an ended payload."""

    job_id: int
    attempt_nr: int
    pilot: str
    site: str
    sent_time: float
    start_time: float
    end_time: float
    exit_code: int | None
    error_class: str | None  #: None on success; "payload", "memory", "system", "cancelled"
    diag: str | None
    max_pss_kb: int | None
    log_url: str | None
    quanta: tuple[tuple[int, int, float, float], ...] | None = None  #: cluster jobs: (pos, exit, start, end) per quantum run
