"""The operator monitor's reads: filtered pages of jobs and aggregates that stay fast at 200k jobs.

Nothing here returns a whole workflow's jobs. Counts and statistics are one ``GROUP BY`` pass;
attempts are reached by the workflow's job-id range (ids are ``first_job_id + idx``, allocated in
one block at submission), so the attempts primary key serves them without a join on every row.
The indexes below (schema version 3) back the filters the jobs page offers.
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
    "CREATE INDEX jobs_workflow_label ON jobs (workflow_id, label, idx)",
    "CREATE INDEX jobs_workflow_site ON jobs (workflow_id, site, idx)",
    "CREATE INDEX brokerage_decisions_time ON brokerage_decisions (time)",
)
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
        return self._per_workflow("SELECT workflow_id, status, COUNT(*) FROM jobs WHERE workflow_id IN ({})"
                                  " GROUP BY workflow_id, status", workflow_ids)

    def workflow_task_counts(self, workflow_ids: Sequence[int]) -> dict[int, dict[str, int]]:
        return self._per_workflow("SELECT workflow_id, status, COUNT(*) FROM tasks WHERE workflow_id IN ({})"
                                  " GROUP BY workflow_id, status", workflow_ids)

    def task_stats(self, workflow_id: int) -> list[TaskStatsRow]:
        text = ("SELECT task_id, status, COUNT(*), MAX(request_memory), SUM(end_time - start_time),"
                " MAX(end_time - start_time) FROM jobs WHERE workflow_id = ? GROUP BY task_id, status"
                " ORDER BY task_id, status")
        return [TaskStatsRow(t, s, int(n), int(m), float(w or 0.0), None if x is None else float(x))
                for t, s, n, m, w, x in self._fetch(text, (workflow_id,))]

    def _job_range(self, workflow_id: int) -> tuple[int, int] | None:
        """First and last job id of a workflow (its jobs' ids are one consecutive block)."""
        [(n,)] = self._fetch("SELECT COALESCE(SUM(n_jobs), 0) FROM tasks WHERE workflow_id = ?", (workflow_id,))
        [(lo, hi)] = self._fetch(_RANGE, (workflow_id, int(n) - 1))
        return None if lo is None else (int(lo), int(hi))

    def task_max_pss(self, workflow_id: int) -> dict[int, int]:
        span = self._job_range(workflow_id)
        if span is None:
            return {}
        text = ("SELECT j.task_id, MAX(a.max_pss_kb) FROM attempts a JOIN jobs j ON j.job_id = a.job_id"
                " WHERE a.job_id BETWEEN ? AND ? AND a.max_pss_kb IS NOT NULL GROUP BY j.task_id")
        return {t: int(kb) for t, kb in self._fetch(text, span)}

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
        order = JOB_SORTS[query.sort]
        [(total,)] = self._fetch(f"SELECT COUNT(*) FROM jobs WHERE {cond}", params)
        rows = self._fetch(f"SELECT {_JOB_COLUMNS}, creation_time FROM jobs WHERE {cond} ORDER BY {order}"
                           " LIMIT ? OFFSET ?", [*params, query.limit, query.offset])
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
