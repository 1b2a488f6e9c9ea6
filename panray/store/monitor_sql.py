"""The operator monitor's reads: filtered pages of jobs and aggregates that stay fast at 200k jobs.

Nothing here returns a whole workflow's jobs or counts them row by row. Per-task counts (by
status, site, error class and exit code, so every filter of a job page has its exact total), wall
time, largest memory request, max PSS and failed attempts by normalised cause are *kept* in three
small tables that the store changes with every batch it writes (one upsert per touched key,
:mod:`panray.store.aggregates`), so the workflow page reads a few hundred rows whatever the
workflow's size, and no writer of the store has to remember them. The store fills
``attempts.cause`` (:func:`panray.diagnostics.normalise` of the diag) as it writes a failed
attempt. The tables, columns and indexes below are schema version 4 (and 5).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from panray.diagnostics import normalise
from panray.store.base import (
    DecisionRow,
    ErrorGroupRow,
    JobPage,
    JobQuery,
    JobRow,
    TaskStatsRow,
    WorkflowQuery,
    WorkflowRow,
)

#: ``task_job_stats`` keys a job by its task, status, site, error class and exit code ('' and
#: NO_EXIT stand for none: key columns cannot be NULL), so any page filter of those has its exact count.
NO_EXIT = -(2**31)  #: the aggregates' exit code of a job that has none (no process exits with it)
MONITOR_DDL = (
    """CREATE TABLE task_job_stats (
        task_id {id} NOT NULL, status TEXT NOT NULL, site TEXT NOT NULL, error_class TEXT NOT NULL,
        exit_code INTEGER NOT NULL, n {id} NOT NULL, wall {float} NOT NULL, max_request INTEGER NOT NULL,
        PRIMARY KEY (task_id, status, site, error_class, exit_code)){without_rowid}""",
    "CREATE TABLE task_max_pss (task_id {id} PRIMARY KEY, max_pss_kb {id} NOT NULL)",
    """CREATE TABLE task_error_stats (
        task_id {id} NOT NULL, error_class TEXT NOT NULL, exit_code INTEGER NOT NULL, cause TEXT NOT NULL,
        n {id} NOT NULL, example_job_id {id} NOT NULL, example_diag TEXT,
        PRIMARY KEY (task_id, error_class, exit_code, cause)){without_rowid}""",
    """CREATE TABLE label_edges (workflow_id {id} NOT NULL, parent_label TEXT NOT NULL, child_label TEXT NOT NULL,
        PRIMARY KEY (workflow_id, parent_label, child_label))""",  # the label graph, filled when first read
    "ALTER TABLE attempts ADD COLUMN cause TEXT",  # normalised diag of a failed attempt (panray.diagnostics)
    "CREATE INDEX jobs_workflow_label ON jobs (workflow_id, label, idx)",
    "CREATE INDEX jobs_workflow_site ON jobs (workflow_id, site, idx)",
    "CREATE INDEX brokerage_decisions_time ON brokerage_decisions (time)",
    # "longest first" reads its pages from here instead of sorting the workflow's jobs
    "CREATE INDEX jobs_workflow_duration ON jobs (workflow_id, (end_time - start_time) DESC{nulls_last}, idx)",
)
#: What a store of schema version 3 had of the above, dropped before they are made again.
MONITOR_V3 = ("DROP TABLE IF EXISTS task_job_stats", "DROP TABLE IF EXISTS task_max_pss",
              "DROP INDEX IF EXISTS jobs_workflow_label", "DROP INDEX IF EXISTS jobs_workflow_site",
              "DROP INDEX IF EXISTS brokerage_decisions_time", "DROP INDEX IF EXISTS attempts_failed",
              "DROP INDEX IF EXISTS jobs_workflow_duration")
_FILL = tuple(statement.format(no_exit=NO_EXIT) for statement in (
    "INSERT INTO task_job_stats (task_id, status, site, error_class, exit_code, n, wall, max_request)"
    " SELECT task_id, status, COALESCE(site, ''), COALESCE(error_class, ''), COALESCE(exit_code, {no_exit}), COUNT(*),"
    " SUM(COALESCE(end_time - start_time, 0)), MAX(request_memory) FROM jobs GROUP BY 1, 2, 3, 4, 5",
    "INSERT INTO task_max_pss (task_id, max_pss_kb) SELECT j.task_id, MAX(a.max_pss_kb) FROM attempts a"
    " JOIN jobs j ON j.job_id = a.job_id WHERE a.max_pss_kb IS NOT NULL GROUP BY j.task_id",
    "INSERT INTO task_error_stats (task_id, error_class, exit_code, cause, n, example_job_id, example_diag)"
    " SELECT j.task_id, COALESCE(a.error_class, ''), COALESCE(a.exit_code, {no_exit}), COALESCE(a.cause, ''), COUNT(*), MIN(a.job_id),"
    " MIN(a.diag) FROM attempts a JOIN jobs j ON j.job_id = a.job_id WHERE a.status = 'failed' GROUP BY 1, 2, 3, 4",
))
_TRIGGERS = ("jobs_stats_insert", "jobs_stats_update", "attempts_pss_insert", "attempts_pss_update",
             "attempts_errors_insert", "attempts_errors_update")
#: What kept the aggregates up to schema version 4 (row triggers on SQLite; statement triggers and
#: their functions on PostgreSQL), dropped on migration: the store changes them per batch now.
SQLITE_V4_TRIGGERS = tuple(f"DROP TRIGGER IF EXISTS {t}" for t in _TRIGGERS)
POSTGRES_V4_TRIGGERS = (
    *(f"DROP TRIGGER IF EXISTS {t} ON {t.split('_')[0]}" for t in _TRIGGERS),
    *(f"DROP FUNCTION IF EXISTS {f}()" for f in ("panray_task_job_stats", "panray_task_max_pss", "panray_task_error_stats")),
)
_STATS_OF = "FROM task_job_stats s JOIN tasks t ON t.task_id = s.task_id WHERE s.n > 0 AND t.workflow_id"
_JOB_COLUMNS = ", ".join(JobRow._fields)
_WORKFLOW_COLUMNS = ", ".join(WorkflowRow._fields)
#: Sort keys a page may ask for -> ORDER BY text; idx breaks ties so pages never overlap.
JOB_SORTS = {"idx": "idx", "-duration": "(end_time - start_time) DESC NULLS LAST, idx"}
_FILL_LABEL_EDGES = (
    "INSERT INTO label_edges (workflow_id, parent_label, child_label) SELECT DISTINCT ?, p.label, c.label FROM edges e"
    " JOIN jobs c ON c.workflow_id = e.workflow_id AND c.idx = e.child_idx"
    " JOIN jobs p ON p.workflow_id = e.workflow_id AND p.idx = e.parent_idx"
    " WHERE e.workflow_id = ? ON CONFLICT DO NOTHING"  # another reader filled them meanwhile
)
COUNT_CAP = 10_000  #: a job page counts name-prefix matches up to this many


def _marks(values: Sequence[Any]) -> str:
    return ", ".join("?" * len(values))


#: The columns a job page filters on, the same in ``jobs`` and (with ``tasks``) in ``task_job_stats``.
_FILTERED = ("workflow_id", "status", "label", "site", "error_class", "exit_code", "task_id")


def _filters(query: JobQuery, column: dict[str, str], workflow_id: int) -> tuple[list[str], list[Any]]:
    """WHERE conditions and parameters for the query's filters (a name prefix aside), in ``column``'s spelling."""
    where, params = [f"{column['workflow_id']} = ?"], [workflow_id]
    if query.status:
        where.append(f"{column['status']} IN ({_marks(query.status)})")
        params.extend(query.status)
    for key, value in (("label", query.label), ("site", query.site), ("error_class", query.error_class),
                       ("exit_code", query.exit_code), ("task_id", query.task_id)):
        if value is not None:
            where.append(f"{column[key]} = ?")
            params.append(value)
    return where, params


class MonitorSQL:
    """The monitor part of :class:`panray.store.schema.SQLStore` (mixed in; uses its ``_fetch``)."""

    dialect: Any
    _fetch: Callable[[str, Sequence[Any]], list[Any]]  #: SQLStore's: one read statement, all rows
    _transaction: Callable[..., AbstractContextManager[Any]]  #: SQLStore's

    def _fill_monitor(self, cur: Any) -> None:
        """Fill the aggregates of a store made before they were kept (a migration)."""
        cur.execute("SELECT job_id, attempt_nr, diag FROM attempts WHERE status = 'failed'")
        causes = [(normalise(diag), job_id, attempt_nr) for job_id, attempt_nr, diag in cur.fetchall()]
        cur.executemany(self.dialect.sql("UPDATE attempts SET cause = ? WHERE job_id = ? AND attempt_nr = ?"), causes)
        for statement in _FILL:
            cur.execute(statement)

    def find_workflows(self, query: WorkflowQuery) -> tuple[list[WorkflowRow], int]:
        where, params = ["1 = 1"], []
        for clause, value in (("workflow_id = ?", query.workflow_id), ("owner = ?", query.owner), ("status = ?", query.status),
                              ("created >= ?", query.created_after)):
            if value is not None:
                where.append(clause)
                params.append(value)
        if query.name:
            where.append("LOWER(name) LIKE ?")
            params.append("%" + query.name.lower().replace("%", "").replace("_", "") + "%")
        cond = " AND ".join(where)
        [(total,)] = self._fetch(f"SELECT COUNT(*) FROM workflows WHERE {cond}", params)
        rows = self._fetch(f"SELECT {_WORKFLOW_COLUMNS} FROM workflows WHERE {cond}"
                           " ORDER BY workflow_id DESC LIMIT ? OFFSET ?", [*params, query.limit, query.offset])
        return [WorkflowRow(*r[:6], bool(r[6]), *r[7:]) for r in rows], int(total)

    def _per_workflow(self, text: str, workflow_ids: Sequence[int]) -> dict[int, dict[str, int]]:
        out: dict[int, dict[str, int]] = {w: {} for w in workflow_ids}
        if workflow_ids:
            for wf, status, n in self._fetch(text.format(_marks(workflow_ids)), list(workflow_ids)):
                out[wf][status] = int(n)
        return out

    def workflow_job_counts(self, workflow_ids: Sequence[int]) -> dict[int, dict[str, int]]:
        return self._per_workflow(f"SELECT t.workflow_id, s.status, SUM(s.n) {_STATS_OF} IN ({{}})"
                                  " GROUP BY t.workflow_id, s.status", workflow_ids)

    def workflow_task_counts(self, workflow_ids: Sequence[int]) -> dict[int, dict[str, int]]:
        return self._per_workflow("SELECT workflow_id, status, COUNT(*) FROM tasks WHERE workflow_id IN ({})"
                                  " GROUP BY workflow_id, status", workflow_ids)

    def task_stats(self, workflow_id: int) -> list[TaskStatsRow]:
        text = (f"SELECT s.task_id, s.status, SUM(s.n), MAX(s.max_request), SUM(s.wall) {_STATS_OF} = ?"
                " GROUP BY s.task_id, s.status ORDER BY s.task_id, s.status")
        return [TaskStatsRow(t, s, int(n), int(m), float(w)) for t, s, n, m, w in self._fetch(text, (workflow_id,))]

    def task_max_pss(self, workflow_id: int) -> dict[int, int]:
        text = "SELECT p.task_id, p.max_pss_kb FROM task_max_pss p JOIN tasks t ON t.task_id = p.task_id WHERE t.workflow_id = ?"
        return {t: int(kb) for t, kb in self._fetch(text, (workflow_id,))}

    def job_page(self, workflow_id: int, query: JobQuery) -> JobPage:
        where, params = _filters(query, {c: c for c in _FILTERED}, workflow_id)
        if query.name:
            where.append("name >= ? AND name < ?")  # a prefix as a range: no LIKE escaping, index-friendly
            params.extend([query.name, query.name + "\U0010ffff"])
        cond = " AND ".join(where)
        total, exact = self._job_total(workflow_id, query, cond, params)
        select = f"SELECT {_JOB_COLUMNS}, creation_time FROM jobs WHERE {cond}"
        if total == 0:
            rows = []
        elif query.sort == "idx" and query.after_idx is not None:
            rows = self._fetch(f"{select} AND idx > ? ORDER BY idx LIMIT ?", [*params, query.after_idx, query.limit])
        elif query.sort == "idx" and query.before_idx is not None:
            rows = self._fetch(f"{select} AND idx < ? ORDER BY idx DESC LIMIT ?",
                               [*params, query.before_idx, query.limit])[::-1]
        else:
            rows = self._fetch(f"{select} ORDER BY {JOB_SORTS[query.sort]} LIMIT ? OFFSET ?",
                               [*params, query.limit, query.offset])
        return JobPage([JobRow._make(r[:-1]) for r in rows], [float(r[-1]) for r in rows], total, exact)

    def _job_total(self, workflow_id: int, query: JobQuery, cond: str, params: list[Any]) -> tuple[int, bool]:
        """How many jobs match: exact from the task aggregates unless a name prefix is asked for,
        then counted up to :data:`COUNT_CAP` (``exact`` False when there are more)."""
        if query.name:
            [(n,)] = self._fetch(f"SELECT COUNT(*) FROM (SELECT 1 FROM jobs WHERE {cond} LIMIT ?) m",
                                 [*params, COUNT_CAP + 1])
            return min(int(n), COUNT_CAP), int(n) <= COUNT_CAP
        where, args = _filters(query, {c: ("t." if c in ("workflow_id", "label") else "s.") + c for c in _FILTERED},
                               workflow_id)
        [(n,)] = self._fetch("SELECT COALESCE(SUM(s.n), 0) FROM task_job_stats s JOIN tasks t ON t.task_id = s.task_id"
                             f" WHERE {' AND '.join(where)}", args)
        return int(n), True

    def jobs_max_pss(self, job_ids: Sequence[int]) -> dict[int, int]:
        if not job_ids:
            return {}
        text = (f"SELECT job_id, max_pss_kb FROM attempts WHERE job_id IN ({_marks(job_ids)})"
                " AND max_pss_kb IS NOT NULL ORDER BY job_id, attempt_nr")
        return {j: int(kb) for j, kb in self._fetch(text, list(job_ids))}  # the latest attempt wins

    def error_groups(self, workflow_id: int, *, limit: int = 200) -> list[ErrorGroupRow]:
        """The kept ``task_error_stats`` rows of the workflow: a few per task, whatever the number of failures."""
        text = ("SELECT s.task_id, s.error_class, s.exit_code, s.cause, s.n, s.example_job_id, s.example_diag"
                " FROM task_error_stats s JOIN tasks t ON t.task_id = s.task_id WHERE t.workflow_id = ? AND s.n > 0"
                " ORDER BY s.n DESC, s.task_id, s.cause LIMIT ?")
        return [ErrorGroupRow(t, c or None, None if e == NO_EXIT else int(e), m or "(no diagnostic)", int(n), int(x), d)
                for t, c, e, m, n, x, d in self._fetch(text, (workflow_id, limit))]

    def label_edges(self, workflow_id: int) -> list[tuple[str, str]]:
        """Read from ``label_edges``, filled on the first ask: joining a 200k-job graph's edges
        with its jobs takes seconds, and the graph never changes once stored."""
        text = "SELECT parent_label, child_label FROM label_edges WHERE workflow_id = ? ORDER BY 1, 2"
        found = self._fetch(text, (workflow_id,))
        if not found:
            with self._transaction(write=True) as cur:
                cur.execute(self.dialect.sql(_FILL_LABEL_EDGES), (workflow_id, workflow_id))
            found = self._fetch(text, (workflow_id,))
        return [(p, c) for p, c in found]

    def recent_decisions(self, *, limit: int) -> list[DecisionRow]:
        text = f"SELECT {', '.join(DecisionRow._fields)} FROM brokerage_decisions ORDER BY time DESC LIMIT ?"
        return list(map(DecisionRow._make, self._fetch(text, (limit,))))
