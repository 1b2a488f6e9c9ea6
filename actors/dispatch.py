"""The tuples that travel between actors on the hot path, one per job per hop.

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


def manager_name(workflow_id: int) -> str:
    """The Ray actor name of a workflow's manager in the ``panray`` namespace."""
    return f"workflow-manager:{workflow_id}"


def queue_name(site: str) -> str:
    return f"site-queue:{site}"


def pilot_name(site: str, n: int) -> str:
    return f"pilot:{site}:{n}"


BROKERAGE_NAME = "brokerage"
NAMESPACE = "panray"
