"""panray's Python API: submit campaigns, follow them, cancel them.

Examples:
    >>> from panray import Panray, Workflow, Job          # doctest: +SKIP
    >>> wf = Workflow(name="demo", jobs=[Job(name="a", label="isr", command=["true"])])
    >>> with Panray() as pr:                              # embedded: local 3-site cluster
    ...     [wf_id] = pr.submit(wf)
    ...     pr.wait([wf_id], progress=True)
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from panray.config import Settings
from panray.exceptions import NotFoundError, PanrayError
from panray.models import Campaign, Workflow
from panray.sites import load_catalog
from panray.statuses import FINAL_WORKFLOW_STATES, derive_task_status
from panray.store import StateStore, open_store
from panray.store.base import JobRow, WorkflowRow
from panray.submission import build_campaign


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


class Panray:
    """A panray session: the state store, and (lazily) the Ray cluster with panray's actors."""

    def __init__(self, settings: Settings | None = None, **overrides: Any):
        base = settings or Settings.load()
        self.settings = base.model_copy(update=overrides) if overrides else base
        self.store: StateStore = open_store(self.settings.resolved_db_url)
        self.catalog = load_catalog(self.settings.sites_file)
        self._runtime: Any = None
        self._managers: dict[int, Any] = {}  # handles of managers this session started

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> Panray:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._runtime is not None:
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

    # -- submit ------------------------------------------------------------------------------

    def submit_campaign(self, campaign: Campaign) -> list[int]:
        """Validate, persist and start every workflow of a campaign; returns workflow ids."""
        new = build_campaign(campaign, self.catalog)
        ids = [w.workflow_id for w in self.store.submit(new).workflows]
        for wf_id in ids:
            self._start_manager(wf_id)
        return ids

    def submit(self, workflow: Workflow) -> list[int]:
        """Submit one workflow as its own campaign."""
        return self.submit_campaign(Campaign(name=workflow.name, owner=workflow.owner, workflows=[workflow]))

    def _start_manager(self, workflow_id: int, retry: bool = False) -> Any:
        from panray.actors.names import NAMESPACE, manager_name
        from panray.actors.workflow_manager import WorkflowManager
        from panray.runtime import _HANDLES, control_plane

        rt = self._connect(start=True)
        # On a cluster this session does not own (``panray serve``, PANRAY_RAY_ADDRESS) the run
        # must outlive the submitting process; on its own embedded cluster it dies with it anyway.
        lifetime = "detached" if rt.cluster is None else None
        handle = WorkflowManager.options(  # Ray restarts a dead manager on the stored state
            name=manager_name(self.settings.resolved_db_url, workflow_id), namespace=NAMESPACE, get_if_exists=True,
            lifetime=lifetime, scheduling_strategy=control_plane(), max_restarts=-1,
        ).remote(workflow_id, self.settings.resolved_db_url, self.settings.model_dump(mode="json"), retry)
        self._managers[workflow_id] = handle
        _HANDLES.append(handle)
        return handle

    def _manager(self, workflow_id: int) -> Any:
        import ray

        from panray.actors.names import NAMESPACE, manager_name

        if workflow_id in self._managers:
            return self._managers[workflow_id]
        try:
            self._connect(start=False)
        except RuntimeError:
            return None
        try:
            return ray.get_actor(manager_name(self.settings.resolved_db_url, workflow_id), namespace=NAMESPACE)
        except ValueError:
            return None

    # -- follow ------------------------------------------------------------------------------

    def status(self, workflow_id: int | None = None) -> list[WorkflowSummary]:
        """Monitor rows from the state store (the source of truth), newest first."""
        rows = self.store.workflows()
        if workflow_id is not None:
            rows = [w for w in rows if w.workflow_id == workflow_id]
            if not rows:
                raise NotFoundError(f"no workflow {workflow_id}")
        return [self._summary(w) for w in rows]

    def _summary(self, w: WorkflowRow) -> WorkflowSummary:
        per_task = self.store.job_counts(w.workflow_id)
        jobs: dict[str, int] = {}
        tasks: dict[str, int] = {}
        for counts in per_task.values():
            for s, n in counts.items():
                jobs[s] = jobs.get(s, 0) + n
            ts = derive_task_status(counts, cancelled=w.cancelled).value
            tasks[ts] = tasks.get(ts, 0) + 1
        quanta = self.store.quantum_counts(w.workflow_id) or dict(jobs)
        return WorkflowSummary(w.workflow_id, w.name, w.owner, w.status, tasks, jobs, w.created, quanta)

    def jobs(self, workflow_id: int, status: Sequence[str] | None = None) -> list[JobRow]:
        return self.store.jobs(workflow_id, status=status)

    def wait(self, workflow_ids: Sequence[int], *, progress: bool = False, timeout: float | None = None) -> dict[int, str]:
        """Block until the workflows end; returns their final statuses.

        Waits on each manager (no polling of the store); with ``progress`` a bar on stderr.
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
                    self._draw(ray.get(mgr.progress.remote()), final=status is not None)
                if status is not None:
                    out[wf_id] = status
                    break
                if left is not None and left <= 0:
                    raise TimeoutError(f"workflow {wf_id} still running after {timeout} s")
            if mgr is None:
                out[wf_id] = self.status(wf_id)[0].status
        return out

    @staticmethod
    def _draw(p: dict[str, Any], final: bool) -> None:
        counts, total = p["counts"], max(p["total"], 1)
        ended = sum(counts.get(s, 0) for s in ("finished", "failed", "closed", "cancelled"))
        width = 40
        fill = int(width * ended / total)
        running = counts.get("running", 0)
        line = (f"\rworkflow {p['workflow_id']} [{'#' * fill}{'.' * (width - fill)}] {ended}/{total} ended, "
                f"{running} running, {counts.get('failed', 0)} failed  ")
        sys.stderr.write(line + ("\n" if final else ""))
        sys.stderr.flush()

    # -- act ---------------------------------------------------------------------------------

    def cancel(self, workflow_id: int, *, task_id: int | None = None, job_ids: Sequence[int] | None = None) -> bool:
        """Cancel a workflow, or only one task's jobs and/or some jobs; False if no manager got it.

        Running payloads are killed and the jobs not final end cancelled. A whole-workflow cancel
        is also recorded in the store, so a manager started later honours it; a partial cancel
        is a failure for good of those jobs (descendants pruned, the final job still runs) and
        needs the workflow's manager running.
        """
        partial = task_id is not None or job_ids is not None
        if partial:
            self._check_in_workflow(workflow_id, task_id, job_ids or ())
        else:
            self.store.set_cancelled(workflow_id, True)
        mgr = self._manager(workflow_id)
        if mgr is None:
            return False
        mgr.cancel.remote(task_id, None if job_ids is None else list(job_ids))
        return True

    def _check_in_workflow(self, workflow_id: int, task_id: int | None, job_ids: Sequence[int]) -> None:
        """Refuse ids of another workflow: the manager would silently ignore them."""
        if task_id is not None and task_id not in {t.task_id for t in self.store.tasks(workflow_id)}:
            raise NotFoundError(f"workflow {workflow_id} has no task {task_id}")
        strangers = [j for j in job_ids if self.store.job(j).workflow_id != workflow_id]
        if strangers:
            raise NotFoundError(f"workflow {workflow_id} has no job {', '.join(map(str, strangers))}")

    def retry(self, workflow_id: int) -> None:
        """Rerun the failed, cancelled and pruned jobs of an ended workflow (never a finished one)."""
        import ray

        if not self.is_final(workflow_id):
            raise PanrayError(f"workflow {workflow_id} is still {self.status(workflow_id)[0].status}; "
                              "retry reruns ended workflows")
        self.store.set_cancelled(workflow_id, False)
        mgr = self._manager(workflow_id)
        if mgr is not None:
            ray.get(mgr.retry.remote())
        else:
            self._start_manager(workflow_id, retry=True)

    def resume(self) -> list[int]:
        """Start managers for every workflow not ended (after a crash); returns their ids.

        Each manager reloads its workflow from the store: jobs that were running are retried as
        system errors, queued jobs are brokered again, finished jobs stay finished.
        """
        ids = [w.workflow_id for w in self.store.workflows(active_only=True)]
        for wf_id in ids:
            self._start_manager(wf_id)
        return ids

    def is_final(self, workflow_id: int) -> bool:
        return self.status(workflow_id)[0].status in {s.value for s in FINAL_WORKFLOW_STATES}
