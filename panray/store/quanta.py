"""The quanta of clustered workflows: one row per quantum inside its cluster job, and their edges.

A workflow without clustering rules has no rows here (each job is its own quantum). Quanta are
written with the workflow (bulk insert), updated in the same transaction as their job's state,
and read back by the workflow manager, ``panray jobs --quanta`` and the status table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from panray.statuses import JobStatus
from panray.store.base import NewWorkflow, QuantumRow, QuantumState

QUANTA_DDL = (
    """CREATE TABLE quanta (
        workflow_id {id} NOT NULL, idx INTEGER NOT NULL, job_id {id} NOT NULL, pos INTEGER NOT NULL,
        name TEXT NOT NULL, label TEXT NOT NULL, status TEXT NOT NULL CHECK {job_status},
        attempt_nr INTEGER NOT NULL, exit_code INTEGER, start_time {float}, end_time {float}, diag TEXT,
        PRIMARY KEY (workflow_id, idx))""",
    "CREATE INDEX quanta_job ON quanta (job_id)",
    "CREATE TABLE quantum_edges (workflow_id {id} NOT NULL, child_idx INTEGER NOT NULL, parent_idx INTEGER NOT NULL)",
    "CREATE INDEX quantum_edges_workflow ON quantum_edges (workflow_id)",
)
_SELECT = f"SELECT {', '.join(QuantumRow._fields)} FROM quanta WHERE workflow_id = ?"
_UPDATE = ("UPDATE quanta SET status = ?, attempt_nr = ?, exit_code = ?, start_time = ?, end_time = ?, diag = ?"
           " WHERE workflow_id = ? AND idx = ?")


class QuantaSQL:
    """The quanta part of :class:`panray.store.schema.SQLStore` (mixed in; uses its hooks)."""

    dialect: Any

    def _insert_quanta(self, cur: Any, wf: NewWorkflow, workflow_id: int, first_job: int) -> None:
        """Rows for a new workflow's quanta: pending, first attempt, job ids from ``first_job``."""
        if not wf.quanta:
            return
        pending = JobStatus.PENDING.value
        self._bulk_insert(  # type: ignore[attr-defined]
            cur, "quanta", QuantumRow._fields,
            ((workflow_id, q.idx, first_job + q.job_idx, q.pos, q.name, q.label, pending, 1, None, None, None, None)
             for q in wf.quanta),
        )
        self._bulk_insert(  # type: ignore[attr-defined]
            cur, "quantum_edges", ("workflow_id", "child_idx", "parent_idx"),
            ((workflow_id, child, parent) for child, parent in wf.quantum_edges),
        )

    def _update_quanta(self, cur: Any, states: Sequence[QuantumState]) -> None:
        latest = {(s.workflow_id, s.idx): s for s in states}
        cur.executemany(self.dialect.sql(_UPDATE), [(*s[2:], s.workflow_id, s.idx) for s in latest.values()])

    def _load_quanta(self, cur: Any, workflow_id: int) -> tuple[list[QuantumRow], list[tuple[int, int]]]:
        cur.execute(self.dialect.sql(_SELECT + " ORDER BY idx"), (workflow_id,))
        rows = list(map(QuantumRow._make, cur.fetchall()))
        if not rows:
            return [], []
        cur.execute(self.dialect.sql("SELECT child_idx, parent_idx FROM quantum_edges WHERE workflow_id = ?"),
                    (workflow_id,))
        return rows, cur.fetchall()

    def quanta(self, workflow_id: int, *, job_id: int | None = None) -> list[QuantumRow]:
        text, params = _SELECT, [workflow_id]
        if job_id is not None:
            text += " AND job_id = ?"
            params.append(job_id)
        return list(map(QuantumRow._make, self._fetch(text + " ORDER BY idx", params)))  # type: ignore[attr-defined]

    def quantum_counts(self, workflow_id: int) -> dict[str, int]:
        text = "SELECT status, COUNT(*) FROM quanta WHERE workflow_id = ? GROUP BY status"
        return dict(self._fetch(text, (workflow_id,)))  # type: ignore[attr-defined]
