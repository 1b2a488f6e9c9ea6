"""panray's tables and the SQL over them, written once for SQLite and PostgreSQL.

Both backends share the DDL, the statements and the shaping of rows; a :class:`Dialect` fills in
the few words that differ. :class:`SQLStore` implements the whole :class:`StateStore` interface on
three bulk hooks, so a backend supplies only its connection handling and its fastest way to move
many rows (``executemany`` on SQLite, ``COPY`` on PostgreSQL).

Foreign keys guard only the small tables: jobs, edges, attempts and history are written by the
store itself with ids it has just allocated or checked, and a per-row reference check would cost
more than the write.

The module is long (about 550 lines) on purpose: it is the one place that holds panray's SQL
text, shared by both backends; splitting it would spread the statements over files.
"""

from __future__ import annotations

import functools
import gc
import json
import logging
import time
from abc import abstractmethod
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

from panray.diagnostics import normalise
from panray.exceptions import NotFoundError, PanrayError, StoreError, StoreUnavailableError, WorkflowValidationError
from panray.sites.catalog import SiteStatus
from panray.statuses import FINAL_WORKFLOW_STATES, JobStatus, TaskStatus, WorkflowStatus
from panray.store.base import (
    SCHEMA_VERSION,
    AttemptRow,
    AuditRow,
    ChangeBatch,
    DecisionRow,
    HistoryRow,
    JobRow,
    JobState,
    LocationRow,
    NewCampaign,
    NewWorkflow,
    QuantumRow,
    StateStore,
    SubmittedCampaign,
    SubmittedWorkflow,
    TaskRow,
    TransferRow,
    WorkflowRow,
    WorkflowSnapshot,
)
from panray.store.aggregates import (
    ATTEMPT_STAT_COLUMNS,
    JOB_STAT_COLUMNS,
    UPSERT_ERROR_STATS,
    UPSERT_JOB_STATS,
    UPSERT_MAX_PSS,
    Deltas,
)
from panray.store.history import STORED_COLUMNS as HISTORY_STORED_COLUMNS
from panray.store.history import compact, expand
from panray.store.monitor_sql import MONITOR_DDL, MONITOR_V3, MonitorSQL
from panray.store.quanta import QUANTA_DDL, QuantaSQL

log = logging.getLogger(__name__)

FIRST_ATTEMPT = 1
_FAILED = JobStatus.FAILED.value
_JOB_STATUSES = frozenset(s.value for s in JobStatus)
JOB_KINDS = ("job", "init", "final")
COUNTERS = ("campaign", "workflow", "task", "job")
AUDIT_OUTCOMES = ("ok", "refused", "error")


def _one_of(column: str, values: Iterable[str]) -> str:
    """A membership test spelled as ORs: SQLite rebuilds an ``IN (...)`` list for every row that
    ``executemany`` inserts, which doubles the cost of a bulk insert."""
    return "(" + " OR ".join(f"{column} = '{v}'" for v in values) + ")"


_DDL = (
    "CREATE TABLE schema_version (version INTEGER NOT NULL)",
    "CREATE TABLE counters (name TEXT PRIMARY KEY, value {id} NOT NULL)",
    """CREATE TABLE campaigns (
        campaign_id {id} PRIMARY KEY, name TEXT NOT NULL, owner TEXT NOT NULL, created {float} NOT NULL)""",
    """CREATE TABLE workflows (
        workflow_id {id} PRIMARY KEY,
        campaign_id {id} NOT NULL REFERENCES campaigns (campaign_id),
        name TEXT NOT NULL, owner TEXT NOT NULL, home_site TEXT NOT NULL,
        status TEXT NOT NULL CHECK {workflow_status},
        cancelled {bool} NOT NULL,
        created {float} NOT NULL, modified {float} NOT NULL, ended {float},
        settings TEXT NOT NULL)""",
    "CREATE INDEX workflows_campaign ON workflows (campaign_id)",
    """CREATE TABLE tasks (
        task_id {id} PRIMARY KEY,
        workflow_id {id} NOT NULL REFERENCES workflows (workflow_id),
        label TEXT NOT NULL, chunk INTEGER NOT NULL, n_jobs INTEGER NOT NULL,
        status TEXT NOT NULL CHECK {task_status})""",
    "CREATE INDEX tasks_workflow ON tasks (workflow_id)",
    """CREATE TABLE jobs (
        job_id {id} PRIMARY KEY, workflow_id {id} NOT NULL, task_id {id} NOT NULL, idx INTEGER NOT NULL,
        name TEXT NOT NULL, label TEXT NOT NULL, kind TEXT NOT NULL CHECK {job_kind},
        status TEXT NOT NULL CHECK {job_status},
        attempt_nr INTEGER NOT NULL, max_attempts INTEGER NOT NULL, site TEXT, pilot TEXT,
        payload TEXT NOT NULL, environment TEXT NOT NULL,
        request_memory INTEGER NOT NULL, request_cpus INTEGER NOT NULL,
        site_pin TEXT, queue TEXT, priority INTEGER NOT NULL,
        inputs TEXT NOT NULL, outputs TEXT NOT NULL, tags TEXT NOT NULL, retry TEXT NOT NULL,
        start_time {float}, end_time {float}, exit_code INTEGER, error_class TEXT, diag TEXT,
        creation_time {float} NOT NULL, modification_time {float} NOT NULL)""",
    "CREATE UNIQUE INDEX jobs_workflow_idx ON jobs (workflow_id, idx)",
    "CREATE INDEX jobs_workflow_status ON jobs (workflow_id, status)",
    "CREATE TABLE edges (workflow_id {id} NOT NULL, child_idx INTEGER NOT NULL, parent_idx INTEGER NOT NULL)",
    "CREATE INDEX edges_workflow ON edges (workflow_id, child_idx)",
    """CREATE TABLE attempts (
        job_id {id} NOT NULL, attempt_nr INTEGER NOT NULL,
        status TEXT NOT NULL CHECK {job_status},
        site TEXT, pilot TEXT, start_time {float}, end_time {float}, exit_code INTEGER,
        error_class TEXT, diag TEXT, request_memory INTEGER NOT NULL, max_pss_kb {id}, log_url TEXT,
        PRIMARY KEY (job_id, attempt_nr))""",
    """CREATE TABLE job_history (
        seq {serial}, job_id {id} NOT NULL, attempt_nr INTEGER NOT NULL,
        status TEXT NOT NULL CHECK {job_status}, time {float} NOT NULL,
        previous TEXT NOT NULL DEFAULT '', cause TEXT NOT NULL DEFAULT '', path {blob})""",
    "CREATE INDEX job_history_job ON job_history (job_id)",
    """CREATE TABLE brokerage_decisions (
        job_id {id} NOT NULL, attempt_nr INTEGER NOT NULL, decision TEXT NOT NULL, time {float} NOT NULL)""",
    "CREATE INDEX brokerage_decisions_job ON brokerage_decisions (job_id)",
    "CREATE TABLE dataset_locations (workflow_id {id} NOT NULL, dataset TEXT NOT NULL, site TEXT NOT NULL)",
    "CREATE INDEX dataset_locations_workflow ON dataset_locations (workflow_id)",
    """CREATE TABLE transfers (
        workflow_id {id} NOT NULL, job_id {id} NOT NULL, attempt_nr INTEGER NOT NULL, dataset TEXT NOT NULL,
        source TEXT NOT NULL, destination TEXT NOT NULL, time {float} NOT NULL)""",
    "CREATE INDEX transfers_job ON transfers (job_id)",
    """CREATE TABLE site_status (
        site TEXT PRIMARY KEY, status TEXT NOT NULL CHECK {site_status}, modified {float} NOT NULL)""",
    "CREATE TABLE batch_marks (writer TEXT PRIMARY KEY, seq {id} NOT NULL)",
    """CREATE TABLE audit (
        seq {serial}, time {float} NOT NULL, user_name TEXT NOT NULL, action TEXT NOT NULL,
        target TEXT NOT NULL, outcome TEXT NOT NULL CHECK {audit_outcome}, detail TEXT NOT NULL)""",
    "CREATE INDEX audit_user ON audit (user_name)",
)
#: Statements that bring a store of the key's version to the next one (both backends; templates
#: filled in with the dialect's types). v2 -> v3: the job history records the previous status and
#: the cause of each change; batch marks (writes repeated after an outage count once) and the audit
#: of the service's actions appear. v3 -> v4: the monitor's aggregates are made anew (v3 had fewer)
#: and filled from the stored jobs and attempts (:meth:`MonitorSQL._fill_monitor`). v4 -> v5: the
#: history stores a path of moves per row (panray.store.history); the aggregates' triggers are
#: dropped (the dialect's ``v4_triggers``), the store changes them per batch from now on
#: (panray.store.aggregates), from the exact counts the triggers kept.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    2: ("ALTER TABLE job_history ADD COLUMN previous TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE job_history ADD COLUMN cause TEXT NOT NULL DEFAULT ''",
        *(s for s in _DDL if "batch_marks" in s or "audit" in s)),
    3: (*MONITOR_V3, *MONITOR_DDL),
    4: ("ALTER TABLE job_history ADD COLUMN path {blob}",),
}
_CHECKS = {
    "job_status": _one_of("status", (s.value for s in JobStatus)),
    "task_status": _one_of("status", (s.value for s in TaskStatus)),
    "workflow_status": _one_of("status", (s.value for s in WorkflowStatus)),
    "job_kind": _one_of("kind", JOB_KINDS),
    "site_status": _one_of("status", (s.value for s in SiteStatus)),
    "audit_outcome": _one_of("outcome", AUDIT_OUTCOMES),
}


@dataclass(frozen=True, slots=True)
class Dialect:
    """The words in which SQLite and PostgreSQL differ; everything else is shared text."""

    types: dict[str, str]  #: {id}, {float}, {bool}, {serial}, {blob} in the DDL
    param: str  #: the driver's placeholder; shared statements are written with "?"
    table_exists: str  #: a query with one "?" (the table name) that returns a row if it exists
    schema_lock: str | None = None  #: serialises concurrent schema creation, if BEGIN does not
    v4_triggers: tuple[str, ...] = ()  #: drop what kept the aggregates up to schema version 4
    id_array: bool = False  #: ``= ANY(array)`` takes any number of ids in one statement (else ``IN`` lists)
    #: Locks rows read to be written in the same transaction, where the write lock alone does not
    #: (PostgreSQL: a concurrent writer of the same job waits, so the aggregates' old values hold).
    for_update: str = ""

    def ddl(self) -> list[str]:
        return [s.format(**self.types, **_CHECKS) for s in _DDL + QUANTA_DDL + MONITOR_DDL]

    def sql(self, text: str) -> str:
        return text if self.param == "?" else text.replace("?", self.param)


def _cols(fields: Sequence[str], prefix: str = "") -> str:
    return ", ".join(prefix + f for f in fields)


WORKFLOW_SELECT = f"SELECT {_cols(WorkflowRow._fields)} FROM workflows"
TASK_SELECT = f"SELECT {_cols(TaskRow._fields)} FROM tasks WHERE workflow_id = ? ORDER BY task_id"
JOB_SELECT = f"SELECT {_cols(JobRow._fields)} FROM jobs"
JOB_INSERT_COLUMNS = (*JobRow._fields, "creation_time", "modification_time")
EDGE_COLUMNS = ("workflow_id", "child_idx", "parent_idx")
TASK_COLUMNS = TaskRow._fields
#: An attempt as the store writes it: the row and its normalised diag (``cause``, failures only).
ATTEMPT_COLUMNS = (*AttemptRow._fields, "cause")
#: How a re-sent attempt record replaces the stored one; the same clause on both backends.
ATTEMPT_ON_CONFLICT = "ON CONFLICT (job_id, attempt_nr) DO UPDATE SET " + ", ".join(
    f"{c} = excluded.{c}" for c in ATTEMPT_COLUMNS[2:]
)
#: Records a keyed batch; changes no row (rowcount 0) when that writer's seq is already stored.
_MARK_BATCH = (
    "INSERT INTO batch_marks (writer, seq) VALUES (?, ?) ON CONFLICT (writer) DO UPDATE"
    " SET seq = excluded.seq WHERE batch_marks.seq < excluded.seq"
)
_ACTIVE = " NOT " + _one_of("status", (s.value for s in FINAL_WORKFLOW_STATES))
_IN_CHUNK = 500
#: A batch's jobs as they were, for the aggregates' deltas (JOB_STAT_COLUMNS after the id).
_STORED_JOBS = f"SELECT job_id, {_cols(JOB_STAT_COLUMNS)} FROM jobs WHERE job_id"
_FAILED_ATTEMPTS = f"SELECT {_cols(ATTEMPT_STAT_COLUMNS)} FROM attempts WHERE status = 'failed' AND job_id"
_NO_LIMIT = 2**62  #: an OFFSET needs a LIMIT on SQLite, and PostgreSQL refuses SQLite's -1


class Cursor(Protocol):
    """The DB-API subset both drivers' cursors share."""

    rowcount: int

    def execute(self, query: Any, params: Any = ..., /) -> Any: ...

    def executemany(self, query: Any, params_seq: Any, /) -> Any: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


def rejected(url: str, exc: Exception) -> PanrayError:
    """The error for a batch the database refused (a CHECK, NOT NULL or key violation)."""
    return PanrayError(f"state store {url} rejected the batch, nothing of it was stored: {exc}")


_K = TypeVar("_K", bound=Hashable)
_R = TypeVar("_R")
_S = TypeVar("_S", bound="SQLStore")
_P = ParamSpec("_P")

#: Pauses between tries of a call whose connection failed, about 15 s in all: enough to ride
#: out a database restart; a manager's writer keeps retrying its batch beyond that.
RETRY_DELAYS = (0.1, 0.2, 0.5, 1.0, 1.0, 2.0, 2.0, 3.0, 5.0)


def retried(
    idempotent: Callable[..., bool] | bool = True,
) -> Callable[[Callable[Concatenate[_S, _P], _R]], Callable[Concatenate[_S, _P], _R]]:
    """Repeat a store call that met StoreUnavailableError (the backend has dropped the broken
    connection, so the next try reconnects). A failure while committing is repeated only if
    ``idempotent`` (or ``idempotent(*args)``) says a second run cannot store anything twice."""

    def wrap(fn: Callable[Concatenate[_S, _P], _R]) -> Callable[Concatenate[_S, _P], _R]:
        @functools.wraps(fn)
        def call(self: _S, *args: _P.args, **kwargs: _P.kwargs) -> _R:
            for delay in (*self.retry_delays, None):
                try:
                    return fn(self, *args, **kwargs)
                except StoreUnavailableError as exc:
                    safe = idempotent(*args) if callable(idempotent) else idempotent
                    if delay is None or (exc.in_doubt and not safe):
                        raise
                    log.warning("%s; trying %s again in %.1f s", exc, fn.__name__, delay)
                    time.sleep(delay)
            raise AssertionError("unreachable")

        return call

    return wrap


def _last_wins(rows: Sequence[_R], key: Callable[[_R], _K]) -> list[_R]:
    """One row per key, the latest: a flush may carry a job twice, and a set-based UPDATE or
    upsert must see each key once."""
    latest = {key(r): r for r in rows}
    return rows if len(latest) == len(rows) else list(latest.values())  # type: ignore[return-value]


def _job_rows(wf: NewWorkflow, workflow_id: int, first_job: int, first_task: int, now: float) -> Iterator[tuple]:
    """Rows for ``jobs`` in JOB_INSERT_COLUMNS order; a job starts pending in its first attempt."""
    n_jobs, n_tasks, pending = len(wf.jobs), len(wf.tasks), JobStatus.PENDING.value
    for j in wf.jobs:
        if not (0 <= j.idx < n_jobs and 0 <= j.task_idx < n_tasks):
            raise WorkflowValidationError(
                f"workflow {wf.name!r}: job {j.name!r} has idx {j.idx} / task_idx {j.task_idx} "
                f"outside 0..{n_jobs - 1} / 0..{n_tasks - 1}"
            )
        yield (
            first_job + j.idx, workflow_id, first_task + j.task_idx, j.idx, j.name, j.label, j.kind,
            pending, FIRST_ATTEMPT, j.max_attempts, None, None, j.payload, j.environment,
            j.request_memory, j.request_cpus, j.site_pin, j.queue, j.priority,
            j.inputs, j.outputs, j.tags, j.retry, None, None, None, None, None, now, now,
        )  # fmt: skip


def planned_snapshot(wf: NewWorkflow, sub: SubmittedWorkflow, campaign_id: int = 0,
                     now: float = 0.0) -> WorkflowSnapshot:
    """The snapshot that :meth:`SQLStore.load_workflow` would return right after ``wf`` was
    submitted with ids ``sub``, built without a database: for a workflow core that must run in
    the submitting transaction (a prompt visit), and for tests of the cores."""
    workflow = WorkflowRow(sub.workflow_id, campaign_id, wf.name, wf.owner, wf.home_site, WorkflowStatus.NEW.value,
                           False, now, now, None, wf.settings)
    tasks = [TaskRow(sub.first_task_id + i, sub.workflow_id, t.label, t.chunk, t.n_jobs, TaskStatus.REGISTERED.value)
             for i, t in enumerate(wf.tasks)]
    width = len(JobRow._fields)
    jobs = [JobRow._make(r[:width]) for r in _job_rows(wf, sub.workflow_id, sub.first_job_id, sub.first_task_id, now)]
    jobs.sort(key=lambda j: j.idx)
    pending = JobStatus.PENDING.value
    quanta = sorted((QuantumRow(sub.workflow_id, q.idx, sub.first_job_id + q.job_idx, q.pos, q.name, q.label, pending,
                                FIRST_ATTEMPT, None, None, None, None) for q in wf.quanta), key=lambda q: q.idx)
    return WorkflowSnapshot(workflow, tasks, jobs, list(wf.edges), {}, quanta, list(wf.quantum_edges))


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Materialising 10^5 row tuples otherwise sets off repeated full collections that cost
    several times the fetch itself; the rows hold only scalars, so they form no cycles."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _pending_counts(wf: NewWorkflow, first_task: int) -> Iterator[tuple[int, str, int, int]]:
    """``(task_id, "pending", jobs, largest memory request)`` of each task of a new workflow."""
    n, memory = [0] * len(wf.tasks), [0] * len(wf.tasks)
    for j in wf.jobs:
        n[j.task_idx] += 1
        if j.request_memory > memory[j.task_idx]:
            memory[j.task_idx] = j.request_memory
    pending = JobStatus.PENDING.value
    return ((first_task + t, pending, n[t], memory[t]) for t in range(len(n)) if n[t])


def _edge_rows(workflow_id: int, edges: Iterable[tuple[int, int]]) -> Iterator[tuple]:
    return ((workflow_id, child, parent) for child, parent in edges)


def _workflow_row(r: Sequence[Any]) -> WorkflowRow:
    """SQLite keeps booleans as 0/1."""
    return WorkflowRow(*r[:6], bool(r[6]), *r[7:])


@dataclass(slots=True)
class _Plan:
    """A campaign laid out as rows, ids already assigned."""

    result: SubmittedCampaign
    workflows: list[tuple] = field(default_factory=list)
    tasks: list[tuple] = field(default_factory=list)
    jobs: list[Iterator[tuple]] = field(default_factory=list)
    edges: list[Iterator[tuple]] = field(default_factory=list)


#: Failed attempts per job, split into the user's budget and the system's (see panray.retry).
_FAILURES = (
    "SELECT a.job_id,"
    " SUM(CASE WHEN a.error_class IN ('payload', 'memory') THEN 1 ELSE 0 END),"
    " SUM(CASE WHEN a.error_class = 'system' THEN 1 ELSE 0 END)"
    " FROM attempts a JOIN jobs j ON j.job_id = a.job_id"
    " WHERE j.workflow_id = ? AND a.status = 'failed' GROUP BY a.job_id"
)


class SQLStore(QuantaSQL, MonitorSQL, StateStore):
    """A :class:`StateStore` over any SQL database that :class:`Dialect` can describe.

    Subclasses provide a transaction (``_transaction``) and the bulk moves; every other method,
    and all SQL text outside the bulk moves, lives here.
    """

    dialect: Dialect
    #: Pauses between tries of a call that found the store unreachable (see :func:`retried`).
    retry_delays: tuple[float, ...] = RETRY_DELAYS
    keep_aggregates: bool = True  #: the monitor's aggregates change with every batch (see stop_monitor_aggregates)

    @abstractmethod
    def _transaction(self, *, write: bool) -> AbstractContextManager[Cursor]:
        """One transaction on the store's connection, committed on success, else rolled back.
        ``write`` transactions take the write lock up front (ids are allocated inside them).
        A lost connection or a busy database raises StoreUnavailableError (``in_doubt`` if it
        came while committing) after dropping the connection, which the next call opens again."""

    @abstractmethod
    def _bulk_insert(self, cur: Cursor, table: str, columns: Sequence[str], rows: Iterable[tuple]) -> None:
        """Insert many rows given in ``columns`` order."""

    @abstractmethod
    def _bulk_update_jobs(self, cur: Cursor, states: Sequence[JobState]) -> int:
        """Write JobState columns over the jobs' rows (unique job ids); return rows changed."""

    @abstractmethod
    def _bulk_upsert_attempts(self, cur: Cursor, rows: Sequence[tuple]) -> None:
        """Insert attempts given in ATTEMPT_COLUMNS order (unique keys), replacing any stored with
        the same (job_id, attempt_nr)."""

    # -- schema -------------------------------------------------------------------------------

    @retried()
    def _ensure_schema(self) -> None:
        """Create the tables on first open; refuse a database made by another schema version."""
        d = self.dialect
        with self._transaction(write=True) as cur:
            if d.schema_lock:
                cur.execute(d.schema_lock)
            cur.execute(d.sql(d.table_exists), ("schema_version",))
            if cur.fetchone() is None:
                cur.execute(d.sql(d.table_exists), ("jobs",))
                if cur.fetchone() is not None:
                    raise StoreError(f"state store {self.url} has panray's tables but no schema_version: "
                                     "not a store this panray made; use a new database")
                for statement in d.ddl():
                    cur.execute(statement)
                cur.execute(d.sql("INSERT INTO schema_version (version) VALUES (?)"), (SCHEMA_VERSION,))
                cur.executemany(d.sql("INSERT INTO counters (name, value) VALUES (?, 0)"), [(c,) for c in COUNTERS])
                return
            cur.execute("SELECT version FROM schema_version")
            found = [r[0] for r in cur.fetchall()]
            while len(found) == 1 and found[0] in _MIGRATIONS:
                for statement in _MIGRATIONS[found[0]]:
                    cur.execute(statement.format(**d.types, **_CHECKS))
                if found[0] == 3:
                    self._fill_monitor(cur)
                if found[0] == 4:
                    for statement in d.v4_triggers:
                        cur.execute(statement)
                found = [found[0] + 1]
                cur.execute(d.sql("UPDATE schema_version SET version = ?"), (found[0],))
        if found != [SCHEMA_VERSION]:
            raise StoreError(
                f"state store {self.url} has schema version {found}, this panray needs {SCHEMA_VERSION}; "
                "use a matching panray or a new database"
            )

    # -- writes -------------------------------------------------------------------------------

    def _allocate(self, cur: Cursor, counter: str, n: int) -> int:
        """The first of ``n`` fresh ids; the counter row is locked until the transaction ends."""
        cur.execute(self.dialect.sql("UPDATE counters SET value = value + ? WHERE name = ? RETURNING value"), (n, counter))
        return int(cur.fetchone()[0]) - n + 1

    def _plan(self, cur: Cursor, campaign: NewCampaign, now: float) -> _Plan:
        wfs = campaign.workflows
        campaign_id = self._allocate(cur, "campaign", 1)
        workflow_id = self._allocate(cur, "workflow", len(wfs))
        task_id = self._allocate(cur, "task", sum(len(w.tasks) for w in wfs))
        job_id = self._allocate(cur, "job", sum(len(w.jobs) for w in wfs))
        plan = _Plan(SubmittedCampaign(campaign_id, []))
        for wf in wfs:
            plan.result.workflows.append(SubmittedWorkflow(workflow_id, job_id, task_id))
            plan.workflows.append((
                workflow_id, campaign_id, wf.name, wf.owner, wf.home_site, WorkflowStatus.NEW.value,
                False, now, now, None, wf.settings,
            ))  # fmt: skip
            plan.tasks.extend(
                (task_id + i, workflow_id, t.label, t.chunk, t.n_jobs, TaskStatus.REGISTERED.value)
                for i, t in enumerate(wf.tasks)
            )
            plan.jobs.append(_job_rows(wf, workflow_id, job_id, task_id, now))
            plan.edges.append(_edge_rows(workflow_id, wf.edges))
            workflow_id, task_id, job_id = workflow_id + 1, task_id + len(wf.tasks), job_id + len(wf.jobs)
        return plan

    @retried(idempotent=False)
    def submit(self, campaign: NewCampaign,
               then: Callable[[SubmittedCampaign], ChangeBatch] | None = None) -> SubmittedCampaign:
        now = time.time()
        with self._transaction(write=True) as cur:
            plan = self._plan(cur, campaign, now)
            cur.execute(
                self.dialect.sql("INSERT INTO campaigns (campaign_id, name, owner, created) VALUES (?, ?, ?, ?)"),
                (plan.result.campaign_id, campaign.name, campaign.owner, now),
            )
            self._bulk_insert(cur, "workflows", WorkflowRow._fields, plan.workflows)
            self._bulk_insert(cur, "tasks", TASK_COLUMNS, plan.tasks)
            self._bulk_insert(cur, "jobs", JOB_INSERT_COLUMNS, chain.from_iterable(plan.jobs))
            self._bulk_insert(cur, "edges", EDGE_COLUMNS, chain.from_iterable(plan.edges))
            if self.keep_aggregates:
                deltas = Deltas()
                for wf, sub in zip(campaign.workflows, plan.result.workflows):
                    deltas.jobs_of_new_tasks(_pending_counts(wf, sub.first_task_id))
                self._write_deltas(cur, deltas)
            for wf, sub in zip(campaign.workflows, plan.result.workflows):
                self._insert_quanta(cur, wf, sub.workflow_id, sub.first_job_id)
            if then is not None:
                self._apply(cur, then(plan.result))
        return plan.result

    @retried(idempotent=lambda changes: changes.writer is not None)
    def apply(self, changes: ChangeBatch) -> None:
        if not changes:
            return
        with self._transaction(write=True) as cur:
            if changes.writer is not None:
                cur.execute(self.dialect.sql(_MARK_BATCH), (changes.writer, changes.seq))
                if cur.rowcount == 0:
                    return  # stored before: its commit went through, the acknowledgement did not
            self._apply(cur, changes)

    def _apply(self, cur: Cursor, changes: ChangeBatch) -> None:
        sql, now = self.dialect.sql, time.time()
        states = _last_wins(changes.jobs, lambda s: s[0])
        attempts = [(*a, normalise(a.diag) if a.status == _FAILED else None)
                    for a in _last_wins(changes.attempts, lambda a: (a[0], a[1]))]
        if self.keep_aggregates and (states or attempts):
            self._count_changes(cur, states, attempts)  # reads the jobs and attempts as they were
        if states:
            if self._bulk_update_jobs(cur, states) != len(states):
                self._raise_missing(cur, "jobs", "job_id", [s[0] for s in states])
        if changes.history:
            try:
                history = compact(changes.history, _JOB_STATUSES)
            except ValueError as exc:  # a path's status, which no CHECK sees
                raise rejected(self.url, exc) from None
            self._bulk_insert(cur, "job_history", HISTORY_STORED_COLUMNS, history)
        if changes.quanta:
            self._update_quanta(cur, changes.quanta)
        if attempts:
            self._bulk_upsert_attempts(cur, attempts)
        if changes.tasks:
            tasks = _last_wins(changes.tasks, lambda t: t[0])
            cur.executemany(sql("UPDATE tasks SET status = ? WHERE task_id = ?"), [(s, i) for i, s in tasks])
            if cur.rowcount != len(tasks):
                self._raise_missing(cur, "tasks", "task_id", [t[0] for t in tasks])
        if changes.workflows:
            wfs = _last_wins(changes.workflows, lambda w: w[0])
            cur.executemany(
                sql("UPDATE workflows SET status = ?, ended = ?, modified = ? WHERE workflow_id = ?"),
                [(s, end, now, i) for i, s, end in wfs],
            )
            if cur.rowcount != len(wfs):
                self._raise_missing(cur, "workflows", "workflow_id", [w[0] for w in wfs])
        for table, columns, rows in (
            ("brokerage_decisions", DecisionRow._fields, changes.decisions),
            ("dataset_locations", LocationRow._fields, changes.locations),
            ("transfers", TransferRow._fields, changes.transfers),
        ):
            if rows:
                self._bulk_insert(cur, table, columns, rows)

    @retried()
    def set_cancelled(self, workflow_id: int, cancelled: bool) -> None:
        with self._transaction(write=True) as cur:
            cur.execute(
                self.dialect.sql("UPDATE workflows SET cancelled = ?, modified = ? WHERE workflow_id = ?"),
                (cancelled, time.time(), workflow_id),
            )
            if cur.rowcount != 1:
                raise NotFoundError(f"no workflow {workflow_id} in this store")

    @retried()
    def set_held(self, workflow_id: int, held: bool | Sequence[int]) -> None:
        with self._transaction(write=True) as cur:
            cur.execute(self.dialect.sql("SELECT settings FROM workflows WHERE workflow_id = ?"), (workflow_id,))
            row = cur.fetchone()
            if row is None:
                raise NotFoundError(f"no workflow {workflow_id} in this store")
            settings = json.loads(row[0] or "{}")
            settings["held"] = True if held is True else sorted(set(held or ()))
            cur.execute(self.dialect.sql("UPDATE workflows SET settings = ?, modified = ? WHERE workflow_id = ?"),
                        (json.dumps(settings), time.time(), workflow_id))

    @retried()
    def set_priority(self, workflow_id: int, priority: int, *, task_id: int | None = None,
                     job_ids: Sequence[int] | None = None) -> int:
        where, params = ["workflow_id = ?"], [workflow_id]
        if task_id is not None:
            where.append("task_id = ?")
            params.append(task_id)
        with self._transaction(write=True) as cur:
            if job_ids is None:
                cur.execute(self.dialect.sql(f"UPDATE jobs SET priority = ? WHERE {' AND '.join(where)}"),
                            (priority, *params))
                return int(cur.rowcount)
            cur.executemany(self.dialect.sql(f"UPDATE jobs SET priority = ? WHERE {' AND '.join(where)} AND job_id = ?"),
                            [(priority, *params, j) for j in job_ids])
            return int(cur.rowcount)

    def _select_in(self, cur: Cursor, text: str, ids: Sequence[int], *, lock: bool = False) -> list[Any]:
        """The rows of ``text`` (a SELECT ending in an id column) whose id is one of ``ids``;
        ``lock``: rows this transaction is about to write."""
        tail = self.dialect.for_update if lock else ""
        if self.dialect.id_array:
            cur.execute(self.dialect.sql(f"{text} = ANY(?){tail}"), (list(ids),))
            return cur.fetchall()
        found: list[Any] = []
        for i in range(0, len(ids), _IN_CHUNK):
            chunk = ids[i : i + _IN_CHUNK]
            cur.execute(self.dialect.sql(f"{text} IN ({', '.join('?' * len(chunk))}){tail}"), chunk)
            found.extend(cur.fetchall())
        return found

    def _count_changes(self, cur: Cursor, states: Sequence[JobState], attempts: Sequence[tuple]) -> None:
        """Change the monitor's aggregates by what the batch moves: one upsert per touched key."""
        deltas = Deltas()
        ids = sorted({s[0] for s in states} | {a[0] for a in attempts})
        stored = {r[0]: r[1:] for r in self._select_in(cur, _STORED_JOBS, ids, lock=True)}
        for s in states:
            old = stored.get(s[0])
            if old is not None:  # else the update names the missing job and nothing is stored
                deltas.job(old, -1)
                deltas.job((old[0], s.status, s.site, s.error_class, s.exit_code, s.start_time, s.end_time,
                            s.request_memory), 1)
        if attempts:
            keys = {(a[0], a[1]) for a in attempts}
            for job_id, nr, error_class, exit_code, cause, diag in self._select_in(
                    cur, _FAILED_ATTEMPTS, sorted({a[0] for a in attempts}), lock=True):
                if (job_id, nr) in keys:
                    deltas.error(stored[job_id][0], job_id, error_class, exit_code, cause, diag, -1)
            for a in attempts:
                job = stored.get(a[0])
                if job is not None:
                    deltas.max_pss(job[0], a[11])
                    if a[2] == _FAILED:
                        deltas.error(job[0], a[0], a[8], a[7], a[13], a[9], 1)
        self._write_deltas(cur, deltas)

    def _write_deltas(self, cur: Cursor, deltas: Deltas) -> None:
        for text, rows in ((UPSERT_JOB_STATS, deltas.job_rows()), (UPSERT_MAX_PSS, deltas.pss_rows()),
                           (UPSERT_ERROR_STATS, deltas.error_rows())):
            if rows:
                cur.executemany(self.dialect.sql(text), rows)

    def stop_monitor_aggregates(self) -> None:
        """Stop keeping the aggregates (the monitor's counts go stale): only for measuring what
        keeping them costs the writers (``benchmarks.monitor_writes``, ``dag_throughput --trigger-cost``)."""
        self.keep_aggregates = False

    def _raise_missing(self, cur: Cursor, table: str, key: str, ids: list[int]) -> None:
        """Name the ids of a batch that the store does not hold (the batch is rolled back)."""
        found = {r[0] for r in self._select_in(cur, f"SELECT {key} FROM {table} WHERE {key}", ids)}
        missing = [i for i in ids if i not in found]
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise NotFoundError(f"{len(missing)} {table} not in state store {self.url}: {shown}; nothing was stored")

    # -- reads --------------------------------------------------------------------------------

    @retried()
    def load_workflow(self, workflow_id: int) -> WorkflowSnapshot:
        sql = self.dialect.sql
        with self._transaction(write=False) as cur, _gc_paused():
            workflow = self._one(cur, sql(WORKFLOW_SELECT + " WHERE workflow_id = ?"), workflow_id, "workflow")
            cur.execute(sql(TASK_SELECT), (workflow_id,))
            tasks = list(map(TaskRow._make, cur.fetchall()))
            cur.execute(sql(JOB_SELECT + " WHERE workflow_id = ? ORDER BY idx"), (workflow_id,))
            jobs = list(map(JobRow._make, cur.fetchall()))
            cur.execute(sql("SELECT child_idx, parent_idx FROM edges WHERE workflow_id = ?"), (workflow_id,))
            edges = cur.fetchall()
            cur.execute(sql(_FAILURES), (workflow_id,))
            failures = {job_id: (int(user), int(system)) for job_id, user, system in cur.fetchall()}
            quanta, quantum_edges = self._load_quanta(cur, workflow_id)
        return WorkflowSnapshot(_workflow_row(workflow), tasks, jobs, edges, failures, quanta, quantum_edges)

    def workflow(self, workflow_id: int) -> WorkflowRow:
        with self._transaction(write=False) as cur:
            sql = self.dialect.sql(WORKFLOW_SELECT + " WHERE workflow_id = ?")
            return _workflow_row(self._one(cur, sql, workflow_id, "workflow"))

    def workflows(self, *, campaign_id: int | None = None, active_only: bool = False) -> list[WorkflowRow]:
        where = [" campaign_id = ?"] if campaign_id is not None else []
        if active_only:
            where.append(_ACTIVE)
        text = WORKFLOW_SELECT + (" WHERE" + " AND".join(where) if where else "") + " ORDER BY workflow_id DESC"
        rows = self._fetch(text, () if campaign_id is None else (campaign_id,))
        return [_workflow_row(r) for r in rows]

    def tasks(self, workflow_id: int) -> list[TaskRow]:
        return list(map(TaskRow._make, self._fetch(TASK_SELECT, (workflow_id,))))

    def job_counts(self, workflow_id: int) -> dict[int, dict[str, int]]:
        counts: dict[int, dict[str, int]] = {}
        text = "SELECT task_id, status, COUNT(*) FROM jobs WHERE workflow_id = ? GROUP BY task_id, status"
        for task_id, status, n in self._fetch(text, (workflow_id,)):
            counts.setdefault(task_id, {})[status] = n
        return counts

    def jobs(
        self, workflow_id: int, *, status: Sequence[str] | None = None, limit: int | None = None,
        label: str | None = None, site: str | None = None, offset: int = 0,
    ) -> list[JobRow]:
        text, params = JOB_SELECT + " WHERE workflow_id = ?", [workflow_id]
        if status is not None:
            statuses = [str(s) for s in status]
            if not statuses:
                return []
            text += f" AND status IN ({', '.join('?' * len(statuses))})"
            params.extend(statuses)
        for column, value in (("label", label), ("site", site)):
            if value is not None:
                text += f" AND {column} = ?"
                params.append(value)
        text += " ORDER BY idx"
        if limit is not None or offset:
            text += " LIMIT ? OFFSET ?"
            params.extend((_NO_LIMIT if limit is None else limit, offset))
        with _gc_paused():
            return list(map(JobRow._make, self._fetch(text, params)))

    @retried()
    def job(self, job_id: int) -> JobRow:
        with self._transaction(write=False) as cur:
            return JobRow._make(self._one(cur, self.dialect.sql(JOB_SELECT + " WHERE job_id = ?"), job_id, "job"))

    def attempts(self, job_id: int) -> list[AttemptRow]:
        text = f"SELECT {_cols(AttemptRow._fields)} FROM attempts WHERE job_id = ? ORDER BY attempt_nr"
        return list(map(AttemptRow._make, self._fetch(text, (job_id,))))

    def max_pss(self, workflow_id: int) -> dict[int, int]:
        text = ("SELECT a.job_id, a.max_pss_kb FROM attempts a JOIN jobs j ON j.job_id = a.job_id"
                " WHERE j.workflow_id = ? ORDER BY a.job_id, a.attempt_nr")
        latest = dict(self._fetch(text, (workflow_id,)))  # ordered by attempt: the latest one wins
        return {job_id: int(kb) for job_id, kb in latest.items() if kb is not None}

    def history(self, job_id: int) -> list[HistoryRow]:
        text = f"SELECT {_cols(HISTORY_STORED_COLUMNS)} FROM job_history WHERE job_id = ? ORDER BY seq"
        return expand(self._fetch(text, (job_id,)))

    def decisions(self, job_id: int) -> list[DecisionRow]:
        text = f"SELECT {_cols(DecisionRow._fields)} FROM brokerage_decisions WHERE job_id = ? ORDER BY time"
        return list(map(DecisionRow._make, self._fetch(text, (job_id,))))

    def transfers(self, job_id: int) -> list[TransferRow]:
        text = f"SELECT {_cols(TransferRow._fields)} FROM transfers WHERE job_id = ? ORDER BY time"
        return list(map(TransferRow._make, self._fetch(text, (job_id,))))

    def site_job_counts(self) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        text = "SELECT site, status, SUM(n) FROM task_job_stats WHERE site <> '' GROUP BY site, status HAVING SUM(n) > 0"
        for site, status, n in self._fetch(text, ()):  # kept aggregates: no scan of the jobs
            counts.setdefault(site, {})[status] = int(n)
        return counts

    def site_statuses(self) -> dict[str, str]:
        return dict(self._fetch("SELECT site, status FROM site_status ORDER BY site", ()))

    @retried()
    def set_site_status(self, site: str, status: str) -> None:
        with self._transaction(write=True) as cur:
            cur.execute(
                self.dialect.sql(
                    "INSERT INTO site_status (site, status, modified) VALUES (?, ?, ?)"
                    " ON CONFLICT (site) DO UPDATE SET status = excluded.status, modified = excluded.modified"
                ),
                (str(site), SiteStatus(status).value, time.time()),
            )

    @retried()
    def record_audit(self, rows: Sequence[AuditRow]) -> None:
        if rows:
            with self._transaction(write=True) as cur:
                self._bulk_insert(cur, "audit", AuditRow._fields, rows)

    @retried()
    def audit(self, *, user: str | None = None, limit: int = 100) -> list[AuditRow]:
        text, params = f"SELECT {_cols(AuditRow._fields)} FROM audit", []
        if user is not None:
            text += " WHERE user_name = ?"
            params.append(user)
        return list(map(AuditRow._make, self._fetch(text + " ORDER BY seq DESC LIMIT ?", [*params, limit])))

    @retried()
    def _fetch(self, text: str, params: Sequence[Any]) -> list[Any]:
        with self._transaction(write=False) as cur:
            cur.execute(self.dialect.sql(text), params)
            return cur.fetchall()

    def _one(self, cur: Cursor, text: str, key: int, what: str) -> Any:
        cur.execute(text, (key,))
        row = cur.fetchone()
        if row is None:
            raise NotFoundError(f"no {what} {key} in this store")
        return row
