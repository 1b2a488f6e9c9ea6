"""Statuses of jobs, tasks and workflows; their allowed moves are in :mod:`panray.transitions`.

Job statuses follow PanDA: a job waits (``pending``) until its parents finish, is released
(``defined``), given a site by brokerage (``assigned``), queued at that site (``activated``),
taken by a pilot (``sent``), started (``starting``, ``running``) and ends ``finished`` or
``failed``. ``closed`` ends a job the system decided not to run (a pruned descendant of a job
that failed for good); ``cancelled`` ends a job killed by hand. A final status never changes:
a retry is a new *attempt* that starts again at ``defined``.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum


class JobStatus(str, Enum):
    """Status of one attempt of a job."""

    PENDING = "pending"  #: waits for its parents
    DEFINED = "defined"  #: released: all parents finished, waits for brokerage
    ASSIGNED = "assigned"  #: brokerage chose a site
    ACTIVATED = "activated"  #: in the site queue, waits for a pilot
    SENT = "sent"  #: a pilot took it
    STARTING = "starting"  #: the pilot is setting up the payload
    RUNNING = "running"  #: the payload runs
    FINISHED = "finished"  #: the payload exited 0
    FAILED = "failed"  #: the payload or the system failed this attempt
    CLOSED = "closed"  #: ended by the system before it ran (pruned)
    CANCELLED = "cancelled"  #: killed or dropped by hand

    def __str__(self) -> str:
        return self.value


class TaskStatus(str, Enum):
    """Status of a task (one label, or one chunk of a large label), derived from its jobs."""

    REGISTERED = "registered"  #: no job released yet
    READY = "ready"  #: some jobs released, none running
    RUNNING = "running"  #: jobs are being processed
    DONE = "done"  #: every job finished
    FINISHED = "finished"  #: all jobs ended, some did not finish (partial success)
    FAILED = "failed"  #: all jobs ended, none finished
    ABORTED = "aborted"  #: cancelled by hand

    def __str__(self) -> str:
        return self.value


class WorkflowStatus(str, Enum):
    """Status of a workflow (an iDDS request), derived from its jobs."""

    NEW = "New"  #: stored, no job released yet
    TRANSFORMING = "Transforming"  #: jobs are being processed
    FINISHED = "Finished"  #: every job finished
    SUBFINISHED = "SubFinished"  #: ended with a mixed outcome
    FAILED = "Failed"  #: ended and no job finished
    CANCELLED = "Cancelled"  #: cancelled by hand

    def __str__(self) -> str:
        return self.value


J = JobStatus
FINAL_JOB_STATES = frozenset({J.FINISHED, J.FAILED, J.CLOSED, J.CANCELLED})
FAILURE_JOB_STATES = frozenset({J.FAILED, J.CLOSED, J.CANCELLED})
#: Statuses in which a pilot holds the job (its payload may be running).
HELD_BY_PILOT = frozenset({J.SENT, J.STARTING, J.RUNNING})
#: Statuses in which the job waits in the control plane (not yet on a pilot).
WAITING = frozenset({J.PENDING, J.DEFINED, J.ASSIGNED, J.ACTIVATED})
FINAL_WORKFLOW_STATES = frozenset(
    {WorkflowStatus.FINISHED, WorkflowStatus.SUBFINISHED, WorkflowStatus.FAILED, WorkflowStatus.CANCELLED}
)

#: Compact integer codes for hot loops (a job's in-memory status is one byte).
JOB_CODES: tuple[JobStatus, ...] = tuple(JobStatus)
CODE_OF: Mapping[JobStatus, int] = {s: i for i, s in enumerate(JOB_CODES)}
FINAL_CODES = frozenset(CODE_OF[s] for s in FINAL_JOB_STATES)


def derive_task_status(counts: Mapping[str, int], *, cancelled: bool = False) -> TaskStatus:
    """A task's status from the number of its jobs in each job status (by value)."""
    total = sum(counts.values())
    n_final = sum(counts.get(s.value, 0) for s in FINAL_JOB_STATES)
    n_finished = counts.get(J.FINISHED.value, 0)
    if cancelled or (total and counts.get(J.CANCELLED.value, 0) and n_final == total and not n_finished):
        return TaskStatus.ABORTED
    if total and n_final == total:
        if n_finished == total:
            return TaskStatus.DONE
        return TaskStatus.FINISHED if n_finished else TaskStatus.FAILED
    if counts.get(J.PENDING.value, 0) == total:
        return TaskStatus.REGISTERED
    active = sum(counts.get(s.value, 0) for s in HELD_BY_PILOT) + n_final
    return TaskStatus.RUNNING if active else TaskStatus.READY


def derive_workflow_status(counts: Mapping[str, int], *, cancelled: bool = False) -> WorkflowStatus:
    """A workflow's status from the number of its jobs in each job status (by value)."""
    total = sum(counts.values())
    n_final = sum(counts.get(s.value, 0) for s in FINAL_JOB_STATES)
    n_finished = counts.get(J.FINISHED.value, 0)
    if total and n_final == total:
        if cancelled:
            return WorkflowStatus.CANCELLED
        if n_finished == total:
            return WorkflowStatus.FINISHED
        return WorkflowStatus.SUBFINISHED if n_finished else WorkflowStatus.FAILED
    if counts.get(J.PENDING.value, 0) == total:
        return WorkflowStatus.NEW
    return WorkflowStatus.TRANSFORMING
