"""The operator monitor's reads: filtered pages of jobs and aggregates that stay fast at 200k jobs.

Nothing here returns a whole workflow's jobs. Per-task counts, wall time, largest memory request
and max PSS are *kept* in two small tables by triggers on ``jobs`` and ``attempts`` (set-based
statement triggers with transition tables on PostgreSQL, row triggers on SQLite), so the
workflow page reads a few hundred rows whatever the workflow's size, and no writer of the store
has to remember them. Failed attempts are reached by the workflow's job-id range (ids are
``first_job_id + idx``, allocated in one block at submission), through the attempts primary key.
The indexes and tables below are schema version 3.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

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

MONITOR_DDL = (
    """CREATE TABLE task_job_stats (
        task_id {id} NOT NULL, status TEXT NOT NULL, n {id} NOT NULL, wall {float} NOT NULL,
        max_request INTEGER NOT NULL, PRIMARY KEY (task_id, status))""",
    "CREATE TABLE task_max_pss (task_id {id} PRIMARY KEY, max_pss_kb {id} NOT NULL)",
    "CREATE INDEX jobs_workflow_label ON jobs (workflow_id, label, idx)",
    "CREATE INDEX jobs_workflow_site ON jobs (workflow_id, site, idx)",
    "CREATE INDEX brokerage_decisions_time ON brokerage_decisions (time)",
    "CREATE INDEX attempts_failed ON attempts (job_id) WHERE status = 'failed'",  # error summaries read only these
)
_ADD_JOB = (
    "INSERT INTO task_job_stats (task_id, status, n, wall, max_request) VALUES ({r}.task_id, {r}.status, {sign},"
    " {sign} * COALESCE({r}.end_time - {r}.start_time, 0), {r}.request_memory) ON CONFLICT (task_id, status)"
    " DO UPDATE SET n = n + excluded.n, wall = wall + excluded.wall, max_request = MAX(max_request, excluded.max_request);"
)
_ADD_PSS = ("INSERT INTO task_max_pss (task_id, max_pss_kb) SELECT task_id, new.max_pss_kb FROM jobs"
            " WHERE job_id = new.job_id ON CONFLICT (task_id) DO UPDATE SET max_pss_kb = MAX(max_pss_kb, excluded.max_pss_kb);")
#: SQLite keeps the task aggregates with row triggers: a status change moves one job between rows.
SQLITE_TRIGGERS = (
    "CREATE TRIGGER jobs_stats_insert AFTER INSERT ON jobs BEGIN " + _ADD_JOB.format(r="new", sign=1) + " END",
    "CREATE TRIGGER jobs_stats_update AFTER UPDATE OF status, start_time, end_time, request_memory ON jobs BEGIN "
    + _ADD_JOB.format(r="old", sign=-1) + " " + _ADD_JOB.format(r="new", sign=1) + " END",
    "CREATE TRIGGER attempts_pss_insert AFTER INSERT ON attempts WHEN new.max_pss_kb IS NOT NULL BEGIN " + _ADD_PSS + " END",
    "CREATE TRIGGER attempts_pss_update AFTER UPDATE OF max_pss_kb ON attempts WHEN new.max_pss_kb IS NOT NULL BEGIN "
    + _ADD_PSS + " END",
)
_PG_ADD_JOBS = (
    "INSERT INTO task_job_stats AS s (task_id, status, n, wall, max_request)"
    " SELECT task_id, status, {sign} * COUNT(*), {sign} * COALESCE(SUM(end_time - start_time), 0), MAX(request_memory)"
    " FROM {rows} GROUP BY task_id, status ON CONFLICT (task_id, status) DO UPDATE SET n = s.n + excluded.n,"
    " wall = s.wall + excluded.wall, max_request = GREATEST(s.max_request, excluded.max_request);"
)
#: PostgreSQL keeps them with one set-based statement per writing statement (COPY included).
POSTGRES_TRIGGERS = (
    "CREATE FUNCTION panray_task_job_stats() RETURNS trigger LANGUAGE plpgsql AS $f$ BEGIN"
    " IF TG_OP = 'UPDATE' THEN " + _PG_ADD_JOBS.format(sign=-1, rows="old_rows") + " END IF; "
    + _PG_ADD_JOBS.format(sign=1, rows="new_rows") + " RETURN NULL; END $f$",
    "CREATE FUNCTION panray_task_max_pss() RETURNS trigger LANGUAGE plpgsql AS $f$ BEGIN"
    " INSERT INTO task_max_pss AS p (task_id, max_pss_kb) SELECT j.task_id, MAX(a.max_pss_kb) FROM new_rows a"
    " JOIN jobs j ON j.job_id = a.job_id WHERE a.max_pss_kb IS NOT NULL GROUP BY j.task_id"
    " ON CONFLICT (task_id) DO UPDATE SET max_pss_kb = GREATEST(p.max_pss_kb, excluded.max_pss_kb);"
    " RETURN NULL; END $f$",
    "CREATE TRIGGER jobs_stats_insert AFTER INSERT ON jobs REFERENCING NEW TABLE AS new_rows"
    " FOR EACH STATEMENT EXECUTE FUNCTION panray_task_job_stats()",
    "CREATE TRIGGER jobs_stats_update AFTER UPDATE ON jobs REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows"
    " FOR EACH STATEMENT EXECUTE FUNCTION panray_task_job_stats()",
    "CREATE TRIGGER attempts_pss_insert AFTER INSERT ON attempts REFERENCING NEW TABLE AS new_rows"
    " FOR EACH STATEMENT EXECUTE FUNCTION panray_task_max_pss()",
    "CREATE TRIGGER attempts_pss_update AFTER UPDATE ON attempts REFERENCING NEW TABLE AS new_rows"
    " FOR EACH STATEMENT EXECUTE FUNCTION panray_task_max_pss()",
)
_STATS_OF = "FROM task_job_stats s JOIN tasks t ON t.task_id = s.task_id WHERE s.n > 0 AND t.workflow_id"
_JOB_COLUMNS = ", ".join(JobRow._fields)
_WORKFLOW_COLUMNS = ", ".join(WorkflowRow._fields)
#: Sort keys a page may ask for -> ORDER BY text; idx breaks ties so pages never overlap.
JOB_SORTS = {"idx": "idx", "-duration": "(end_time - start_time) DESC NULLS LAST, idx"}
_RANGE = "SELECT MIN(job_id), MAX(job_id) FROM jobs WHERE workflow_id = ? AND (idx = 0 OR idx = ?)"


def _marks(values: Sequence[Any]) -> str:
    return ", ".join("?" * len(values))


class MonitorSQL:
    """The monitor part of :class:`panray.store.schema.SQLStore` (mixed in; uses its ``_fetch``)."""

    dialect: Any
    _fetch: Callable[[str, Sequence[Any]], list[Any]]  #: SQLStore's: one read statement, all rows

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
        text = f"SELECT s.task_id, s.status, s.n, s.max_request, s.wall {_STATS_OF} = ? ORDER BY s.task_id, s.status"
        return [TaskStatsRow(t, s, int(n), int(m), float(w)) for t, s, n, m, w in self._fetch(text, (workflow_id,))]

    def _job_range(self, workflow_id: int) -> tuple[int, int] | None:
        """First and last job id of a workflow (its jobs' ids are one consecutive block)."""
        [(n,)] = self._fetch("SELECT COALESCE(SUM(n_jobs), 0) FROM tasks WHERE workflow_id = ?", (workflow_id,))
        [(lo, hi)] = self._fetch(_RANGE, (workflow_id, int(n) - 1))
        return None if lo is None else (int(lo), int(hi))

    def task_max_pss(self, workflow_id: int) -> dict[int, int]:
        text = "SELECT p.task_id, p.max_pss_kb FROM task_max_pss p JOIN tasks t ON t.task_id = p.task_id WHERE t.workflow_id = ?"
        return {t: int(kb) for t, kb in self._fetch(text, (workflow_id,))}

    def job_page(self, workflow_id: int, query: JobQuery) -> JobPage:
        where, params = ["workflow_id = ?"], [workflow_id]
        if query.status:
            where.append(f"status IN ({_marks(query.status)})")
            params.extend(query.status)
        for column, value in (("label", query.label), ("site", query.site), ("error_class", query.error_class),
                              ("exit_code", query.exit_code), ("task_id", query.task_id)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if query.name:
            where.append("name >= ? AND name < ?")  # a prefix as a range: no LIKE escaping, index-friendly
            params.extend([query.name, query.name + "\U0010ffff"])
        cond = " AND ".join(where)
        [(total,)] = self._fetch(f"SELECT COUNT(*) FROM jobs WHERE {cond}", params)
        select = f"SELECT {_JOB_COLUMNS}, creation_time FROM jobs WHERE {cond}"
        if query.sort == "idx" and query.after_idx is not None:
            rows = self._fetch(f"{select} AND idx > ? ORDER BY idx LIMIT ?", [*params, query.after_idx, query.limit])
        elif query.sort == "idx" and query.before_idx is not None:
            rows = self._fetch(f"{select} AND idx < ? ORDER BY idx DESC LIMIT ?",
                               [*params, query.before_idx, query.limit])[::-1]
        else:
            rows = self._fetch(f"{select} ORDER BY {JOB_SORTS[query.sort]} LIMIT ? OFFSET ?",
                               [*params, query.limit, query.offset])
        return JobPage([JobRow._make(r[:-1]) for r in rows], [float(r[-1]) for r in rows], int(total))

    def jobs_max_pss(self, job_ids: Sequence[int]) -> dict[int, int]:
        if not job_ids:
            return {}
        text = (f"SELECT job_id, max_pss_kb FROM attempts WHERE job_id IN ({_marks(job_ids)})"
                " AND max_pss_kb IS NOT NULL ORDER BY job_id, attempt_nr")
        return {j: int(kb) for j, kb in self._fetch(text, list(job_ids))}  # the latest attempt wins

    def error_groups(self, workflow_id: int) -> list[ErrorGroupRow]:
        span = self._job_range(workflow_id)
        if span is None:
            return []
        text = ("SELECT error_class, exit_code, diag, COUNT(*), COUNT(DISTINCT job_id), MIN(job_id) FROM attempts"
                " WHERE job_id BETWEEN ? AND ? AND status = 'failed' GROUP BY error_class, exit_code, diag"
                " ORDER BY COUNT(*) DESC")
        return [ErrorGroupRow(c, e, d, int(n), int(j), int(x)) for c, e, d, n, j, x in self._fetch(text, span)]

    def label_edges(self, workflow_id: int) -> list[tuple[str, str]]:
        text = ("SELECT DISTINCT p.label, c.label FROM edges e"
                " JOIN jobs c ON c.workflow_id = e.workflow_id AND c.idx = e.child_idx"
                " JOIN jobs p ON p.workflow_id = e.workflow_id AND p.idx = e.parent_idx"
                " WHERE e.workflow_id = ? ORDER BY 1, 2")
        return [(p, c) for p, c in self._fetch(text, (workflow_id,))]

    def recent_decisions(self, *, limit: int) -> list[DecisionRow]:
        text = f"SELECT {', '.join(DecisionRow._fields)} FROM brokerage_decisions ORDER BY time DESC LIMIT ?"
        return list(map(DecisionRow._make, self._fetch(text, (limit,))))
