"""The state store's one narrow interface. Only ``panray.store`` touches SQL.

Rows travel as NamedTuples (plain tuples underneath) so that batches of hundreds of thousands
go to ``executemany``/``COPY`` without conversion. Every write method takes a whole batch and
runs it in one transaction: there is no per-job round trip.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

SCHEMA_VERSION = 1


class NewJob(NamedTuple):
    """A job as submitted. ``idx`` is its position in the workflow (0..n-1)."""

    idx: int
    name: str
    label: str
    task_idx: int  #: index into NewWorkflow.tasks
    kind: str  #: "job", "init" or "final"
    payload: str  #: encoded command (panray.payload), "" = no-op
    environment: str  #: JSON object
    request_memory: int  #: MB
    request_cpus: int
    max_attempts: int
    site_pin: str | None
    queue: str | None
    priority: int
    inputs: str  #: JSON list
    outputs: str  #: JSON list
    tags: str  #: JSON object
    retry: str  #: JSON {"memory_multiplier", "request_memory_max", "retry_unless_exit"}


class NewTask(NamedTuple):
    label: str
    chunk: int  #: 0.. for labels split above the chunk size
    n_jobs: int


@dataclass(slots=True)
class NewWorkflow:
    name: str
    owner: str
    home_site: str
    tasks: list[NewTask]
    jobs: list[NewJob]
    edges: list[tuple[int, int]]  #: (child idx, parent idx)
    settings: str = "{}"  #: JSON of workflow-level options


@dataclass(slots=True)
class NewCampaign:
    name: str
    owner: str
    workflows: list[NewWorkflow]


@dataclass(slots=True)
class SubmittedWorkflow:
    workflow_id: int
    first_job_id: int  #: job ids are first_job_id + idx
    first_task_id: int  #: task ids are first_task_id + task_idx


@dataclass(slots=True)
class SubmittedCampaign:
    campaign_id: int
    workflows: list[SubmittedWorkflow]


class JobState(NamedTuple):
    """The current state of a job; written over the job's row."""

    job_id: int
    status: str
    attempt_nr: int
    site: str | None
    pilot: str | None
    start_time: float | None
    end_time: float | None
    exit_code: int | None
    error_class: str | None  #: None, "payload", "memory", "system", "pruned", "cancelled"
    diag: str | None
    request_memory: int
    modification_time: float


class HistoryRow(NamedTuple):
    """One status change of one attempt."""

    job_id: int
    attempt_nr: int
    status: str
    time: float


class AttemptRow(NamedTuple):
    """The record of one ended attempt (a retry adds another)."""

    job_id: int
    attempt_nr: int
    status: str
    site: str | None
    pilot: str | None
    start_time: float | None
    end_time: float | None
    exit_code: int | None
    error_class: str | None
    diag: str | None
    request_memory: int
    max_pss_kb: int | None
    log_url: str | None


@dataclass(slots=True)
class ChangeBatch:
    """Everything one flush writes, in one transaction."""

    jobs: list[JobState] = field(default_factory=list)
    history: list[HistoryRow] = field(default_factory=list)
    attempts: list[AttemptRow] = field(default_factory=list)
    tasks: list[tuple[int, str]] = field(default_factory=list)  #: (task_id, status)
    workflows: list[tuple[int, str, float | None]] = field(default_factory=list)  #: (id, status, end_time)

    def __bool__(self) -> bool:
        return bool(self.jobs or self.history or self.attempts or self.tasks or self.workflows)


class JobRow(NamedTuple):
    """A job as the store holds it (read side)."""

    job_id: int
    workflow_id: int
    task_id: int
    idx: int
    name: str
    label: str
    kind: str
    status: str
    attempt_nr: int
    max_attempts: int
    site: str | None
    pilot: str | None
    payload: str
    environment: str
    request_memory: int
    request_cpus: int
    site_pin: str | None
    queue: str | None
    priority: int
    inputs: str
    outputs: str
    tags: str
    retry: str
    start_time: float | None
    end_time: float | None
    exit_code: int | None
    error_class: str | None
    diag: str | None


class TaskRow(NamedTuple):
    task_id: int
    workflow_id: int
    label: str
    chunk: int
    n_jobs: int
    status: str


class WorkflowRow(NamedTuple):
    workflow_id: int
    campaign_id: int
    name: str
    owner: str
    home_site: str
    status: str
    cancelled: bool
    created: float
    modified: float
    ended: float | None
    settings: str


@dataclass(slots=True)
class WorkflowSnapshot:
    """All a workflow manager needs to (re)build its in-memory state."""

    workflow: WorkflowRow
    tasks: list[TaskRow]
    jobs: list[JobRow]  #: ordered by idx
    edges: list[tuple[int, int]]  #: (child idx, parent idx)
    failures: dict[int, tuple[int, int]] = field(default_factory=dict)  #: job_id -> (user, system) failed attempts


class StateStore(ABC):
    """SQLite and PostgreSQL implement this; nothing outside ``panray.store`` issues SQL."""

    url: str

    @abstractmethod
    def submit(self, campaign: NewCampaign) -> SubmittedCampaign:
        """Insert a campaign with all its workflows, tasks, jobs and edges in one transaction."""

    @abstractmethod
    def apply(self, changes: ChangeBatch) -> None:
        """Write one batch of state changes in one transaction."""

    @abstractmethod
    def set_cancelled(self, workflow_id: int, cancelled: bool) -> None:
        """Mark a workflow as cancelled by hand (or clear the mark on retry)."""

    @abstractmethod
    def load_workflow(self, workflow_id: int) -> WorkflowSnapshot:
        """Everything about one workflow; raises NotFoundError if absent."""

    @abstractmethod
    def workflows(self, *, campaign_id: int | None = None, active_only: bool = False) -> list[WorkflowRow]:
        """Workflows, newest first."""

    @abstractmethod
    def tasks(self, workflow_id: int) -> list[TaskRow]:
        """The tasks of a workflow in id order."""

    @abstractmethod
    def job_counts(self, workflow_id: int) -> dict[int, dict[str, int]]:
        """``{task_id: {status: n}}`` for one workflow."""

    @abstractmethod
    def jobs(
        self, workflow_id: int, *, status: Sequence[str] | None = None, limit: int | None = None
    ) -> list[JobRow]:
        """Jobs of a workflow in idx order, optionally only those in ``status``."""

    @abstractmethod
    def job(self, job_id: int) -> JobRow:
        """One job; raises NotFoundError if absent."""

    @abstractmethod
    def attempts(self, job_id: int) -> list[AttemptRow]:
        """Ended attempts of a job, oldest first."""

    @abstractmethod
    def history(self, job_id: int) -> list[HistoryRow]:
        """Status changes of a job, in order."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""
