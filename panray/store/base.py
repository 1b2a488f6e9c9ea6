"""The state store's one narrow interface. Only ``panray.store`` touches SQL.

Rows travel as NamedTuples (plain tuples underneath) so that batches of hundreds of thousands
go to ``executemany``/``COPY`` without conversion. Every write method takes a whole batch and
runs it in one transaction: there is no per-job round trip.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

SCHEMA_VERSION = 5  #: 3: the monitor's indexes (panray.store.monitor_sql); 4: its aggregates by site and cause;
#: 5: history rows carry a path of moves (panray.store.history), aggregates change per batch (panray.store.aggregates)


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


class NewQuantum(NamedTuple):
    """One quantum of a clustered workflow: ``pos``-th step of job ``job_idx``; ``idx`` is 0..n-1."""

    idx: int
    job_idx: int
    pos: int
    name: str
    label: str


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
    quanta: list[NewQuantum] = field(default_factory=list)  #: empty unless the workflow is clustered
    quantum_edges: list[tuple[int, int]] = field(default_factory=list)  #: (child idx, parent idx)


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
    """One status change of one attempt: from ``previous`` to ``status``, because of ``cause``.

    ``previous`` is the status the attempt left; the first row of a new attempt names the status
    in which the attempt before it ended ("" for a job's first release).
    """

    job_id: int
    attempt_nr: int
    status: str
    time: float
    previous: str
    cause: str


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


class DecisionRow(NamedTuple):
    """Brokerage's explained choice for one attempt (``Decision.to_dict()`` as JSON)."""

    job_id: int
    attempt_nr: int
    decision: str
    time: float


class LocationRow(NamedTuple):
    """A dataset a finished job produced, at the site where it ran."""

    workflow_id: int
    dataset: str
    site: str


class TransferRow(NamedTuple):
    """An input dataset that must move because its job runs away from it."""

    workflow_id: int
    job_id: int
    attempt_nr: int
    dataset: str
    source: str
    destination: str
    time: float


class QuantumState(NamedTuple):
    """The current state of one quantum; written over its row."""

    workflow_id: int
    idx: int
    status: str  #: a job status: pending, finished, failed, closed (pruned) or cancelled
    attempt_nr: int  #: the attempt of its job that ran it last
    exit_code: int | None
    start_time: float | None
    end_time: float | None
    diag: str | None


class QuantumRow(NamedTuple):
    """A quantum as the store holds it (read side)."""

    workflow_id: int
    idx: int
    job_id: int
    pos: int
    name: str
    label: str
    status: str
    attempt_nr: int
    exit_code: int | None
    start_time: float | None
    end_time: float | None
    diag: str | None


@dataclass(slots=True)
class ChangeBatch:
    """Everything one flush writes, in one transaction."""

    jobs: list[JobState] = field(default_factory=list)
    history: list[HistoryRow] = field(default_factory=list)
    attempts: list[AttemptRow] = field(default_factory=list)
    tasks: list[tuple[int, str]] = field(default_factory=list)  #: (task_id, status)
    workflows: list[tuple[int, str, float | None]] = field(default_factory=list)  #: (id, status, end_time)
    quanta: list[QuantumState] = field(default_factory=list)
    decisions: list[DecisionRow] = field(default_factory=list)
    locations: list[LocationRow] = field(default_factory=list)
    transfers: list[TransferRow] = field(default_factory=list)
    #: Who sent the batch and its place in that sender's sequence. A keyed batch is stored at
    #: most once: a retry of one that committed before its connection broke changes nothing.
    writer: str | None = None
    seq: int = 0

    def __bool__(self) -> bool:
        return any(getattr(self, name) for name in _ROW_LISTS)

    @classmethod
    def merged(cls, batches: Sequence[ChangeBatch]) -> ChangeBatch:
        """One batch that stores what ``batches`` (one writer's, in order) store: rows appended
        in order, so the store's last-wins rule keeps each job's latest state; keyed by the
        last batch's sequence number, so it counts as all of them once stored."""
        out = cls(writer=batches[-1].writer, seq=batches[-1].seq)
        for name in _ROW_LISTS:
            rows: list = getattr(out, name)
            for b in batches:
                rows.extend(getattr(b, name))
        return out


_ROW_LISTS = ("jobs", "history", "attempts", "tasks", "workflows", "quanta", "decisions", "locations", "transfers")


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


class AuditRow(NamedTuple):
    """One action asked of the service: who, what, on which target, when, and how it ended."""

    time: float
    user_name: str
    action: str  #: e.g. "submit", "cancel", "retry", "set-site-status"
    target: str  #: e.g. "workflow 7", "site UKDF"
    outcome: str  #: "ok", "refused" or "error"
    detail: str  #: the refusal's or error's message; "" when ok


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
    quanta: list[QuantumRow] = field(default_factory=list)  #: ordered by idx; empty unless clustered
    quantum_edges: list[tuple[int, int]] = field(default_factory=list)  #: (child idx, parent idx)


@dataclass(frozen=True, slots=True)
class JobQuery:
    """Which jobs of a workflow a monitor page shows: every given filter must match.

    Pages are ``limit`` rows from ``offset`` in ``sort`` order (``idx``, or ``-duration``: longest
    first), so no page ever carries a whole workflow. In ``idx`` order ``after_idx`` / ``before_idx``
    page by key instead (the rows just after / before that idx), as fast deep in a 200k-job
    workflow as at its start; ``offset`` then only says where the page is, for display.
    """

    status: tuple[str, ...] = ()
    label: str | None = None
    site: str | None = None
    error_class: str | None = None
    exit_code: int | None = None
    task_id: int | None = None
    name: str | None = None  #: prefix of the job name
    sort: str = "idx"
    limit: int = 100
    offset: int = 0
    after_idx: int | None = None
    before_idx: int | None = None


@dataclass(frozen=True, slots=True)
class WorkflowQuery:
    """Which workflows the monitor's list shows, newest first."""

    workflow_id: int | None = None
    owner: str | None = None
    status: str | None = None
    name: str | None = None  #: substring of the workflow name
    created_after: float | None = None  #: epoch seconds
    limit: int = 50
    offset: int = 0


class TaskStatsRow(NamedTuple):
    """Aggregates of one task's jobs in one status (one row per task and status), kept by the store."""

    task_id: int
    status: str
    n: int
    max_request_memory: int  #: MB, the largest any of the task's jobs asked for so far
    wall_seconds: float  #: sum of end - start over the jobs that have both


@dataclass(slots=True)
class JobPage:
    """One page of a job list: the rows, each job's creation time, and how many jobs match in all."""

    rows: list[JobRow]
    created: list[float]  #: creation_time of each row, in the same order
    total: int
    exact: bool = True  #: False: at least ``total`` match (a name prefix is counted only so far)


class ErrorGroupRow(NamedTuple):
    """Failed attempts of one task with one error class, exit code and normalised diagnostic."""

    task_id: int
    error_class: str | None
    exit_code: int | None
    cause: str  #: the diag normalised (panray.diagnostics.normalise)
    attempts: int
    example_job_id: int  #: the lowest job id among them
    example_diag: str | None  #: that job's diag, as it was


class StateStore(ABC):
    """SQLite and PostgreSQL implement this; nothing outside ``panray.store`` issues SQL."""

    url: str
    retry_delays: tuple[float, ...]  #: pauses between tries when the store is unreachable

    @abstractmethod
    def submit(self, campaign: NewCampaign,
               then: Callable[[SubmittedCampaign], ChangeBatch] | None = None) -> SubmittedCampaign:
        """Insert a campaign with all its workflows, tasks, jobs and edges in one transaction.

        ``then`` builds a batch of state changes from the new ids; it is applied in the same
        transaction, so a campaign that is submitted already run (a prompt visit) is stored whole
        or not at all.
        """

    @abstractmethod
    def apply(self, changes: ChangeBatch) -> None:
        """Write one batch of state changes in one transaction.

        A batch with a ``writer`` is skipped if that writer's batch ``seq`` (or a later one) is
        already stored, so a writer may re-send a batch whose commit it could not confirm.
        Raises StoreUnavailableError when the store stays unreachable through a few retries.
        """

    @abstractmethod
    def set_cancelled(self, workflow_id: int, cancelled: bool) -> None:
        """Mark a workflow as cancelled by hand (or clear the mark on retry)."""

    @abstractmethod
    def set_held(self, workflow_id: int, held: bool | Sequence[int]) -> None:
        """Record what of a workflow is held back from brokerage: all of it (True), these task ids, or nothing."""

    @abstractmethod
    def set_priority(self, workflow_id: int, priority: int, *, task_id: int | None = None,
                     job_ids: Sequence[int] | None = None) -> int:
        """Set the priority of a workflow's jobs (or a task's, or these); returns how many jobs changed."""

    @abstractmethod
    def load_workflow(self, workflow_id: int) -> WorkflowSnapshot:
        """Everything about one workflow; raises NotFoundError if absent."""

    @abstractmethod
    def workflow(self, workflow_id: int) -> WorkflowRow:
        """One workflow; raises NotFoundError if absent."""

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
        self, workflow_id: int, *, status: Sequence[str] | None = None, limit: int | None = None,
        label: str | None = None, site: str | None = None, offset: int = 0,
    ) -> list[JobRow]:
        """Jobs of a workflow in idx order, optionally only those in ``status`` / of ``label`` / at
        ``site``; ``offset`` and ``limit`` page through them."""

    @abstractmethod
    def job(self, job_id: int) -> JobRow:
        """One job; raises NotFoundError if absent."""

    @abstractmethod
    def attempts(self, job_id: int) -> list[AttemptRow]:
        """Ended attempts of a job, oldest first."""

    @abstractmethod
    def max_pss(self, workflow_id: int) -> dict[int, int]:
        """``{job_id: max PSS kB}`` of each job's latest ended attempt, where it was measured."""

    @abstractmethod
    def history(self, job_id: int) -> list[HistoryRow]:
        """Status changes of a job, in order."""

    @abstractmethod
    def decisions(self, job_id: int) -> list[DecisionRow]:
        """Brokerage decisions recorded for a job, oldest first."""

    @abstractmethod
    def transfers(self, job_id: int) -> list[TransferRow]:
        """Input transfers recorded for a job, oldest first."""

    @abstractmethod
    def site_job_counts(self) -> dict[str, dict[str, int]]:
        """``{site: {job status: n}}`` over every workflow, for jobs that have a site."""

    @abstractmethod
    def site_statuses(self) -> dict[str, str]:
        """Site statuses an operator set by hand; they override the catalog's."""

    @abstractmethod
    def set_site_status(self, site: str, status: str) -> None:
        """Record an operator's status for a site (kept across restarts)."""

    @abstractmethod
    def quanta(self, workflow_id: int, *, job_id: int | None = None) -> list[QuantumRow]:
        """Quanta of a clustered workflow (or of one of its jobs) in idx order; [] if not clustered."""

    @abstractmethod
    def quantum_counts(self, workflow_id: int) -> dict[str, int]:
        """``{status: n}`` over the quanta of a clustered workflow; {} if not clustered."""

    # -- monitor reads (panray.store.monitor_sql) -------------------------------------------------

    @abstractmethod
    def find_workflows(self, query: WorkflowQuery) -> tuple[list[WorkflowRow], int]:
        """A page of workflows matching ``query``, newest first, and how many match in all."""

    @abstractmethod
    def workflow_job_counts(self, workflow_ids: Sequence[int]) -> dict[int, dict[str, int]]:
        """``{workflow_id: {job status: n}}`` for several workflows in one query."""

    @abstractmethod
    def workflow_task_counts(self, workflow_ids: Sequence[int]) -> dict[int, dict[str, int]]:
        """``{workflow_id: {task status: n}}`` (stored task statuses) for several workflows."""

    @abstractmethod
    def task_stats(self, workflow_id: int) -> list[TaskStatsRow]:
        """Per task and job status: count, largest memory request, wall time (kept aggregates)."""

    @abstractmethod
    def task_max_pss(self, workflow_id: int) -> dict[int, int]:
        """``{task_id: max PSS kB}`` over every measured attempt of the task's jobs."""

    @abstractmethod
    def job_page(self, workflow_id: int, query: JobQuery) -> JobPage:
        """One page of the workflow's jobs matching ``query`` and how many match in all."""

    @abstractmethod
    def jobs_max_pss(self, job_ids: Sequence[int]) -> dict[int, int]:
        """``{job_id: max PSS kB}`` of the latest measured attempt of each of these jobs."""

    @abstractmethod
    def error_groups(self, workflow_id: int, *, limit: int = 200) -> list[ErrorGroupRow]:
        """Failed attempts grouped by (task, error class, exit code, normalised diag), largest first."""

    @abstractmethod
    def label_edges(self, workflow_id: int) -> list[tuple[str, str]]:
        """Distinct ``(parent label, child label)`` pairs of the job graph (immutable once stored)."""

    @abstractmethod
    def recent_decisions(self, *, limit: int) -> list[DecisionRow]:
        """The latest ``limit`` brokerage decisions over every workflow, newest first."""

    @abstractmethod
    def record_audit(self, rows: Sequence[AuditRow]) -> None:
        """Append audit rows (one per action asked of the service)."""

    @abstractmethod
    def audit(self, *, user: str | None = None, limit: int = 100) -> list[AuditRow]:
        """The latest audit rows, newest first, optionally of one user."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""
