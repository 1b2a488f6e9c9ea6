"""The workflow manager's logic, free of Ray: events in, jobs to dispatch and state changes out.

It holds one workflow's jobs as compact arrays (a status byte, an attempt counter, ...), moves
them only through :func:`panray.transitions.transition` (each move with its cause), releases children through the
in-degree counters of :class:`panray.dag.Releaser`, applies the retry rules of
:mod:`panray.retry`, prunes descendants of jobs that failed for good, and releases the final
job once everything else has ended. Every status change becomes a history row; state changes
accumulate until :meth:`WorkflowCore.drain_changes` hands them to the store in one batch.

Starting a core on a snapshot taken mid-run *is* crash recovery: jobs that a pilot held are
failed as system errors and retried, jobs waiting in a queue are released again. A job taken
back from a queue (or a pilot that never reported it) is released again as a new attempt
(:meth:`WorkflowCore._withdraw`), so its old dispatch, wherever it still sits, is stale. A
manager restarted while pilots live first :meth:`~WorkflowCore.adopt`\ s what they still run
and the outcomes they hold, so those jobs are neither failed nor run again.

The module is longer than most (about 480 lines) on purpose: every event handler works on the
same per-job arrays and the same moves, and one state machine split over files would hide which
handler can move a job where.
"""

from __future__ import annotations

import json
import re
import time
from array import array
from collections.abc import Iterable
from dataclasses import dataclass

from panray.config import Settings
from panray.core.messages import Dispatch, Outcome, Started
from panray.core.locality import DataLocality
from panray.dag import JobGraph, Releaser
from panray.retry import CANCELLED as CANCEL_CLASS
from panray.retry import PRUNED, SYSTEM, USER_CLASSES, RetryDecision, RetrySpec, decide
from panray.statuses import CODE_OF, FINAL_CODES, JOB_CODES, JobStatus, derive_task_status, derive_workflow_status
from panray.store.base import AttemptRow, ChangeBatch, DecisionRow, HistoryRow, JobState, WorkflowSnapshot
from panray.transitions import (
    BROKERAGE,
    FINAL_DUE,
    HEARTBEAT_LOST,
    JOBS,
    PILOT_LOST,
    PILOT_REPORT,
    QUEUE_LOST,
    RELEASED,
    RESTARTED,
    RETRY_RULE,
    SENT_TIMEOUT,
    SITE_IDLE,
    SITE_OFFLINE,
    TASKS,
    WORKFLOWS,
    cancel_by,
    follow,
    hold_by,
    new_attempt,
    prune_from,
    retry_by,
    transition,
    transition_path,
)

J = JobStatus
PENDING, DEFINED, ASSIGNED, ACTIVATED = (CODE_OF[s] for s in (J.PENDING, J.DEFINED, J.ASSIGNED, J.ACTIVATED))
SENT, STARTING, RUNNING = (CODE_OF[s] for s in (J.SENT, J.STARTING, J.RUNNING))
FINISHED, FAILED, CLOSED, CANCELLED = (CODE_OF[s] for s in (J.FINISHED, J.FAILED, J.CLOSED, J.CANCELLED))
HELD = frozenset({SENT, STARTING, RUNNING})
_HELD_RUN = re.compile(b"[" + bytes(sorted(HELD)) + b"]")
_ACTIVATED_RUN = re.compile(bytes([ACTIVATED]))
#: status -> (moves up to ``running`` as a pilot's report makes them, how many of them happen at
#: the sent time; the rest happen at the start time)
_TO_RUNNING = {
    DEFINED: ((ASSIGNED, ACTIVATED, SENT, STARTING, RUNNING), 3),
    ASSIGNED: ((ACTIVATED, SENT, STARTING, RUNNING), 2),
    ACTIVATED: ((SENT, STARTING, RUNNING), 1),
    SENT: ((STARTING, RUNNING), 0),
}
_STATUS_STR = [s.value for s in JOB_CODES]


_DEFAULTS = Settings.model_fields


def held_of(settings: str) -> bool | list[int]:
    """The held part of a workflow's stored settings: True (all), or the ids of held tasks."""
    held = json.loads(settings or "{}").get("held", [])
    return True if held is True else list(held or ())


@dataclass(frozen=True, slots=True)
class CoreSettings:
    """The part of :class:`panray.config.Settings` the core uses (defaults are Settings' own)."""

    max_system_retries: int = _DEFAULTS["max_system_retries"].default
    heartbeat_timeout: float = _DEFAULTS["heartbeat_timeout"].default  #: a running job silent this long is lost
    sent_timeout: float = _DEFAULTS["sent_timeout"].default  #: a job sent to a pilot that never started it is lost
    activated_timeout: float = _DEFAULTS["activated_timeout"].default  #: queued this long at a site without pilots: taken back

    @classmethod
    def from_settings(cls, s: Settings) -> CoreSettings:
        return cls(s.max_system_retries, s.heartbeat_timeout, s.sent_timeout, s.activated_timeout)


class WorkflowCore:
    """One workflow's jobs in memory; see the module docstring."""

    def __init__(self, snap: WorkflowSnapshot, settings: CoreSettings | None = None, now: float | None = None,
                 manager: str = ""):
        self.settings = settings or CoreSettings()
        self.manager = manager
        wf = snap.workflow
        self.workflow_id = wf.workflow_id
        self.cancelled = bool(wf.cancelled)
        self._workflow_status = {wf.workflow_id: wf.status}
        jobs = snap.jobs
        self.rows = jobs
        n = self.n = len(jobs)
        self.first_id = jobs[0].job_id if jobs else 0
        self.first_task = min((t.task_id for t in snap.tasks), default=0)
        self.task_ids = [t.task_id for t in snap.tasks]
        self.graph = JobGraph.from_edges(n, snap.edges, [j.name for j in jobs])
        self.status = bytearray(CODE_OF[J(j.status)] for j in jobs)
        self.attempt = array("i", (j.attempt_nr for j in jobs))
        self.memory = array("i", (j.request_memory for j in jobs))
        self.user_failures = array("i", bytes(4 * n))
        self.system_failures = array("i", bytes(4 * n))
        for job_id, (user, system) in snap.failures.items():
            self.user_failures[job_id - jobs[0].job_id] = user
            self.system_failures[job_id - jobs[0].job_id] = system
        self.last_beat = array("d", bytes(8 * n))  #: last sign of life from the pilot (sent, start, heartbeat)
        self.start_time = array("d", (j.start_time or 0.0 for j in jobs))
        self.end_time = array("d", (j.end_time or 0.0 for j in jobs))
        self.site: list[str | None] = [j.site for j in jobs]
        self.pilot: list[str | None] = [j.pilot for j in jobs]
        self.exit_code: list[int | None] = [j.exit_code for j in jobs]
        self.error_class: list[str | None] = [j.error_class for j in jobs]
        self.diag: list[str | None] = [j.diag for j in jobs]
        self.task_of = array("i", (j.task_id - self.first_task for j in jobs))
        self.final_idx = next((j.idx for j in jobs if j.kind == "final"), None)
        self.task_counts = [[0] * len(JOB_CODES) for _ in snap.tasks]
        for i in range(n):
            self.task_counts[self.task_of[i]][self.status[i]] += 1
        self.task_status = {t.task_id: t.status for t in snap.tasks}
        self.n_final = sum(1 for c in self.status if c in FINAL_CODES)
        self.releaser = Releaser(self.graph, done=(i for i in range(n) if self.status[i] == FINISHED))
        self._history: list[HistoryRow] = []
        self._attempts: list[AttemptRow] = []
        self._decisions: list[DecisionRow] = []
        self.locality = DataLocality(self.workflow_id, (j for j in jobs if self.status[j.idx] == FINISHED))
        self._dirty: set[int] = set()
        self._dirty_tasks: set[int] = set()
        self.avoid: dict[int, str] = {}  #: job -> the site that just lost it (system error), avoided if possible
        self._adopted: set[int] = set()  #: jobs live pilots still run, learnt by a restarted manager
        self.priority = array("i", (j.priority for j in jobs))
        self.n_retries = 0  #: new attempts after a failure since this core started (progress display)
        held = held_of(wf.settings)
        self.held_all = held is True  #: the whole workflow is held: nothing is brokered
        self.held_tasks: set[int] = set() if held is True else {t - self.first_task for t in held}
        self._now = now or time.time()

    # -- the one path that changes a status --------------------------------------------------

    def _move(self, i: int, new: int, t: float, cause: str) -> None:
        old = transition(JOBS, self.status, i, new, self.first_id + i, self.attempt[i], t, cause, self._history)
        self._moved(i, old, new)

    def _move_path(self, i: int, path: tuple[int, ...], times: tuple[float, ...], cause: str) -> None:
        """:meth:`_move` through several statuses in one call (a report that carries a job far)."""
        old = transition_path(JOBS, self.status, i, path, times, self.first_id + i, self.attempt[i], cause,
                              self._history)
        self._moved(i, old, path[-1])

    def _moved(self, i: int, old: int, new: int) -> None:
        task = self.task_of[i]
        counts = self.task_counts[task]
        counts[old] -= 1
        counts[new] += 1
        if new in FINAL_CODES:
            self.n_final += 1
        self._dirty.add(i)
        self._dirty_tasks.add(task)

    @property
    def workflow_status(self) -> str:
        return self._workflow_status[self.workflow_id]

    # -- events ------------------------------------------------------------------------------

    def start(self, now: float, *, retry: bool = False, by: str = "") -> list[int]:
        """Jobs to dispatch now: a fresh workflow's roots, or what a restarted manager must redo.

        With ``retry`` (``panray retry``) failed, cancelled and pruned jobs get a new attempt with
        a fresh budget, and so does the final job, which runs again after them; finished jobs
        never run again. ``by`` names who asked for the retry (or the cancel found stored).
        """
        ready: list[int] = []
        if retry:
            self._reset_failed(now, retry_by(by or "user"))
        for i in range(self.n):
            c = self.status[i]
            if c in HELD and i in self._adopted:
                continue
            if c in HELD:
                ready.extend(self._fail(i, SYSTEM, None, "lost: the control plane restarted", now, None, RESTARTED))
            elif c in (ASSIGNED, ACTIVATED):
                self._withdraw(i, now, RESTARTED)
                ready.append(i)
            elif c == DEFINED:
                ready.append(i)
        if self.cancelled:
            self.cancel(now, by=by)
            return []
        if retry:
            self.releaser = Releaser(self.graph, done=(i for i in range(self.n) if self.status[i] == FINISHED))
        for i in self.releaser.ready():
            if i != self.final_idx and self.status[i] == PENDING:
                self._move(i, DEFINED, now, RELEASED)
                ready.append(i)
        return ready + self._final_if_due(now)

    def adopt(self, held: Iterable[tuple[int, int, str]], started: Iterable[Started], ended: Iterable[Outcome],
              now: float) -> list[int]:
        """Before :meth:`start` after a restart: what live pilots still run (job_id, attempt_nr, pilot) and
        the starts and outcomes they hold unacknowledged. Attempts newer than the store's (the lost
        manager's, not yet written) are taken over. Returns the jobs that became ready."""
        started, ended, held = list(started), list(ended), list(held)
        for job_id, attempt in [(e.job_id, e.attempt_nr) for e in (*started, *ended)] + [h[:2] for h in held]:
            i = job_id - self.first_id
            if 0 <= i < self.n and self.status[i] not in FINAL_CODES and attempt >= self.attempt[i]:
                self.attempt[i] = attempt
                if self.status[i] == PENDING:  # its release was not written yet
                    self._move(i, DEFINED, now, RESTARTED)
        self.started(started)
        ready = self.ended(ended)
        for job_id, attempt, pilot in held:
            i = job_id - self.first_id
            if not (0 <= i < self.n and self.attempt[i] == attempt) or self.status[i] in FINAL_CODES:
                continue
            if self.status[i] not in HELD:  # claimed from the lost manager, its start not reported yet
                self._to_sent(i, now)
            self.pilot[i] = pilot  # the store may still name the pilot of an older attempt
            self._adopted.add(i)
            self.last_beat[i] = now
        return ready

    def _reset_failed(self, now: float, cause: str) -> None:
        again = [i for i in range(self.n) if self.status[i] in (FAILED, CANCELLED, CLOSED)]
        f = self.final_idx
        if again and f is not None and f not in again and self.status[f] in FINAL_CODES:
            again.append(f)
        self.cancelled = False
        for i in again:
            self.user_failures[i] = self.system_failures[i] = 0
            self._new_attempt(i, self.memory[i], now, cause, PENDING)

    def queued(self, idxs: Iterable[int], sites: Iterable[str], now: float) -> list[int]:
        """Brokerage chose these sites and the jobs went to their queues: assigned, activated."""
        moved = []
        status, path, times, avoid = self.status, (ASSIGNED, ACTIVATED), (now, now), self.avoid
        for i, site in zip(idxs, sites):
            if status[i] != DEFINED:
                continue
            self._move_path(i, path, times, BROKERAGE)
            self.site[i] = site
            if avoid:
                avoid.pop(i, None)
            self.last_beat[i] = now
            self.locality.placed(self.first_id + i, self.attempt[i], self.rows[i].inputs, site, now)
            moved.append(i)
        return moved

    def input_sites(self, i: int) -> dict[str, float]:
        """Fraction of job ``i``'s inputs already at each site, for brokerage."""
        return self.locality.fractions(self.rows[i].inputs)

    def record_decisions(self, rows: Iterable[DecisionRow]) -> None:
        """Brokerage's explained choices, written with the next flush."""
        self._decisions.extend(rows)

    def requeue(self, jobs: Iterable[tuple[int, int]], now: float, lost_pilot: str | None = None) -> list[int]:
        """(job_id, attempt_nr) taken back from a site queue: activated -> defined, to broker again.

        With ``lost_pilot`` they are what that pilot had taken when it died: those it had claimed
        fail as system errors (the manager's own liveness check may not tell a replacement
        under the same name from the pilot that held them).
        """
        ready = []
        for job_id, attempt in jobs:
            i = job_id - self.first_id
            if self.attempt[i] == attempt and self.status[i] == ACTIVATED:
                self._withdraw(i, now, SITE_OFFLINE)
                ready.append(i)
            elif lost_pilot and self.attempt[i] == attempt and self.status[i] in HELD:
                ready.extend(self._fail(i, SYSTEM, None, f"pilot {lost_pilot} lost", now, None, PILOT_LOST))
        return ready

    def _withdraw(self, i: int, now: float, cause: str) -> None:
        """Take a queued job back to broker it again, as a new attempt: the old dispatch may still
        sit in a queue or on a pilot, and its attempt number now marks it stale."""
        self.attempt[i] += 1
        self._move(i, DEFINED, now, cause)
        self.site[i] = None

    def lost(self, pilots: set[str], sites: set[str], now: float) -> list[int]:
        """Pilots or site queues died: fail what the pilots held, take back what the queues held."""
        ready: list[int] = []
        for i in range(self.n):
            c = self.status[i]
            if c in HELD and self.pilot[i] in pilots:
                ready.extend(self._fail(i, SYSTEM, None, f"pilot {self.pilot[i]} lost", now, None, PILOT_LOST))
            elif c == ACTIVATED and self.site[i] in sites:
                self._withdraw(i, now, QUEUE_LOST)
                ready.append(i)
        return ready

    def placements(self) -> tuple[set[str], set[str]]:
        """(pilots holding this workflow's jobs, sites whose queues hold its jobs), for liveness checks."""
        status, pilot, site = self.status, self.pilot, self.site
        pilots = {pilot[m.start()] for m in _HELD_RUN.finditer(status)} if self._any(HELD) else set()
        sites = {site[m.start()] for m in _ACTIVATED_RUN.finditer(status)} if ACTIVATED in status else set()
        pilots.discard(None)
        sites.discard(None)
        return pilots, sites  # type: ignore[return-value]

    def _any(self, codes: frozenset[int]) -> bool:
        """Whether any job is in one of ``codes`` (a scan in C, for the once-a-second liveness check)."""
        return any(c in self.status for c in codes)

    def started(self, events: Iterable[Started]) -> list[tuple[int, str]]:
        """A pilot took (``start_time == 0``: sent only) or started these jobs.

        Returns (job_id, pilot) of attempts cancelled before the pilot got them: a cancel races
        with the pilot's pull from the queue, so these must be killed again where they landed.
        """
        late: list[tuple[int, str]] = []
        for e in events:
            i = e.job_id - self.first_id
            c = self.status[i]
            if self.attempt[i] != e.attempt_nr or c in FINAL_CODES or c == RUNNING:
                if c == CANCELLED and self.attempt[i] == e.attempt_nr:
                    late.append((e.job_id, e.pilot))
                continue
            self.last_beat[i] = e.start_time or e.sent_time
            if e.start_time:
                self._to_running(i, e.pilot, e.sent_time, e.start_time)
            elif c in (DEFINED, ASSIGNED, ACTIVATED):
                self._to_sent(i, e.sent_time)
                self.pilot[i] = e.pilot
        return late

    def claim(self, pilot: str, attempts: Iterable[tuple[int, int]], now: float) -> list[bool]:
        """A pilot asks to start these (job_id, attempt_nr): yes only for the current attempt of a
        job not yet on a pilot, which becomes ``sent`` to it (the fence against duplicate runs)."""
        out = []
        for job_id, attempt in attempts:
            i = job_id - self.first_id
            ok = (0 <= i < self.n and self.attempt[i] == attempt and self.status[i] in (DEFINED, ASSIGNED, ACTIVATED)
                  and not self.is_held(i))
            if ok:
                self._to_sent(i, now)
                self.pilot[i] = pilot
                self.last_beat[i] = now
            out.append(ok)
        return out

    def heartbeat(self, beats: Iterable[tuple[int, int]], now: float) -> None:
        """Pilots' batched heartbeats: (job_id, attempt_nr) of payloads still running."""
        for job_id, attempt in beats:
            i = job_id - self.first_id
            if self.attempt[i] == attempt:
                self.last_beat[i] = now

    def expire(self, now: float, idle_sites: frozenset[str] = frozenset()) -> list[int]:
        """Fail as system errors the jobs whose pilot went silent, and take back the jobs queued
        too long at ``idle_sites`` (sites without live pilots); returns the jobs to dispatch."""
        ready: list[int] = []
        beat_limit, sent_limit = now - self.settings.heartbeat_timeout, now - self.settings.sent_timeout
        queued_limit = now - self.settings.activated_timeout
        for i in range(self.n):
            c = self.status[i]
            if c == ACTIVATED and idle_sites and self.site[i] in idle_sites and self.last_beat[i] < queued_limit:
                self._withdraw(i, now, SITE_IDLE)
                ready.append(i)
            elif c == SENT and self.last_beat[i] < sent_limit:
                ready.extend(self._fail(i, SYSTEM, None, "sent to a pilot that never started it", now, None,
                                        SENT_TIMEOUT))
            elif c in (STARTING, RUNNING) and self.last_beat[i] < beat_limit:
                ready.extend(self._fail(i, SYSTEM, None, "lost heartbeat", now, None, HEARTBEAT_LOST))
        return ready

    def _to_sent(self, i: int, sent: float) -> None:
        """Up to ``sent``; from ``defined`` when the pilot's report overtook the manager's own bookkeeping."""
        steps = _TO_RUNNING.get(self.status[i])
        if steps is not None and steps[1]:
            self._move_path(i, steps[0][:steps[1]], (sent,) * steps[1], PILOT_REPORT)

    def _to_running(self, i: int, pilot: str, sent: float, start: float, end: int | None = None,
                    t_end: float = 0.0) -> None:
        """Up to ``running`` (and on to ``end`` at ``t_end`` if given), in one path of moves."""
        steps = _TO_RUNNING.get(self.status[i])
        if steps is not None:
            path, k = steps
            times = (sent,) * k + (start,) * (len(path) - k)
            if end is not None:
                path, times = path + (end,), times + (t_end,)
            self._move_path(i, path, times, PILOT_REPORT)
        elif end is not None:
            self._move(i, end, t_end, PILOT_REPORT)
        self.pilot[i] = pilot
        self.start_time[i] = start

    def ended(self, outcomes: Iterable[Outcome]) -> list[int]:
        """Apply pilots' reports; returns the jobs that became ready (children, retries, final)."""
        ready: list[int] = []
        last = 0.0
        for o in outcomes:
            i = o.job_id - self.first_id
            if self.attempt[i] != o.attempt_nr or self.status[i] in FINAL_CODES:
                continue
            if self.site[i] is None:
                self.site[i] = o.site
            self.end_time[i] = last = o.end_time
            self.exit_code[i] = o.exit_code
            if o.error_class is None:
                self._to_running(i, o.pilot, o.sent_time, o.start_time, FINISHED, o.end_time)
                self._record_attempt(i, o.max_pss_kb, o.log_url)
                self.locality.produced(self.rows[i].outputs, o.site)
                for c in self.releaser.finish(i):
                    if c != self.final_idx and self.status[c] == PENDING:
                        self._move(c, DEFINED, o.end_time, RELEASED)
                        ready.append(c)
            else:
                self._to_running(i, o.pilot, o.sent_time, o.start_time)
                ready.extend(self._fail(i, o.error_class, o.exit_code, o.diag, o.end_time, o, PILOT_REPORT))
        if last:
            ready.extend(self._final_if_due(last))
        return ready

    def _fail(self, i: int, error_class: str, exit_code: int | None, diag: str | None, t: float,
              o: Outcome | None, cause: str) -> list[int]:
        """End the attempt; start a new one if the retry rules allow, else prune descendants."""
        self.error_class[i], self.diag[i], self.exit_code[i] = error_class, diag, exit_code
        if error_class == CANCEL_CLASS:
            self._move(i, CANCELLED, t, cause)
            self._record_attempt(i, o.max_pss_kb if o else None, o.log_url if o else None)
            self._prune(i, t, "was cancelled")
            return self._final_if_due(t)
        self._move(i, FAILED, t, cause)
        self.end_time[i] = t
        self._record_attempt(i, o.max_pss_kb if o else None, o.log_url if o else None)
        if error_class in USER_CLASSES:
            self.user_failures[i] += 1
        else:
            self.system_failures[i] += 1
        row = self.rows[i]
        try:
            d = decide(
                RetrySpec.from_json(row.max_attempts, row.retry), error_class=error_class, exit_code=exit_code,
                user_failures=self.user_failures[i], system_failures=self.system_failures[i],
                request_memory=self.memory[i], max_system_retries=self.settings.max_system_retries,
            )
        except Exception as exc:  # a retry policy that cannot be applied fails this job alone, for good
            d = RetryDecision(False, self.memory[i], f"retry rules of this job cannot be applied: {exc!r}"[:300])
        self.diag[i] = f"{diag}; {d.reason}" if diag else d.reason
        self._dirty.add(i)
        if d.retry and not self.cancelled:
            if error_class == SYSTEM and self.site[i] is not None:
                self.avoid[i] = self.site[i]
            self._new_attempt(i, d.request_memory, t, RETRY_RULE)
            return [i]
        self._prune(i, t)
        return self._final_if_due(t)

    def _new_attempt(self, i: int, memory: int, t: float, cause: str, first: int = DEFINED) -> None:
        """A retry is a new attempt starting at ``defined`` (``pending`` on a workflow retry)."""
        ended = new_attempt(self.status, self.attempt, i, first, self.first_id + i, t, cause, self._history)
        counts = self.task_counts[self.task_of[i]]
        counts[ended] -= 1
        counts[first] += 1
        self.n_final -= 1
        self.n_retries += 1
        self.memory[i] = memory
        self.site[i] = self.pilot[i] = None
        self.exit_code[i] = self.error_class[i] = self.diag[i] = None
        self.start_time[i] = self.end_time[i] = 0.0
        self._dirty.add(i)
        self._dirty_tasks.add(self.task_of[i])

    def _prune(self, i: int, t: float, why: str = "failed for good") -> None:
        """Close the descendants of a job that will never finish: nothing would release them."""
        cause = prune_from(self.rows[i].name)
        for c in self.releaser.descendants([i]):
            if c != self.final_idx and self.status[c] not in FINAL_CODES:
                self.error_class[c] = PRUNED
                self.diag[c] = f"ancestor {self.rows[i].name} {why}"
                self._move(c, CLOSED, t, cause)

    def _final_if_due(self, t: float) -> list[int]:
        """The final job runs once every other job has ended, whatever their outcome."""
        f = self.final_idx
        if f is None or self.status[f] != PENDING or self.n_final < self.n - 1:
            return []
        self._move(f, DEFINED, t, FINAL_DUE)
        return [f]

    def cancel(self, now: float, idxs: Iterable[int] | None = None, *,
               by: str = "") -> tuple[list[tuple[int, str | None]], list[int]]:
        """Cancel the given jobs not final, or (``idxs`` None) the whole workflow.

        A partial cancel is a failure for good of those jobs: their descendants are pruned and
        the final job still runs once everything else has ended. Returns (job_id, pilot) of
        jobs a queue or a pilot may hold, to drop and kill, and the jobs that became ready.
        ``by`` names who cancelled.
        """
        cause = cancel_by(by or "user")
        if idxs is None:
            self.cancelled = True
            idxs = range(self.n)
        held: list[tuple[int, str | None]] = []
        gone: list[int] = []
        for i in idxs:
            c = self.status[i]
            if c in FINAL_CODES:
                continue
            if c in HELD or c == ACTIVATED:
                held.append((self.first_id + i, self.pilot[i]))
            self.error_class[i] = CANCEL_CLASS
            self._move(i, CANCELLED, now, cause)
            if c in HELD:
                self._record_attempt(i, None, None)
            gone.append(i)
        if self.cancelled:
            return held, []
        for i in gone:
            self._prune(i, now, "was cancelled")
        return held, self._final_if_due(now)

    def rerun(self, idxs: Iterable[int] | None, now: float, *, by: str = "",
              memory: int | None = None) -> tuple[list[int], list[int]]:
        """Retry by hand while the workflow runs: a new attempt, with a fresh budget (and
        ``memory`` MB if given), for each of ``idxs`` (None: every job) that failed or was
        cancelled or pruned; the jobs they pruned are reopened to run after them, and an ended
        final job runs again last. Finished jobs never rerun, jobs not ended are left alone, and
        a pruned job stays closed while another ancestor of it stays failed. Returns the jobs
        given a new attempt (the final job aside) and those ready now.
        """
        if self.cancelled:
            return [], []
        status, f = self.status, self.final_idx
        chosen = range(self.n) if idxs is None else list(idxs)  # read twice: an iterator would be spent
        roots = sorted({i for i in chosen if status[i] in (FAILED, CANCELLED) and i != f})
        chosen_closed = [i for i in chosen if status[i] == CLOSED]
        root_set = set(roots)
        blockers = [i for i in range(self.n) if status[i] in (FAILED, CANCELLED) and i not in root_set and i != f]
        blocked = set(self.releaser.descendants(blockers))
        roots = [i for i in roots if i not in blocked]  # cancelled while waiting on what failed for good since
        root_set = set(roots)
        reopen = {c for c in (*self.releaser.descendants(roots), *chosen_closed)
                  if status[c] == CLOSED and c != f and c not in blocked}
        again = sorted(root_set | reopen)
        if not again:
            return [], []
        cause = retry_by(by or "user")
        if f is not None and status[f] in FINAL_CODES:
            again.append(f)
        ready = []
        for i in again:
            self.user_failures[i] = self.system_failures[i] = 0
            self._new_attempt(i, memory if memory is not None and i in root_set else self.memory[i], now, cause,
                              PENDING)
            if i in root_set and all(status[p] == FINISHED for p in self.graph.parents(i)):
                self._move(i, DEFINED, now, RELEASED)
                ready.append(i)
        return [i for i in again if i != f], ready

    def is_held(self, i: int) -> bool:
        """Whether job ``i`` is held back from brokerage (its workflow or its task is held)."""
        return self.held_all or (bool(self.held_tasks) and self.task_of[i] in self.held_tasks)

    def hold(self, now: float, task_id: int | None = None, *, by: str = "") -> list[int]:
        """Hold the workflow (or one task): nothing more is brokered and its queued jobs are
        taken back to ``defined``; payloads already on a pilot run on. Returns the jobs taken back."""
        if task_id is None:
            self.held_all = True
        else:
            self.held_tasks.add(task_id - self.first_task)
        cause = hold_by(by or "user")
        back = [i for i in range(self.n) if self.status[i] in (ASSIGNED, ACTIVATED) and self.is_held(i)]
        for i in back:
            self._move(i, DEFINED, now, cause)
            self.site[i] = None
        return back

    def release_hold(self, task_id: int | None = None) -> None:
        """Let the workflow (or one task) be brokered again: the whole workflow, or the task."""
        if task_id is None:
            self.held_all = False
            self.held_tasks.clear()
        else:
            self.held_tasks.discard(task_id - self.first_task)

    def held_state(self) -> bool | list[int]:
        """What is held, as stored: True (the workflow), or the held task ids."""
        return True if self.held_all else sorted(t + self.first_task for t in self.held_tasks)

    def set_priority(self, idxs: Iterable[int], priority: int) -> None:
        """A new brokerage priority for these jobs: higher ones are brokered first."""
        for i in idxs:
            self.priority[i] = priority

    def select(self, task_id: int | None = None, job_ids: Iterable[int] = ()) -> list[int]:
        """Indices of the jobs of a task and of the given job ids (ids not in this workflow are ignored)."""
        idxs = [j - self.first_id for j in job_ids if 0 <= j - self.first_id < self.n]
        if task_id is not None:
            t = task_id - self.first_task
            idxs += [i for i in range(self.n) if self.task_of[i] == t]
        return idxs

    # -- outputs -----------------------------------------------------------------------------

    def dispatch(self, i: int, site: str) -> Dispatch:
        r = self.rows[i]
        return Dispatch(self.first_id + i, self.attempt[i], self.workflow_id, r.task_id, r.label, r.payload,
                        r.environment, self.memory[i], r.request_cpus, site, self.manager)

    def _record_attempt(self, i: int, max_pss: int | None, log_url: str | None) -> None:
        self._attempts.append(AttemptRow(
            self.first_id + i, self.attempt[i], _STATUS_STR[self.status[i]], self.site[i], self.pilot[i],
            self.start_time[i] or None, self.end_time[i] or None, self.exit_code[i], self.error_class[i],
            self.diag[i], self.memory[i], max_pss, log_url,
        ))

    @property
    def done(self) -> bool:
        return self.n_final == self.n

    def counts(self) -> dict[str, int]:
        total = [0] * len(JOB_CODES)
        for counts in self.task_counts:
            for k, v in enumerate(counts):
                total[k] += v
        return {_STATUS_STR[k]: v for k, v in enumerate(total) if v}

    def drain_changes(self, now: float) -> ChangeBatch:
        """Everything changed since the last drain, as one batch for the store."""
        locations, transfers = self.locality.drain()
        batch = ChangeBatch(history=self._history, attempts=self._attempts, decisions=self._decisions,
                            locations=locations, transfers=transfers)
        self._history, self._attempts, self._decisions = [], [], []
        fid = self.first_id
        batch.jobs = [
            JobState(fid + i, _STATUS_STR[self.status[i]], self.attempt[i], self.site[i], self.pilot[i],
                     self.start_time[i] or None, self.end_time[i] or None, self.exit_code[i], self.error_class[i],
                     self.diag[i], self.memory[i], now)
            for i in sorted(self._dirty)
        ]
        self._dirty.clear()
        batch.tasks = follow(TASKS, self.task_status, (
            (self.task_ids[t], derive_task_status(
                {_STATUS_STR[k]: v for k, v in enumerate(self.task_counts[t]) if v}, cancelled=self.cancelled).value)
            for t in sorted(self._dirty_tasks)
        ))
        self._dirty_tasks.clear()
        wf_status = derive_workflow_status(self.counts(), cancelled=self.cancelled).value
        for wf_id, status in follow(WORKFLOWS, self._workflow_status, [(self.workflow_id, wf_status)]):
            batch.workflows.append((wf_id, status, now if self.done else None))
        return batch
