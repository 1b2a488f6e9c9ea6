"""What the web monitor reads and does, as one narrow interface, and its implementation on a
:class:`~panray.api.Panray` session (its state store, log sink and object store).

The pages depend only on :class:`MonitorReader`; the service layer can implement it instead, so
authorization of the bulk actions stays in one place (:meth:`MonitorReader.act`).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from panray.exceptions import NotFoundError, PanrayError
from panray.store import (
    AttemptRow,
    DecisionRow,
    ErrorGroupRow,
    HistoryRow,
    JobPage,
    JobQuery,
    JobRow,
    TaskRow,
    TaskStatsRow,
    TransferRow,
    WorkflowQuery,
    WorkflowRow,
)

if TYPE_CHECKING:
    from panray.logging_bridge import LogSink, ObjectStore
    from panray.service import Service


class Caller(Protocol):
    """Who is asking: the identity the server's authorization dependency returns."""

    user: str
    roles: frozenset[str]


MAX_ACTION_JOBS = 10_000  #: jobs one monitor action may name or select


class BulkAction(BaseModel):
    """An operator's action from the monitor: the request body of ``POST /monitor/api/act``."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["retry", "retry_jobs", "cancel_task", "cancel_jobs"]
    workflow_id: int
    task_id: int | None = None
    job_ids: list[int] = Field(default_factory=list, max_length=MAX_ACTION_JOBS)
    #: ``retry_jobs`` without job_ids: the failed jobs of ``task_id`` whose last error has this class and
    #: exit code (the jobs an error-summary row links to)
    error_class: str | None = None
    exit_code: int | None = None
    memory: int | None = None  #: MB for the retried attempts (``retry_jobs``); None keeps each job's request


class MonitorReader(Protocol):
    """The reads the pages need (store rows, nothing rendered) and the one write path."""

    def find_workflows(self, query: WorkflowQuery) -> tuple[list[WorkflowRow], int]: ...
    def workflow(self, workflow_id: int) -> WorkflowRow: ...
    def workflow_job_counts(self, workflow_ids: Sequence[int]) -> dict[int, dict[str, int]]: ...
    def workflow_task_counts(self, workflow_ids: Sequence[int]) -> dict[int, dict[str, int]]: ...
    def tasks(self, workflow_id: int) -> list[TaskRow]: ...
    def task_stats(self, workflow_id: int) -> list[TaskStatsRow]: ...
    def task_max_pss(self, workflow_id: int) -> dict[int, int]: ...
    def error_groups(self, workflow_id: int, *, limit: int = 200) -> list[ErrorGroupRow]: ...
    def label_edges(self, workflow_id: int) -> list[tuple[str, str]]: ...
    def job_page(self, workflow_id: int, query: JobQuery) -> JobPage: ...
    def jobs_max_pss(self, job_ids: Sequence[int]) -> dict[int, int]: ...
    def job(self, job_id: int) -> JobRow: ...
    def attempts(self, job_id: int) -> list[AttemptRow]: ...
    def history(self, job_id: int) -> list[HistoryRow]: ...
    def decisions(self, job_id: int) -> list[DecisionRow]: ...
    def transfers(self, job_id: int) -> list[TransferRow]: ...
    def log_entries(self, job_id: int, attempt: int) -> list[dict[str, Any]]: ...
    def attempt_files(self, job: JobRow, attempt: int) -> list[str]: ...
    def attempt_file(self, job: JobRow, attempt: int, name: str) -> bytes: ...
    def sites(self) -> list[dict[str, Any]]: ...
    def recent_decisions(self, *, limit: int) -> list[DecisionRow]: ...
    def act(self, caller: Caller, action: BulkAction) -> str: ...


class PanrayReader:
    """:class:`MonitorReader` on panray's service: reads from its store, actions through the service,
    which authorizes and audits them (the one place of the rules). Label graphs are cached: they
    never change."""

    def __init__(self, service: Service):
        self.service = service
        self.store = service.store
        self._edges: dict[int, list[tuple[str, str]]] = {}
        self._lock = threading.Lock()
        self._sink: LogSink | None = None
        self._objects: ObjectStore | None = None

    def __getattr__(self, name: str) -> Any:
        """The store's reads of the same names (find_workflows, tasks, job_page, attempts, ...)."""
        if name in _STORE_READS:
            return getattr(self.store, name)
        raise AttributeError(name)

    def workflow(self, workflow_id: int) -> WorkflowRow:
        rows, _ = self.store.find_workflows(WorkflowQuery(workflow_id=workflow_id, limit=1))
        if not rows:
            raise NotFoundError(f"no workflow {workflow_id}")
        return rows[0]

    def label_edges(self, workflow_id: int) -> list[tuple[str, str]]:
        with self._lock:
            cached = self._edges.get(workflow_id)
        if cached is None:
            cached = self.store.label_edges(workflow_id)
            with self._lock:
                self._edges[workflow_id] = cached
        return cached

    def _log_sink(self) -> LogSink:
        if self._sink is None:
            from panray.logging_bridge import make_sink

            self._sink = make_sink(self.service.settings)
        return self._sink

    def _object_store(self) -> ObjectStore:
        if self._objects is None:
            from panray.logging_bridge import make_object_store

            self._objects = make_object_store(self.service.settings)
        return self._objects

    def log_entries(self, job_id: int, attempt: int) -> list[dict[str, Any]]:
        return self._log_sink().query(job_id=str(job_id), attempt=attempt)

    def attempt_files(self, job: JobRow, attempt: int) -> list[str]:
        prefix = _prefix(job, attempt)
        return [key[len(prefix):] for key in self._object_store().list(prefix)]

    def attempt_file(self, job: JobRow, attempt: int, name: str) -> bytes:
        if name not in self.attempt_files(job, attempt):
            raise NotFoundError(f"job {job.job_id} attempt {attempt} has no stored file {name!r}")
        return self._object_store().get(_prefix(job, attempt) + name)

    def sites(self) -> list[dict[str, Any]]:
        return [{**row, "target_share": row["drp_share"]} for row in self.service.sites()]

    def act(self, caller: Caller, action: BulkAction) -> str:
        """Retry an ended workflow's failed jobs, retry chosen failed jobs (an error group's, a task's) at
        any time, optionally with more memory, or cancel a task or some jobs of a running one."""
        from panray.identity import Identity, Role

        who = Identity(caller.user, frozenset(Role(r) for r in caller.roles if r in Role._value2member_map_)
                       | {Role.USER})
        wf = self.workflow(action.workflow_id)
        if action.action == "retry":
            self.service.retry(who, wf.workflow_id)
            return f"workflow {wf.workflow_id}: rerunning its failed, cancelled and pruned jobs"
        if action.action == "retry_jobs":
            jobs = action.job_ids or self._group_jobs(action)
            n = self.service.retry_jobs(who, wf.workflow_id, task_id=None if jobs else action.task_id,
                                        job_ids=jobs or None, memory=action.memory)
            more = f" with {action.memory} MB" if action.memory is not None else ""
            return f"workflow {wf.workflow_id}: {n} jobs get a new attempt{more}"
        if action.action == "cancel_task":
            if action.task_id is None:
                raise PanrayError("cancel_task needs a task_id")
            reached = self.service.cancel(who, wf.workflow_id, task_id=action.task_id)
            what = f"task {action.task_id}"
        else:
            if not action.job_ids:
                raise PanrayError("cancel_jobs needs job_ids")
            reached = self.service.cancel(who, wf.workflow_id, job_ids=action.job_ids)
            what = f"{len(action.job_ids)} jobs"
        if not reached:
            raise PanrayError(f"workflow {wf.workflow_id} has no running manager: nothing cancelled")
        return f"workflow {wf.workflow_id}: cancel of {what} sent to its manager"


    def _group_jobs(self, action: BulkAction) -> list[int]:
        """The failed jobs an error-summary row links to (its task, error class and exit code), read a
        page at a time by key; [] when the action names no error class or exit code."""
        if action.error_class is None and action.exit_code is None:
            return []
        if action.task_id is None:
            raise PanrayError("retry_jobs of an error group needs its task_id")
        ids: list[int] = []
        after: int | None = None
        while len(ids) < MAX_ACTION_JOBS:
            page = self.store.job_page(action.workflow_id, JobQuery(
                status=("failed",), task_id=action.task_id, error_class=action.error_class,
                exit_code=action.exit_code, limit=1000, after_idx=after))
            ids += [j.job_id for j in page.rows]
            if len(page.rows) < 1000:
                break
            after = page.rows[-1].idx
        if not ids:
            raise PanrayError(f"task {action.task_id} of workflow {action.workflow_id} has no failed jobs with "
                              f"error class {action.error_class} and exit code {action.exit_code}")
        return ids[:MAX_ACTION_JOBS]


#: Reads a PanrayReader passes straight to the state store.
_STORE_READS = frozenset({
    "find_workflows", "workflow_job_counts", "workflow_task_counts", "tasks", "task_stats", "task_max_pss",
    "error_groups", "job_page", "jobs_max_pss", "job", "attempts", "history", "decisions", "transfers",
    "recent_decisions",
})


def _prefix(job: JobRow, attempt: int) -> str:
    from panray.logging_bridge import attempt_prefix

    return attempt_prefix(job.workflow_id, job.task_id, job.job_id, attempt)
