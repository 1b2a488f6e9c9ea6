"""The service layer: the one place that validates and authorizes what users ask of panray.

Every interface (Python API, CLI, HTTP server, bps plugin) goes through :class:`Service`. Reads
are open to any authenticated user; each mutating method takes the :class:`Identity` asking as
its first argument, checks it with :func:`authorize` and leaves one audit row (who, what,
target, when, outcome) in the state store, refusals included.

Examples:
    >>> svc = Service(Settings())                                  # doctest: +SKIP
    >>> bob = Identity("bob")                                      # doctest: +SKIP
    >>> [wf_id] = svc.submit_campaign(bob, campaign)               # doctest: +SKIP
    >>> svc.cancel(Identity("eve"), wf_id)                         # doctest: +SKIP
    Traceback (most recent call last):
    panray.exceptions.PermissionDeniedError: only the owner (bob) or role production may cancel workflow 1
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from panray.config import Settings
from panray.core.workflow_core import held_of
from panray.exceptions import ConflictError, NotFoundError, PanrayError, PermissionDeniedError
from panray.identity import Identity
from panray.job_table import TableWorkflow
from panray.models import Campaign, Workflow
from panray.sites import load_catalog
from panray.statuses import FINAL_WORKFLOW_STATES
from panray.store import AuditRow, StateStore, open_store
from panray.store.base import AttemptRow, DecisionRow, ErrorGroupRow, HistoryRow, JobPage, JobQuery, JobRow
from panray.store.base import QuantumRow, TaskRow, TransferRow, WorkflowRow
from panray.submission import build_workflows
from panray.validation import INT32_MAX, INT32_MIN

#: Actions on one workflow (or its tasks and jobs): its owner or an operator role.
OWNER_ACTIONS = frozenset({"cancel", "retry", "resume", "hold", "release", "set-priority"})
#: Actions on the shared system: operator roles only.
OPERATOR_ACTIONS = frozenset({"set-site-status", "prompt-notify"})
#: Actions every authenticated user may take.
OPEN_ACTIONS = frozenset({"submit"})


def authorize(who: Identity, action: str, *, owner: str | None = None, target: str = "") -> None:
    """The rules, in one place; raises :class:`PermissionDeniedError` naming the rule broken.

    Examples:
        >>> authorize(Identity("bob"), "cancel", owner="alice", target="workflow 7")
        Traceback (most recent call last):
        ...
        panray.exceptions.PermissionDeniedError: only the owner (alice) or role production may cancel workflow 7
    """
    if action in OPEN_ACTIONS:
        return
    if action in OWNER_ACTIONS:
        if who.operator or (owner is not None and who.user == owner):
            return
        raise PermissionDeniedError(f"only the owner ({owner}) or role production may {action} {target}".rstrip())
    if action in OPERATOR_ACTIONS:
        if who.operator:
            return
        raise PermissionDeniedError(f"only role production or admin may {action.replace('-', ' ')} {target}".rstrip())
    raise PermissionDeniedError(f"unknown action {action!r}")


@dataclass(frozen=True, slots=True)
class WorkflowSummary:
    """One line of the monitor table."""

    workflow_id: int
    name: str
    owner: str
    status: str
    tasks: dict[str, int]  #: task status -> number of tasks
    jobs: dict[str, int]  #: job status -> number of jobs
    created: float
    quanta: dict[str, int] = field(default_factory=dict)  #: quantum status -> n (a job unclustered is one quantum)

    @property
    def total(self) -> int:
        return sum(self.jobs.values())


#: A ``wait`` observer: the manager's progress dict, and whether the workflow has ended.
Progress = Callable[[dict[str, Any], bool], None]


class Service:
    """The state store, the site catalog and (lazily) the Ray cluster with panray's actors."""

    def __init__(self, settings: Settings, *, runtime: Any = None, summary_ttl: float = 0.0):
        """``runtime``: a cluster connection made by the caller (``panray serve``), who also ends it.

        ``summary_ttl``: seconds a running workflow's job counts may be reused; a server sets it
        so that many users polling one big workflow cost one count query per period, not one each.
        """
        self.settings = settings
        self.summary_ttl = summary_ttl
        self._summaries: dict[int, tuple[float, WorkflowRow, WorkflowSummary]] = {}
        self.store: StateStore = open_store(settings.resolved_db_url)
        self.catalog = load_catalog(settings.sites_file)
        self._runtime: Any = runtime
        self._owns_runtime = runtime is None
        self._managers: dict[int, Any] = {}  # handles of managers this service started

    def close(self) -> None:
        if self._runtime is not None and self._owns_runtime:
            self._runtime.shutdown()
        self._runtime = None
        self.store.close()

    @property
    def runtime(self) -> Any:
        """The Ray side, started (embedded) or joined on first use."""
        return self._connect(start=True)

    def _connect(self, start: bool) -> Any:
        if self._runtime is None:
            from panray.runtime import connect
            from panray.site_ops import apply_stored_statuses

            self._runtime = connect(self.settings, start=start)
            apply_stored_statuses(self.store, self._runtime)
        return self._runtime

    def running(self) -> Any:
        """The Ray side if a cluster runs (joined, never started); None otherwise."""
        try:
            return self._connect(start=False)
        except RuntimeError:
            return None

    def ready(self) -> bool:
        """The store answers and Ray is connected (the server's readiness probe)."""
        import ray

        self.store.site_statuses()
        return bool(ray.is_initialized())

    # -- audit ---------------------------------------------------------------------------------

    @contextmanager
    def _action(self, who: Identity, action: str, target: str) -> Iterator[None]:
        """Record the action's outcome in the audit table, whatever it is."""
        outcome, detail = "ok", ""
        try:
            yield
        except PermissionDeniedError as exc:
            outcome, detail = "refused", str(exc)
            raise
        except Exception as exc:
            outcome, detail = "error", str(exc) or type(exc).__name__
            raise
        finally:
            self.store.record_audit([AuditRow(time.time(), who.user, action, target, outcome, detail)])

    def _authorize_on(self, who: Identity, action: str, workflow_id: int) -> WorkflowRow:
        row = self.workflow(workflow_id)
        authorize(who, action, owner=row.owner, target=f"workflow {workflow_id}")
        return row

    def audit(self, *, user: str | None = None, limit: int = 100) -> list[AuditRow]:
        return self.store.audit(user=user, limit=limit)

    # -- submit --------------------------------------------------------------------------------

    def submit_campaign(self, who: Identity, campaign: Campaign) -> list[int]:
        """Validate, persist and start every workflow; the owner is ``who``, whatever the body says."""
        return self.submit_workflows(who, campaign.name, campaign.workflows)

    def submit_workflows(self, who: Identity, name: str, workflows: Sequence[Workflow | TableWorkflow]) -> list[int]:
        """:meth:`submit_campaign` of workflows that may be tables (bps's, a networkx graph's):
        validated a column at a time, no pydantic Job per node, refused in the same words."""
        with self._action(who, "submit", f"campaign {name!r}"):
            authorize(who, "submit")
            owned = [w.owned_by(who.user) if isinstance(w, TableWorkflow) else w.model_copy(update={"owner": who.user})
                     for w in workflows]
            new = build_workflows(name, who.user, owned, self.catalog, max_jobs=self.settings.max_workflow_jobs,
                                  placement=self.settings.placement)
            self._connect(start=True)  # an unreachable cluster fails here, before anything is stored
            ids = [w.workflow_id for w in self.store.submit(new).workflows]
            self._start_managers(ids, by=who.user)
            return ids

    def _start_manager(self, workflow_id: int, retry: bool = False, *, by: str) -> Any:
        return self._start_managers([workflow_id], retry, by=by)[workflow_id]

    def _start_managers(self, workflow_ids: list[int], retry: bool = False, *, by: str) -> dict[int, Any]:
        from panray.actors import manager_pool

        rt = self._connect(start=True)
        # On a cluster this service does not own (``panray serve``, PANRAY_RAY_ADDRESS) the run
        # must outlive the submitting process; on its own embedded cluster it dies with it anyway.
        lifetime = "detached" if rt.cluster is None else None
        handles = manager_pool.start(self.settings, workflow_ids, retry=retry, by=by, lifetime=lifetime)
        self._managers.update(handles)
        return handles

    def _manager(self, workflow_id: int) -> Any:
        from panray.actors import manager_pool

        if workflow_id in self._managers:
            return self._managers[workflow_id]
        if self.running() is None:
            return None
        return manager_pool.find(self.settings.resolved_db_url, workflow_id)

    # -- read ----------------------------------------------------------------------------------

    def workflow(self, workflow_id: int) -> WorkflowRow:
        try:
            return self.store.workflow(workflow_id)
        except NotFoundError:
            raise NotFoundError(f"no workflow {workflow_id} in this store") from None

    def workflows(self, *, active_only: bool = False) -> list[WorkflowRow]:
        return self.store.workflows(active_only=active_only)

    def status(self, workflow_id: int | None = None) -> list[WorkflowSummary]:
        """Monitor rows from the state store (the source of truth), newest first."""
        rows = self.store.workflows() if workflow_id is None else [self.workflow(workflow_id)]
        return [self._summary(w) for w in rows]

    def _summary(self, w: WorkflowRow) -> WorkflowSummary:
        """Counted from the jobs, or reused within ``summary_ttl`` while the workflow row is unchanged
        (an ended workflow's row changes with its last flush, so a final summary is never stale)."""
        now = time.monotonic()
        cached = self._summaries.get(w.workflow_id)
        if cached is not None and cached[1] == w and now - cached[0] < self.summary_ttl:
            return cached[2]
        summary = self._count(w)
        if self.summary_ttl > 0:
            self._summaries[w.workflow_id] = (now, w, summary)
        return summary

    def _count(self, w: WorkflowRow) -> WorkflowSummary:
        jobs: dict[str, int] = {}
        for counts in self.store.job_counts(w.workflow_id).values():
            for s, n in counts.items():
                jobs[s] = jobs.get(s, 0) + n
        tasks: dict[str, int] = {}
        for t in self.store.tasks(w.workflow_id):  # stored as the workflow core derived them
            tasks[t.status] = tasks.get(t.status, 0) + 1
        quanta = self.store.quantum_counts(w.workflow_id) or dict(jobs)
        return WorkflowSummary(w.workflow_id, w.name, w.owner, w.status, tasks, jobs, w.created, quanta)

    def is_final(self, workflow_id: int) -> bool:
        return self.workflow(workflow_id).status in {s.value for s in FINAL_WORKFLOW_STATES}

    def tasks(self, workflow_id: int) -> list[TaskRow]:
        self.workflow(workflow_id)
        return self.store.tasks(workflow_id)

    def jobs(self, workflow_id: int, status: Sequence[str] | None = None, *, label: str | None = None,
             site: str | None = None, limit: int | None = None, offset: int = 0) -> list[JobRow]:
        return self.store.jobs(workflow_id, status=status, label=label, site=site, limit=limit, offset=offset)

    def job_page(self, workflow_id: int, query: JobQuery) -> JobPage:
        """One page of a workflow's jobs matching ``query`` (filters, sort, limit, offset), and the total."""
        self.workflow(workflow_id)
        return self.store.job_page(workflow_id, query)

    def error_groups(self, workflow_id: int) -> list[ErrorGroupRow]:
        """Failed attempts grouped by task, error class, exit code and normalised diagnostic, largest first."""
        self.workflow(workflow_id)
        return self.store.error_groups(workflow_id)

    def manager_alive(self, workflow_id: int) -> bool | None:
        """Whether the workflow's manager answers; None when no cluster runs to ask."""
        import ray

        if self.running() is None:
            return None
        mgr = self._manager(workflow_id)
        if mgr is None:
            return False
        try:
            ray.get(mgr.progress.remote(), timeout=5)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError, ray.exceptions.RayTaskError):
            return False  # gone, busy, or its host could not load it
        return True

    def job(self, job_id: int) -> JobRow:
        return self.store.job(job_id)

    def attempts(self, job_id: int) -> list[AttemptRow]:
        return self.store.attempts(job_id)

    def history(self, job_id: int) -> list[HistoryRow]:
        return self.store.history(job_id)

    def transfers(self, job_id: int) -> list[TransferRow]:
        return self.store.transfers(job_id)

    def decisions(self, job_id: int) -> list[DecisionRow]:
        """Brokerage's explained choices for the job (``panray explain``)."""
        return self.store.decisions(job_id)

    def max_pss(self, workflow_id: int) -> dict[int, int]:
        return self.store.max_pss(workflow_id)

    def quanta(self, workflow_id: int) -> list[QuantumRow]:
        return self.store.quanta(workflow_id)

    def logs(self, job_id: int | None = None, *, task_id: int | None = None, attempt: int | None = None,
             grep: str | None = None, source: str | None = None) -> list[dict[str, Any]]:
        """Log entries of a job or a task from the log sink: the payload's, the pilot's (``source``) or both."""
        from panray.logging_bridge import make_sink

        if job_id is None and task_id is None:
            raise PanrayError("give a JOB or --task T")
        return list(make_sink(self.settings).query(job_id=job_id, task_id=task_id, attempt=attempt, grep=grep,
                                                   source=source))

    def log_files(self, job_id: int, attempt: int | None = None) -> list[str]:
        """Keys of the log files stored for one attempt of a job (default: its latest)."""
        from panray.logging_bridge import attempt_prefix, make_object_store

        job = self.store.job(job_id)
        prefix = attempt_prefix(job.workflow_id, job.task_id, job.job_id, attempt or job.attempt_nr)
        return list(make_object_store(self.settings).list(prefix))

    def sites(self) -> list[dict[str, Any]]:
        """Per site: status, DRP share, nodes, pilots, queued, running, finished, failed."""
        from panray.site_ops import site_rows

        shares = {s.name: s.drp_share for s in self.catalog}
        return [{**r, "drp_share": shares[r["site"]]} for r in site_rows(self)]

    def wait(self, workflow_ids: Sequence[int], *, timeout: float | None = None,
             progress: Progress | None = None) -> dict[int, str]:
        """Block until the workflows end; returns their final statuses.

        Waits on each manager (no polling of the store); ``progress`` sees each step.
        """
        import ray

        deadline = None if timeout is None else time.monotonic() + timeout
        out: dict[int, str] = {}
        for wf_id in workflow_ids:
            mgr = self._manager(wf_id)
            while mgr is not None:
                left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
                step = 0.5 if progress else left
                if left is not None and step is not None:
                    step = min(step, left)
                try:
                    status = ray.get(mgr.wait.remote(step))
                except ray.exceptions.ActorUnavailableError:  # being restarted by Ray: ask again
                    if left is not None and left <= 0:
                        raise TimeoutError(f"workflow {wf_id} still running after {timeout} s") from None
                    time.sleep(0.2)
                    continue
                if progress:
                    progress(ray.get(mgr.progress.remote()), status is not None)
                if status is not None:
                    out[wf_id] = status
                    break
                if left is not None and left <= 0:
                    raise TimeoutError(f"workflow {wf_id} still running after {timeout} s")
            if mgr is None:
                out[wf_id] = self.workflow(wf_id).status
        return out

    # -- act -----------------------------------------------------------------------------------

    def cancel(self, who: Identity, workflow_id: int, *, task_id: int | None = None,
               job_ids: Sequence[int] | None = None) -> bool:
        """Cancel a workflow, or only one task's jobs and/or some jobs; False if no manager got it.

        Running payloads are killed and the jobs not final end cancelled. A whole-workflow cancel
        is also recorded in the store, so a manager started later honours it; a partial cancel
        is a failure for good of those jobs (descendants pruned, the final job still runs) and
        needs the workflow's manager running.
        """
        with self._action(who, "cancel", _target(workflow_id, task_id, job_ids)):
            self._authorize_on(who, "cancel", workflow_id)
            partial = task_id is not None or job_ids is not None
            if partial:
                self._check_in_workflow(workflow_id, task_id, job_ids or ())
            else:
                self.store.set_cancelled(workflow_id, True)
            mgr = self._manager(workflow_id)
            if mgr is None:
                return False
            mgr.cancel.remote(task_id, None if job_ids is None else list(job_ids), by=who.user)
            return True

    def _check_in_workflow(self, workflow_id: int, task_id: int | None, job_ids: Sequence[int]) -> None:
        """Refuse ids of another workflow: the manager would silently ignore them."""
        if task_id is not None and task_id not in {t.task_id for t in self.store.tasks(workflow_id)}:
            raise NotFoundError(f"workflow {workflow_id} has no task {task_id}")
        strangers = [j for j in job_ids if self.store.job(j).workflow_id != workflow_id]
        if strangers:
            raise NotFoundError(f"workflow {workflow_id} has no job {', '.join(map(str, strangers))}")

    def retry(self, who: Identity, workflow_id: int) -> None:
        """Rerun the failed, cancelled and pruned jobs of an ended workflow (never a finished one)."""
        import ray

        with self._action(who, "retry", f"workflow {workflow_id}"):
            row = self._authorize_on(who, "retry", workflow_id)
            if row.status not in {s.value for s in FINAL_WORKFLOW_STATES}:
                raise ConflictError(f"workflow {workflow_id} is still {row.status}; retry reruns ended workflows")
            self.store.set_cancelled(workflow_id, False)
            mgr = self._manager(workflow_id)
            if mgr is not None:
                ray.get(mgr.retry.remote(by=who.user))
            else:
                self._start_manager(workflow_id, retry=True, by=who.user)

    def retry_jobs(self, who: Identity, workflow_id: int, *, task_id: int | None = None,
                   job_ids: Sequence[int] | None = None, memory: int | None = None) -> int:
        """Rerun now, while the workflow runs (or after it ended), the failed, cancelled and pruned
        jobs of a task and/or these jobs (neither: all of them), with ``memory`` MB for the new
        attempts if given; the jobs they pruned run after them and finished jobs never rerun.
        Returns how many jobs got a new attempt.
        """
        import ray

        with self._action(who, "retry", _target(workflow_id, task_id, job_ids)):
            row = self._authorize_on(who, "retry", workflow_id)
            if memory is not None and not 0 < memory <= INT32_MAX:
                raise PanrayError(f"memory {memory}: expected MB from 1 to {INT32_MAX}")
            if row.cancelled:
                raise ConflictError(f"workflow {workflow_id} was cancelled; `panray retry {workflow_id}` reruns it "
                                    "once it has ended")
            self._check_in_workflow(workflow_id, task_id, job_ids or ())
            if self.store.quantum_counts(workflow_id):
                raise ConflictError(f"workflow {workflow_id} is clustered: retry of selected jobs is not supported "
                                    f"for clustered workflows yet; `panray retry {workflow_id}` reruns every failed "
                                    "job once it has ended")
            mgr = self._manager(workflow_id) or self._start_manager(workflow_id, by=who.user)
            jobs = None if job_ids is None else list(job_ids)
            return int(ray.get(mgr.rerun.remote(task_id, jobs, memory, by=who.user)))

    def hold(self, who: Identity, workflow_id: int, *, task_id: int | None = None) -> bool:
        """Broker nothing more of the workflow (or of one task) until released: its queued jobs are
        taken back, payloads already on a pilot run on. Kept in the store, so a restarted manager
        holds too; False if no manager is running to apply it now."""
        with self._action(who, "hold", _target(workflow_id, task_id)):
            row = self._authorize_on(who, "hold", workflow_id)
            self._check_in_workflow(workflow_id, task_id, ())
            held = held_of(row.settings)
            self.store.set_held(workflow_id, True if task_id is None or held is True else [*held, task_id])
            mgr = self._manager(workflow_id)
            if mgr is None:
                return False
            mgr.hold.remote(task_id, by=who.user)
            return True

    def release(self, who: Identity, workflow_id: int, *, task_id: int | None = None) -> bool:
        """Broker a held workflow (or task) again; False if no manager is running to apply it now."""
        with self._action(who, "release", _target(workflow_id, task_id)):
            row = self._authorize_on(who, "release", workflow_id)
            self._check_in_workflow(workflow_id, task_id, ())
            held = held_of(row.settings)
            if task_id is not None and held is True:
                raise ConflictError(f"workflow {workflow_id} is held as a whole; `panray release {workflow_id}` "
                                    "releases it")
            self.store.set_held(workflow_id, [] if task_id is None else [t for t in held if t != task_id])
            mgr = self._manager(workflow_id)
            if mgr is None:
                return False
            mgr.release.remote(task_id)
            return True

    def set_priority(self, who: Identity, workflow_id: int, priority: int, *, task_id: int | None = None,
                     job_ids: Sequence[int] | None = None) -> int:
        """A new priority for the workflow's jobs (or a task's, or these): its manager brokers
        higher ones first. Returns how many jobs it applies to."""
        with self._action(who, "set-priority", f"{_target(workflow_id, task_id, job_ids)} to {priority}"):
            self._authorize_on(who, "set-priority", workflow_id)
            if not INT32_MIN <= priority <= INT32_MAX:
                raise PanrayError(f"priority {priority}: expected an integer from {INT32_MIN} to {INT32_MAX}")
            self._check_in_workflow(workflow_id, task_id, job_ids or ())
            jobs = None if job_ids is None else list(job_ids)
            n = self.store.set_priority(workflow_id, priority, task_id=task_id, job_ids=jobs)
            mgr = self._manager(workflow_id)
            if mgr is not None:
                mgr.set_priority.remote(priority, task_id, jobs)
            return n

    def held(self, workflow_id: int) -> bool | list[int]:
        """What of a workflow is held: True (all of it), or the ids of its held tasks."""
        return held_of(self.workflow(workflow_id).settings)

    def resume(self, who: Identity, workflow_ids: Sequence[int] | None = None) -> list[int]:
        """Start managers for the workflows not ended (after a crash), or for these, that ``who`` may act on.

        Each manager reloads its workflow from the store: jobs that were running are retried as
        system errors, queued jobs are brokered again, finished jobs stay finished.
        """
        rows = [w for w in self.store.workflows(active_only=True) if (who.operator or w.owner == who.user)
                and (workflow_ids is None or w.workflow_id in workflow_ids)]
        with self._action(who, "resume", " ".join(f"workflow {w.workflow_id}" for w in rows) or "nothing"):
            for w in rows:
                authorize(who, "resume", owner=w.owner, target=f"workflow {w.workflow_id}")
            self._start_managers([w.workflow_id for w in rows], by=who.user)
            return [w.workflow_id for w in rows]

    def set_site_status(self, who: Identity, site: str, status: str) -> bool:
        """Persist and apply an operator's site status; False if no cluster runs to apply it now."""
        from panray.site_ops import set_site_status

        with self._action(who, "set-site-status", f"site {site} {status}"):
            authorize(who, "set-site-status", target=f"site {site}")
            return set_site_status(self, site, status)

    def prompt_notify(self, who: Identity, visit: int, *, visits: int = 1, detectors: Sequence[int] | None = None,
                      instrument: str = "LSSTCam") -> str:
        """Notify the standing prompt task of ``visits`` visits from ``visit``; the reports and stats as text."""
        from panray import prompt

        with self._action(who, "prompt-notify", f"{instrument} visit {visit}" + (f"+{visits - 1}" if visits > 1 else "")):
            authorize(who, "prompt-notify", target=f"for {instrument}")
            prompt.check_detectors(instrument, detectors or ())
            prompt.start(self.settings, catalog=self.runtime.catalog)
            lines = [prompt.format_report(prompt.notify(v, detectors, instrument)) for v in range(visit, visit + visits)]
            prompt.flush(instrument)
            return "\n".join([*lines, prompt.format_stats(prompt.stats(instrument))])


def _target(workflow_id: int, task_id: int | None = None, job_ids: Sequence[int] | None = None) -> str:
    """``workflow 7 task 3 job 12 job 13``: what an action names, for the audit."""
    parts = ([f"task {task_id}"] if task_id is not None else []) + [f"job {j}" for j in job_ids or ()]
    return " ".join([f"workflow {workflow_id}", *parts])


__all__ = ["Identity", "Service", "WorkflowSummary", "authorize"]
