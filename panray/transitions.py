"""The one path by which a status changes: a table of allowed moves per entity, and :func:`transition`.

Jobs, quanta, tasks and workflows each have a :class:`Table` of the moves their statuses may make.
:func:`transition` is the only code that writes a status: it checks the move against the table,
raising :class:`IllegalTransitionError` with the entity, its id and both statuses, writes the new
status and records the change with its *cause* (the stimulus: ``pilot report``, ``heartbeat lost``,
``brokerage``, ``cancel by alice``, ``prune from isr:3`` ...). Job changes become history rows
(previous status, new status, cause); quantum, task and workflow changes are logged at debug
level, so the history of any entity can be replayed. A retry is :func:`new_attempt`: the attempt
number grows and the job starts again at ``defined`` (``pending`` on a workflow retry); a final
status is never rolled back.

Statuses are byte codes in the hot loops (one byte per job), so a move costs a set lookup and a
tuple; causes are short interned strings.

Examples:
    >>> status = bytearray([JOBS.code(JobStatus.RUNNING)])
    >>> history: list = []
    >>> transition(JOBS, status, 0, JOBS.code(JobStatus.FINISHED), 42, 1, 1.0, PILOT_REPORT, history)
    6
    >>> history[0].previous, history[0].status, history[0].cause
    ('running', 'finished', 'pilot report')
    >>> can_transition(JobStatus.FINISHED, JobStatus.RUNNING)
    False
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Mapping, MutableMapping, MutableSequence, Sequence
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache
from typing import Any

from panray.exceptions import IllegalTransitionError
from panray.statuses import (
    FINAL_JOB_STATES,
    FINAL_WORKFLOW_STATES,
    JOB_CODES,
    JobStatus,
    TaskStatus,
    WorkflowStatus,
)
from panray.store.base import HistoryRow

log = logging.getLogger(__name__)

J, T, W = JobStatus, TaskStatus, WorkflowStatus

# -- causes --------------------------------------------------------------------------------------

PILOT_REPORT = "pilot report"  #: a pilot reported the job sent, started or ended
BROKERAGE = "brokerage"  #: brokerage chose a site and the job went to its queue
RELEASED = "parents finished"  #: the last parent finished (or a root at start)
FINAL_DUE = "all other jobs ended"  #: the final job's turn
HEARTBEAT_LOST = "heartbeat lost"
SENT_TIMEOUT = "sent timeout"  #: a pilot took the job and never started it
PILOT_LOST = "pilot lost"
SITE_OFFLINE = "site offline"  #: the site queue gave the job back
SITE_IDLE = "site without live pilots"  #: queued too long where no pilot can take it
QUEUE_LOST = "site queue lost"
RESTARTED = "control plane restarted"
RETRY_RULE = "retry rule"  #: an automatic new attempt (panray.retry)
QUANTUM_RUN = "quantum run"  #: a cluster job's report of one quantum
JOB_ENDED = "job ended"  #: a quantum follows its job's end
DERIVED = "job counts"  #: a task or workflow status follows its jobs


@lru_cache(maxsize=4096)
def cancel_by(user: str) -> str:
    return sys.intern(f"cancel by {user}")


@lru_cache(maxsize=4096)
def retry_by(user: str) -> str:
    return sys.intern(f"retry by {user}")


@lru_cache(maxsize=4096)
def hold_by(user: str) -> str:
    return sys.intern(f"hold by {user}")


@lru_cache(maxsize=65536)
def prune_from(name: str) -> str:
    return sys.intern(f"prune from {name}")


# -- tables --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Table:
    """The allowed moves of one entity's statuses, over the values its containers hold.

    Job and quantum containers hold byte codes (``JOB_CODES`` positions); task and workflow
    containers hold the status strings.
    """

    entity: str
    allowed: frozenset[tuple[Any, Any]]
    names: Mapping[Any, str] | tuple[str, ...]  #: container value -> status string

    def code(self, status: Enum) -> Any:
        """The container value of ``status``."""
        return JOB_CODES.index(status) if isinstance(self.names, tuple) else status.value

    def allows(self, old: Enum, new: Enum) -> bool:
        return (self.code(old), self.code(new)) in self.allowed


#: The only legal moves of a job attempt. ``assigned``/``activated`` may go back to ``defined``
#: when a site goes offline and its queued jobs are brokered again; nothing leaves a final status
#: (a retry is a new attempt: :data:`ATTEMPT_STARTS`).
JOB_TRANSITIONS: Mapping[JobStatus, frozenset[JobStatus]] = {
    J.PENDING: frozenset({J.DEFINED, J.CLOSED, J.CANCELLED}),
    J.DEFINED: frozenset({J.ASSIGNED, J.CLOSED, J.CANCELLED}),
    J.ASSIGNED: frozenset({J.ACTIVATED, J.DEFINED, J.CANCELLED, J.CLOSED}),
    J.ACTIVATED: frozenset({J.SENT, J.DEFINED, J.CANCELLED, J.CLOSED}),
    J.SENT: frozenset({J.STARTING, J.RUNNING, J.FINISHED, J.FAILED, J.CANCELLED}),
    J.STARTING: frozenset({J.RUNNING, J.FINISHED, J.FAILED, J.CANCELLED}),
    J.RUNNING: frozenset({J.FINISHED, J.FAILED, J.CANCELLED}),
    J.FINISHED: frozenset(),
    J.FAILED: frozenset(),
    J.CLOSED: frozenset(),
    J.CANCELLED: frozenset(),
}
#: How a new attempt begins: from a final status, at ``defined`` (retry) or ``pending`` (workflow retry).
ATTEMPT_STARTS = frozenset((old, new) for old in FINAL_JOB_STATES for new in (J.DEFINED, J.PENDING))

#: A quantum waits (``pending``) until its cluster job runs it, and ends like a job; a workflow
#: retry reruns the quanta that did not finish.
QUANTUM_TRANSITIONS: Mapping[JobStatus, frozenset[JobStatus]] = {
    J.PENDING: frozenset({J.FINISHED, J.FAILED, J.CLOSED, J.CANCELLED}),
    J.FINISHED: frozenset(),
    J.FAILED: frozenset({J.PENDING}),
    J.CLOSED: frozenset({J.PENDING}),
    J.CANCELLED: frozenset({J.PENDING}),
}

_TASK_FINAL = frozenset({T.DONE, T.FINISHED, T.FAILED, T.ABORTED})
#: Task statuses follow their jobs: forward, back from running to ready when held jobs are
#: brokered again, and out of a final status only when ``panray retry`` reruns jobs.
TASK_TRANSITIONS: Mapping[TaskStatus, frozenset[TaskStatus]] = {
    T.REGISTERED: frozenset({T.READY, T.RUNNING} | _TASK_FINAL),
    T.READY: frozenset({T.RUNNING} | _TASK_FINAL),
    T.RUNNING: frozenset({T.READY} | _TASK_FINAL),
    **{f: frozenset({T.REGISTERED, T.READY, T.RUNNING} | (_TASK_FINAL - {f})) for f in _TASK_FINAL},
}
#: A workflow is processed, ends, and leaves its end only when ``panray retry`` reruns jobs.
WORKFLOW_TRANSITIONS: Mapping[WorkflowStatus, frozenset[WorkflowStatus]] = {
    W.NEW: frozenset({W.TRANSFORMING} | FINAL_WORKFLOW_STATES),
    W.TRANSFORMING: frozenset(FINAL_WORKFLOW_STATES),
    **{f: frozenset({W.NEW, W.TRANSFORMING} | (FINAL_WORKFLOW_STATES - {f})) for f in FINAL_WORKFLOW_STATES},
}


def _coded(entity: str, moves: Mapping[JobStatus, frozenset[JobStatus]]) -> Table:
    index = {s: k for k, s in enumerate(JOB_CODES)}
    allowed = frozenset((index[a], index[b]) for a, bs in moves.items() for b in bs)
    return Table(entity, allowed, tuple(s.value for s in JOB_CODES))


def _named(entity: str, moves: Mapping[Any, frozenset[Any]]) -> Table:
    allowed = frozenset((a.value, b.value) for a, bs in moves.items() for b in bs)
    return Table(entity, allowed, {s.value: s.value for s in moves})


JOBS = _coded("job", JOB_TRANSITIONS)
ATTEMPTS = Table("job", frozenset((JOB_CODES.index(a), JOB_CODES.index(b)) for a, b in ATTEMPT_STARTS), JOBS.names)
QUANTA = _coded("quantum", QUANTUM_TRANSITIONS)
TASKS = _named("task", TASK_TRANSITIONS)
WORKFLOWS = _named("workflow", WORKFLOW_TRANSITIONS)


# -- the one writer ------------------------------------------------------------------------------

_row = tuple.__new__  #: a HistoryRow without NamedTuple's keyword handling: half the cost per move


def transition(table: Table, status: MutableSequence[Any] | MutableMapping[Any, Any], i: Any, new: Any,
               entity_id: int, attempt_nr: int, t: float, cause: str, history: list[HistoryRow] | None) -> Any:
    """Move ``status[i]`` to ``new`` if ``table`` allows it; returns the previous value.

    ``entity_id`` names the entity in errors and rows (job id, quantum idx, task id, workflow id).
    With ``history`` the change is appended as a :class:`HistoryRow`; without, it is logged.
    """
    old = status[i]
    if (old, new) not in table.allowed:
        raise IllegalTransitionError(table.entity, entity_id, table.names[old], table.names[new], cause)
    status[i] = new
    if history is not None:
        history.append(_row(HistoryRow, (entity_id, attempt_nr, table.names[new], t, table.names[old], cause)))
    elif log.isEnabledFor(logging.DEBUG):
        log.debug("%s %s from %s to %s (%s)", table.entity, entity_id, table.names[old], table.names[new], cause)
    return old


def transition_path(table: Table, status: MutableSequence[int], i: int, path: Sequence[int], times: Sequence[float],
                    entity_id: int, attempt_nr: int, cause: str, history: list[HistoryRow]) -> int:
    """:func:`transition` through each status of ``path`` in turn (``times[k]`` the time of the
    k-th move), one history row per move; returns the status before the first.

    A pilot's report often carries a job through several statuses at once (activated -> sent ->
    starting -> running -> finished); one call checks and records them all. Nothing is written
    unless every move of the path is allowed.
    """
    old = prev = status[i]
    allowed, names = table.allowed, table.names
    for new in path:
        if (prev, new) not in allowed:
            raise IllegalTransitionError(table.entity, entity_id, names[prev], names[new], cause)
        prev = new
    prev = old
    for new, t in zip(path, times):
        history.append(_row(HistoryRow, (entity_id, attempt_nr, names[new], t, names[prev], cause)))
        prev = new
    status[i] = prev
    return old


def new_attempt(status: MutableSequence[int], attempt: MutableSequence[int], i: int, first: int, job_id: int,
                t: float, cause: str, history: list[HistoryRow]) -> int:
    """Start attempt ``attempt[i] + 1`` of a job whose attempt ended; returns the ended attempt's status."""
    old = status[i]
    if (old, first) not in ATTEMPTS.allowed:
        raise IllegalTransitionError("job", job_id, ATTEMPTS.names[old], ATTEMPTS.names[first], cause)
    attempt[i] += 1
    status[i] = first
    history.append(_row(HistoryRow, (job_id, attempt[i], ATTEMPTS.names[first], t, ATTEMPTS.names[old], cause)))
    return old


def follow(table: Table, status: MutableMapping[Any, Any], derived: Iterable[tuple[Any, Any]],
           cause: str = DERIVED) -> list[tuple[Any, Any]]:
    """Move each ``(key, status)`` whose derived status differs; returns those that moved.

    Tasks and workflows derive their status from their jobs; this is how a derived status is
    written, checked like any other move.
    """
    moved = []
    for key, new in derived:
        if status.get(key) != new:
            if key in status:
                transition(table, status, key, new, key, 0, 0.0, cause, None)
            else:
                status[key] = new
            moved.append((key, new))
    return moved


def can_transition(old: JobStatus, new: JobStatus) -> bool:
    """Whether a job attempt may move ``old -> new``."""
    return new in JOB_TRANSITIONS[old]


def check_transition(old: JobStatus, new: JobStatus, job_id: int = 0) -> None:
    """Raise :class:`IllegalTransitionError` unless a job attempt may move ``old -> new``."""
    if new not in JOB_TRANSITIONS[old]:
        raise IllegalTransitionError("job", job_id, old.value, new.value)
