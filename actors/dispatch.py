"""The tuples that travel between actors on the hot path, one per job per hop.

They are NamedTuples (plain tuples on the wire), never pydantic models: a batch of a thousand
jobs pickles in well under a millisecond.
"""

from __future__ import annotations

import hashlib
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


def manager_name(db_url: str, workflow_id: int) -> str:
    """The Ray actor name of a workflow's manager in the ``panray`` namespace.

    Ids are unique per state store only, so the name carries a short digest of the store URL:
    one cluster may serve several stores (tests, staging and production catalogs).
    """
    digest = hashlib.sha1(db_url.encode()).hexdigest()[:8]
    return f"workflow-manager:{digest}:{workflow_id}"


def queue_name(site: str) -> str:
    return f"site-queue:{site}"


def pilot_name(site: str, n: int) -> str:
    return f"pilot:{site}:{n}"


BROKERAGE_NAME = "brokerage"
NAMESPACE = "panray"
