"""panray's Python API: submit campaigns, follow them, cancel them.

Embedded (the default) it runs the service in this process as the local OS user, who holds every
role; with ``url`` (or ``PANRAY_URL``) it talks to a ``panray serve`` over HTTP with a token
(``token``, ``PANRAY_TOKEN`` or the home's token file), with the same methods and return types.

Examples:
    >>> from panray import Panray, Workflow, Job          # doctest: +SKIP
    >>> wf = Workflow(name="demo", jobs=[Job(name="a", label="isr", command=["true"])])
    >>> with Panray() as pr:                              # embedded: local 3-site cluster
    ...     [wf_id] = pr.submit(wf)
    ...     pr.wait([wf_id], progress=True)
    >>> with Panray(url="http://127.0.0.1:8470", token=token) as pr:   # a server
    ...     pr.status(wf_id)
"""

from __future__ import annotations

import os
from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING, Any

from panray.config import Settings
from panray.exceptions import PanrayError
from panray.identity import Identity, local_identity
from panray.job_table import JobTable, TableWorkflow
from panray.models import Campaign, Workflow
from panray.service import Progress, Service, WorkflowSummary
from panray.store.base import AttemptRow, DecisionRow, ErrorGroupRow, HistoryRow, JobPage, JobQuery, JobRow
from panray.store.base import QuantumRow, TaskRow, TransferRow, WorkflowRow

if TYPE_CHECKING:
    from panray.remote import RemoteService
    from panray.sites import Decision

__all__ = ["Panray", "WorkflowHandle", "WorkflowSummary"]


def _checked_graph(graph: Any) -> Any:
    import networkx as nx

    if not isinstance(graph, nx.DiGraph):
        raise PanrayError(f"submit takes a Workflow or a networkx DiGraph, not a {type(graph).__name__}")
    return graph


def _graph_name(graph: Any) -> str:
    return graph.graph.get("name") or "workflow"  # as Workflow.from_networkx names it


class WorkflowHandle:
    """A submitted workflow as a future: poll it, block on it with a timeout, or ``await`` it."""

    def __init__(self, session: Panray, workflow_id: int):
        self.session = session
        self.workflow_id = workflow_id

    def __repr__(self) -> str:
        return f"WorkflowHandle({self.workflow_id})"

    def done(self) -> bool:
        """Whether the workflow has ended (read from the store, no waiting)."""
        return self.session.is_final(self.workflow_id)

    def result(self, timeout: float | None = None) -> str:
        """Block until the workflow ends (``TimeoutError`` after ``timeout`` s); its final status."""
        return self.session.wait([self.workflow_id], timeout=timeout)[self.workflow_id]

    async def wait_async(self, timeout: float | None = None) -> str:
        """:meth:`result` for asyncio: the wait runs in a worker thread, the event loop goes on."""
        import asyncio

        return await asyncio.to_thread(self.result, timeout)

    def __await__(self) -> Generator[Any, None, str]:
        return self.wait_async().__await__()


class Panray:
    """A panray session: embedded (a :class:`Service` in this process) or a server's client."""

    def __init__(self, settings: Settings | None = None, *, url: str | None = None, token: str | None = None,
                 **overrides: Any):
        base = settings or Settings.load()
        self.settings = base.model_copy(update=overrides) if overrides else base
        url = url or os.environ.get("PANRAY_URL") or None
        self._service: Service | None = None
        self.identity: Identity | None = None
        if url:
            from panray.remote import RemoteService

            self._backend: Service | RemoteService = RemoteService(url, token=token, settings=self.settings)
        else:
            self._service = self._backend = Service(self.settings)
            self.identity = local_identity()

    @property
    def remote(self) -> bool:
        return self._service is None

    @property
    def service(self) -> Service:
        """The embedded service (its store, catalog and cluster); a client of a server has none."""
        if self._service is None:
            raise PanrayError("this Panray talks to a server; the store and the cluster are the server's")
        return self._service

    @property
    def store(self) -> Any:
        return self.service.store

    @property
    def catalog(self) -> Any:
        return self.service.catalog

    @property
    def runtime(self) -> Any:
        """The Ray side, started (embedded) or joined on first use."""
        return self.service.runtime

    def running(self) -> Any:
        """The Ray side if a cluster runs (joined, never started); None otherwise."""
        return self.service.running()

    def _connect(self, start: bool) -> Any:
        return self.service._connect(start)

    def _manager(self, workflow_id: int) -> Any:
        return self.service._manager(workflow_id)

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> Panray:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._backend.close()

    # -- submit ------------------------------------------------------------------------------

    def submit_campaign(self, campaign: Campaign) -> list[int]:
        """Validate, persist and start every workflow of a campaign; returns workflow ids."""
        return self._backend.submit_campaign(self.identity, campaign)  # type: ignore[arg-type]

    def submit(self, workflow: Workflow | Any) -> list[int]:
        """Submit one workflow as its own campaign; a networkx DiGraph is taken as
        :meth:`Workflow.from_networkx` reads it (node attributes as job fields)."""
        if not isinstance(workflow, Workflow):
            graph = _checked_graph(workflow)
            if isinstance(self._backend, Service):  # a table: validated a column at a time
                table = TableWorkflow.of(JobTable.from_graph(graph), name=_graph_name(graph))
                return self._backend.submit_workflows(self.identity, table.name, [table])  # type: ignore[arg-type]
            workflow = Workflow.from_networkx(graph)
        return self.submit_campaign(Campaign(name=workflow.name, owner=workflow.owner, workflows=[workflow]))

    # -- follow ------------------------------------------------------------------------------

    def status(self, workflow_id: int | None = None) -> list[WorkflowSummary]:
        """Monitor rows from the state store (the source of truth), newest first."""
        return self._backend.status(workflow_id)

    def workflow(self, workflow_id: int) -> WorkflowRow:
        """One workflow's row (no job counts); ``NotFoundError`` if the store has none."""
        return self._backend.workflow(workflow_id)

    def workflows(self, *, active_only: bool = False) -> list[WorkflowRow]:
        return self._backend.workflows(active_only=active_only)

    def tasks(self, workflow_id: int) -> list[TaskRow]:
        return self._backend.tasks(workflow_id)

    def jobs(self, workflow_id: int, status: Sequence[str] | None = None, *, label: str | None = None,
             site: str | None = None, limit: int | None = None, offset: int = 0) -> list[JobRow]:
        return self._backend.jobs(workflow_id, status, label=label, site=site, limit=limit, offset=offset)

    def job_page(self, workflow_id: int, query: JobQuery) -> JobPage:
        """One page of jobs matching ``query`` (status, label, site, error class, exit code; sort, limit, offset).

        Examples:
            >>> page = pr.job_page(wf_id, JobQuery(error_class="payload", limit=50))   # doctest: +SKIP
            >>> page.total, [j.name for j in page.rows][:2]                            # doctest: +SKIP
            (120, ['isr:3', 'isr:7'])
        """
        return self._backend.job_page(workflow_id, query)

    def errors(self, workflow_id: int) -> list[ErrorGroupRow]:
        """The error summary: failed attempts grouped by task, error class, exit code and normalised
        diagnostic (numbers, ids and paths replaced; the store keeps these groups), largest first,
        each with an example job."""
        return self._backend.error_groups(workflow_id)

    def explain(self, job_id: int) -> list[Decision]:
        """Brokerage's explained choices for a job, oldest first: the candidates with their
        weights and the filtered sites with their reasons (``panray.sites.format_explanation``)."""
        import json

        from panray.sites import Decision

        self.job(job_id)
        return [Decision.from_dict(json.loads(r.decision)) for r in self.decisions(job_id)]

    def manager_alive(self, workflow_id: int) -> bool | None:
        """Whether the workflow's manager answers (None: no cluster runs to ask)."""
        return self._backend.manager_alive(workflow_id)

    def job(self, job_id: int) -> JobRow:
        return self._backend.job(job_id)

    def attempts(self, job_id: int) -> list[AttemptRow]:
        return self._backend.attempts(job_id)

    def history(self, job_id: int) -> list[HistoryRow]:
        return self._backend.history(job_id)

    def transfers(self, job_id: int) -> list[TransferRow]:
        return self._backend.transfers(job_id)

    def decisions(self, job_id: int) -> list[DecisionRow]:
        return self._backend.decisions(job_id)

    def max_pss(self, workflow_id: int) -> dict[int, int]:
        return self._backend.max_pss(workflow_id)

    def quanta(self, workflow_id: int) -> list[QuantumRow]:
        return self._backend.quanta(workflow_id)

    def logs(self, job_id: int | None = None, *, task_id: int | None = None, attempt: int | None = None,
             grep: str | None = None, source: str | None = None) -> list[dict[str, Any]]:
        return self._backend.logs(job_id, task_id=task_id, attempt=attempt, grep=grep, source=source)

    def log_files(self, job_id: int, attempt: int | None = None) -> list[str]:
        return self._backend.log_files(job_id, attempt)

    def sites(self) -> list[dict[str, Any]]:
        return self._backend.sites()

    def is_final(self, workflow_id: int) -> bool:
        return self._backend.is_final(workflow_id)

    def wait(self, workflow_ids: Sequence[int], *, progress: bool | Progress = False,
             timeout: float | None = None) -> dict[int, str]:
        """Block until the workflows end; returns their final statuses.

        ``progress``: True shows ended/total, elapsed, rate, ETA and retries on stderr (one line
        redrawn on a terminal, a line every few seconds when redirected); a callable gets each step.
        """
        if progress is True:
            from panray.cli_output import WaitDisplay

            progress = WaitDisplay()
        return self._backend.wait(workflow_ids, timeout=timeout, progress=progress or None)

    def handle(self, workflow_id: int) -> WorkflowHandle:
        """A future-like handle on a submitted workflow: ``done()``, ``result(timeout)``, ``await``."""
        self.status(workflow_id)  # an unknown id fails here, not in a later result()
        return WorkflowHandle(self, workflow_id)

    def start(self, workflow: Workflow) -> WorkflowHandle:
        """Submit one workflow and return at once with its handle.

        Examples:
            >>> h = pr.start(wf)                      # doctest: +SKIP
            >>> h.done(), h.result(timeout=600)       # doctest: +SKIP
            (False, 'Finished')
            >>> await pr.start(wf)                    # doctest: +SKIP
            'Finished'
        """
        [wf_id] = self.submit(workflow)
        return WorkflowHandle(self, wf_id)

    # -- act ---------------------------------------------------------------------------------

    def cancel(self, workflow_id: int, *, task_id: int | None = None, job_ids: Sequence[int] | None = None) -> bool:
        """Cancel a workflow, or only one task's jobs and/or some jobs; False if no manager got it."""
        return self._backend.cancel(self.identity, workflow_id, task_id=task_id, job_ids=job_ids)  # type: ignore[arg-type]

    def retry(self, workflow_id: int) -> None:
        """Rerun the failed, cancelled and pruned jobs of an ended workflow (never a finished one)."""
        self._backend.retry(self.identity, workflow_id)  # type: ignore[arg-type]

    def retry_jobs(self, workflow_id: int, *, task_id: int | None = None, job_ids: Sequence[int] | None = None,
                   memory: int | None = None) -> int:
        """Rerun now the failed, cancelled and pruned jobs of a task and/or these jobs (neither: all
        of them), even while the workflow runs, with ``memory`` MB if given; returns how many rerun.

        Examples:
            >>> pr.retry_jobs(wf_id, job_ids=[17, 18], memory=8000)       # doctest: +SKIP
            2
        """
        return self._backend.retry_jobs(self.identity, workflow_id, task_id=task_id,  # type: ignore[arg-type]
                                        job_ids=job_ids, memory=memory)

    def hold(self, workflow_id: int, *, task_id: int | None = None) -> bool:
        """Broker nothing more of the workflow (or task) until :meth:`release`; running jobs go on."""
        return self._backend.hold(self.identity, workflow_id, task_id=task_id)  # type: ignore[arg-type]

    def release(self, workflow_id: int, *, task_id: int | None = None) -> bool:
        """Broker a held workflow (or task) again."""
        return self._backend.release(self.identity, workflow_id, task_id=task_id)  # type: ignore[arg-type]

    def set_priority(self, workflow_id: int, priority: int, *, task_id: int | None = None,
                     job_ids: Sequence[int] | None = None) -> int:
        """A new priority for the workflow's jobs (or a task's, or these); higher ones are brokered first."""
        return self._backend.set_priority(self.identity, workflow_id, priority,  # type: ignore[arg-type]
                                          task_id=task_id, job_ids=job_ids)

    def held(self, workflow_id: int) -> bool | list[int]:
        """What of a workflow is held: True (all of it), or the ids of its held tasks."""
        return self._backend.held(workflow_id)

    def resume(self, workflow_ids: Sequence[int] | None = None) -> list[int]:
        """Start managers for every workflow not ended (after a crash), or for these; returns their ids."""
        return self._backend.resume(self.identity, workflow_ids)  # type: ignore[arg-type]

    def set_site_status(self, site: str, status: str) -> bool:
        """Set a site online, brokeroff or offline (kept across restarts); False if not applied yet."""
        return self._backend.set_site_status(self.identity, site, status)  # type: ignore[arg-type]

    def prompt_notify(self, visit: int, *, visits: int = 1, detectors: Sequence[int] | None = None,
                      instrument: str = "LSSTCam") -> str:
        """Notify the standing prompt task of new visits; the reports and stats as text."""
        return self._backend.prompt_notify(self.identity, visit, visits=visits,  # type: ignore[arg-type]
                                           detectors=detectors, instrument=instrument)
