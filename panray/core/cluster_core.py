"""The workflow core of a clustered workflow: per-quantum truth inside cluster jobs, free of Ray.

:class:`ClusteredCore` is a :class:`WorkflowCore` that also follows every quantum (status,
attempt that ran it, exit code, times). Pilots report a cluster job's per-quantum results in its
:class:`Outcome`; they become quanta rows in the same flush as the job's own state. The rules:

* a retry of a cluster job skips the quanta already finished or pruned (``PANRAY_QUANTA_SKIP``
  in its dispatch environment);
* a quantum failing with an exit code that is never retried fails for good at once, even if
  the job is retried for another quantum; a job with such a quantum never ends ``finished``;
* when a cluster job fails for good, its quanta that failed or never ran fail for good, and
  exactly their descendants are closed (pruned), in and outside the cluster. The failed job
  then no longer holds back its children: a downstream job with quanta left to run is released
  (those quanta do not depend on the failure), one whose quanta are all pruned is closed.

Cancelled jobs (and a failing init job, which has no quanta) keep job-level pruning.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Iterable, Iterator

from panray.cluster_format import SKIP_ENV
from panray.exceptions import ConflictError
from panray.core.messages import Dispatch, Outcome
from panray.core.workflow_core import (
    ACTIVATED,
    ASSIGNED,
    CLOSED,
    DEFINED,
    FAILED,
    FINISHED,
    PENDING,
    CoreSettings,
    WorkflowCore,
)
from panray.dag import JobGraph, Releaser
from panray.retry import PAYLOAD, PRUNED, RetrySpec
from panray.statuses import CODE_OF, FINAL_CODES, JOB_CODES, JobStatus
from panray.store.base import ChangeBatch, QuantumState, WorkflowSnapshot
from panray.transitions import JOB_ENDED, QUANTA, QUANTUM_RUN, RELEASED, prune_from, transition

CANCELLED = CODE_OF[JobStatus.CANCELLED]
_CLOSABLE = frozenset({PENDING, DEFINED, ASSIGNED, ACTIVATED})  #: a job that no pilot holds yet
_STATUS_STR = [s.value for s in JOB_CODES]


class QuantaState:
    """Every quantum of one workflow as compact arrays, indexed by quantum idx."""

    def __init__(self, snap: WorkflowSnapshot, first_job_id: int, n_jobs: int):
        rows = snap.quanta
        self.workflow_id = snap.workflow.workflow_id
        self.names = [r.name for r in rows]
        self.graph = JobGraph.from_edges(len(rows), snap.quantum_edges, self.names)
        self._walker = Releaser(self.graph)
        self.job = array("i", (r.job_id - first_job_id for r in rows))
        self.members: list[list[int]] = [[] for _ in range(n_jobs)]
        for r in sorted(rows, key=lambda r: r.pos):
            self.members[r.job_id - first_job_id].append(r.idx)
        self.status = bytearray(CODE_OF[JobStatus(r.status)] for r in rows)
        self.attempt = array("i", (r.attempt_nr for r in rows))
        self.exit_code: list[int | None] = [r.exit_code for r in rows]
        self.start = array("d", (r.start_time or 0.0 for r in rows))
        self.end = array("d", (r.end_time or 0.0 for r in rows))
        self.diag: list[str | None] = [r.diag for r in rows]
        self.dirty: set[int] = set()

    def set(self, q: int, status: int, cause: str, diag: str | None = None) -> None:
        """Move quantum ``q`` to ``status`` (a checked transition unless it is already there)."""
        if self.status[q] != status:
            transition(QUANTA, self.status, q, status, q, self.attempt[q], 0.0, cause, None)
        if diag is not None:
            self.diag[q] = diag
        self.dirty.add(q)

    def ran(self, q: int, exit_code: int, start: float, end: float) -> None:
        """One run of a quantum; like a job's, its attempt number counts its runs (PanDA's per-input attemptNr)."""
        if self.exit_code[q] is not None:
            self.attempt[q] += 1
        self.exit_code[q], self.start[q], self.end[q] = exit_code, start, end
        self.set(q, FINISHED if exit_code == 0 else PENDING, QUANTUM_RUN,
                 "" if exit_code == 0 else f"exit code {exit_code}")

    def descendants(self, roots: Iterable[int]) -> list[int]:
        return self._walker.descendants(roots)

    def skip(self, i: int) -> list[int]:
        """Positions in job ``i`` that its next attempt must not run."""
        return [pos for pos, q in enumerate(self.members[i]) if self.status[q] != PENDING]

    def drain(self) -> list[QuantumState]:
        out = [
            QuantumState(self.workflow_id, q, _STATUS_STR[self.status[q]], self.attempt[q], self.exit_code[q],
                         self.start[q] or None, self.end[q] or None, self.diag[q] or None)
            for q in sorted(self.dirty)
        ]
        self.dirty.clear()
        return out


class ClusteredCore(WorkflowCore):
    """A :class:`WorkflowCore` with per-quantum truth; see the module docstring."""

    def __init__(self, snap: WorkflowSnapshot, settings: CoreSettings | None = None, now: float | None = None,
                 manager: str = ""):
        super().__init__(snap, settings, now, manager)
        self.quanta = QuantaState(snap, self.first_id, self.n)
        self._just_failed: dict[int, list[int]] = {}  #: job -> its quanta that failed in the attempt just reported
        self._released: list[int] = []
        members = self.quanta.members
        self.releaser = Releaser(self.graph, done=(
            i for i in range(self.n) if self.status[i] == FINISHED or (members[i] and self.status[i] in (FAILED, CLOSED))
        ))

    # -- events ------------------------------------------------------------------------------

    def ended(self, outcomes: Iterable[Outcome]) -> list[int]:
        return super().ended(self._with_quanta(outcomes))

    def _with_quanta(self, outcomes: Iterable[Outcome]) -> Iterator[Outcome]:
        """Record each report's quantum results first; a success with a quantum failed for good is a failure."""
        qs = self.quanta
        for o in outcomes:
            i = o.job_id - self.first_id
            members = qs.members[i]
            if not members or self.attempt[i] != o.attempt_nr or self.status[i] in FINAL_CODES:
                yield o
                continue
            results = o.quanta
            if results is None and len(members) == 1:
                results = ((0, o.exit_code or 0, o.start_time, o.end_time),)
            for pos, code, start, end in results or ():
                q = members[pos]
                if qs.status[q] == PENDING:
                    qs.ran(q, code, start, end)
            failed_now = [members[pos] for pos, code, *_ in results or () if code]
            if failed_now:
                self._just_failed[i] = failed_now
            if o.error_class is None:
                for q in members:
                    if qs.status[q] == PENDING:
                        qs.ran(q, 0, o.start_time, o.end_time)
                failed = [q for q in members if qs.status[q] == FAILED]
                if failed:
                    q = failed[0]
                    o = o._replace(error_class=PAYLOAD, exit_code=qs.exit_code[q],
                                   diag=f"quantum {qs.names[q]} failed for good")
            yield o

    def _fail(self, i: int, error_class: str, exit_code: int | None, diag: str | None, t: float,
              o: Outcome | None, cause: str) -> list[int]:
        ready = super()._fail(i, error_class, exit_code, diag, t, o, cause)
        if self.quanta.members[i] and self.status[i] not in FINAL_CODES:  # retried
            self._released += self._fail_quanta(i, t, for_good=False)
        self._just_failed.pop(i, None)
        ready += self._released
        self._released = []
        return ready

    def _prune(self, i: int, t: float, why: str = "failed for good") -> None:
        if self.quanta.members[i] and self.status[i] == FAILED:
            self._released += self._fail_quanta(i, t, for_good=True)
        else:
            super()._prune(i, t, why)

    def _fail_quanta(self, i: int, t: float, *, for_good: bool) -> list[int]:
        """Fail quanta of job ``i`` for good, close their descendants; return the jobs released."""
        qs = self.quanta
        failed = self._just_failed.get(i, [])
        cause = prune_from(self.rows[i].name)
        if for_good:
            behind = set(qs.descendants(failed))
            lost = [q for q in qs.members[i] if qs.status[q] == PENDING and q not in behind and q not in failed]
            for q in lost:
                qs.set(q, FAILED, cause, f"not run: job {self.rows[i].name} failed for good ({self.error_class[i]})")
        else:
            never = RetrySpec.from_json(self.rows[i].max_attempts, self.rows[i].retry).retry_unless_exit
            failed = [q for q in failed if qs.exit_code[q] in never]
            lost = []
        for q in failed:
            qs.set(q, FAILED, QUANTUM_RUN)
        return self._close_descendants(failed + lost, t, [i] if for_good else [])

    def _close_descendants(self, roots: list[int], t: float, resolved: list[int]) -> list[int]:
        """Prune quanta below ``roots``; close jobs left with nothing to run; release what that unblocks."""
        qs = self.quanta
        touched: dict[int, str] = {}  #: job -> a failed quantum that pruned some of its quanta
        for root in roots:
            cause = prune_from(qs.names[root])
            for q in qs.descendants([root]):
                if qs.status[q] == PENDING:
                    qs.set(q, CLOSED, cause, f"ancestor quantum {qs.names[root]} failed for good")
                    touched.setdefault(qs.job[q], qs.names[root])
        for k, root_name in touched.items():
            if self.status[k] in _CLOSABLE and all(qs.status[q] == CLOSED for q in qs.members[k]):
                self.error_class[k] = PRUNED
                self.diag[k] = f"all its quanta pruned (ancestor quantum {root_name} failed for good)"
                self._move(k, CLOSED, t, prune_from(root_name))
                resolved.append(k)
        ready = []
        for c in self.releaser.finish_many(resolved):
            if c != self.final_idx and self.status[c] == PENDING:
                self._move(c, DEFINED, t, RELEASED)
                ready.append(c)
        return ready

    def rerun(self, idxs: Iterable[int] | None, now: float, *, by: str = "",
              memory: int | None = None) -> tuple[list[int], list[int]]:
        """Not for clustered workflows yet: a cluster job's quanta end one by one, so which
        descendants a rerun reopens needs the quanta's graph; ``panray retry`` reruns them all."""
        raise ConflictError("retry of selected jobs is not supported for clustered workflows yet; "
                            "`panray retry WF` reruns every failed job once the workflow has ended")

    def _reset_failed(self, now: float, cause: str) -> None:
        """A workflow retry reruns every quantum not finished."""
        super()._reset_failed(now, cause)
        qs = self.quanta
        for q in range(len(qs.status)):
            if qs.status[q] in (FAILED, CLOSED, CANCELLED):
                qs.set(q, PENDING, cause, "")

    # -- outputs -----------------------------------------------------------------------------

    def dispatch(self, i: int, site: str) -> Dispatch:
        d = super().dispatch(i, site)
        skip = self.quanta.skip(i)
        if not skip:
            return d
        env = json.loads(d.environment or "{}")
        env[SKIP_ENV] = ",".join(map(str, skip))
        return d._replace(environment=json.dumps(env))

    def drain_changes(self, now: float) -> ChangeBatch:
        """Quanta of jobs closed or cancelled at job level follow their job, then everything is drained."""
        qs = self.quanta
        for i in self._dirty:
            c = self.status[i]
            if c in (CLOSED, CANCELLED):
                for q in qs.members[i]:
                    if qs.status[q] == PENDING:
                        qs.set(q, c, JOB_ENDED, self.diag[i])
        batch = super().drain_changes(now)
        batch.quanta = qs.drain()
        return batch


def make_core(snap: WorkflowSnapshot, settings: CoreSettings | None = None, now: float | None = None,
              manager: str = "") -> WorkflowCore:
    """The core a workflow needs: per-quantum truth only when it was clustered."""
    cls = ClusteredCore if snap.quanta else WorkflowCore
    return cls(snap, settings, now, manager)
