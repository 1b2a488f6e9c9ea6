"""Turns submitted models into store rows: validate everything first, store nothing half.

The DAG is validated (cycles, dangling parents, duplicates), pins are checked against the site
catalog, commands are encoded, labels become tasks, and an init job becomes the parent of
every root while the final job stays outside the graph (the manager releases it last).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from panray.cluster_jobs import cluster_jobs
from panray.dag import build_graph, partition_tasks
from panray.exceptions import PanrayError, UnknownSiteError, WorkflowValidationError, show
from panray.job_table import TableJob, TableWorkflow
from panray.models import DEFAULT_MAX_WORKFLOW_JOBS, Campaign, Job, Workflow
from panray.payload import encode_command, encode_function
from panray.placement import Mode, place
from panray.sites import SiteCatalog
from panray.store.base import NewCampaign, NewJob, NewTask, NewWorkflow

_dumps = json.JSONEncoder(separators=(",", ":"), sort_keys=True).encode


def _dumps_small(value: dict | list) -> str:  # type: ignore[type-arg]
    """JSON of a job's optional mapping or list; the empty ones (most jobs) skip the encoder."""
    return _dumps(value) if value else ("{}" if isinstance(value, dict) else "[]")


def _payload(j: Job | TableJob) -> str:
    """The encoded command, or the encoded call of a function job."""
    return encode_function(j.function, j.args, j.kwargs, j.name) if j.function else encode_command(j.command)


def _retry_json(j: Job | TableJob, memo: dict[tuple[object, ...], str]) -> str:
    """The retry policy as JSON, encoded once per distinct policy (a handful per workflow)."""
    key = (j.memory_multiplier, j.request_memory_max, tuple(j.retry_unless_exit))
    text = memo.get(key)
    if text is None:
        text = memo[key] = _dumps({"memory_multiplier": j.memory_multiplier,
                                   "request_memory_max": j.request_memory_max,
                                   "retry_unless_exit": j.retry_unless_exit})
    return text


def _check_sites(jobs: Iterable[Job | TableJob], home_site: str, catalog: SiteCatalog) -> None:
    known = catalog.names()
    if home_site not in catalog:
        raise UnknownSiteError(home_site, known)
    for j in jobs:
        if j.site is not None and j.site not in catalog:
            raise UnknownSiteError(j.site, known)


def _check_size(name: str, n: int, max_jobs: int) -> None:
    if n > max_jobs:
        raise WorkflowValidationError(f"workflow {show(name)} has {n:,} jobs, more than the maximum of "
                                      f"{max_jobs:,} (setting max_workflow_jobs); split it into several workflows")


def build_workflow(wf: Workflow | TableWorkflow, catalog: SiteCatalog, *, max_jobs: int = DEFAULT_MAX_WORKFLOW_JOBS,
                   placement: Mode = "refuse") -> NewWorkflow:
    """Validate one workflow and shape its rows; raises a WorkflowValidationError naming the problem.

    ``max_jobs`` bounds the workflow's size; ``placement`` says what happens to a job no site
    could take (:func:`panray.placement.place`). A :class:`~panray.job_table.TableWorkflow`'s
    jobs are validated here, a column at a time (as Job models when it is clustered).
    """
    jobs: list[Job] | list[TableJob]
    if isinstance(wf, TableWorkflow):
        _check_size(wf.name, wf.table.n, max_jobs)  # before the table's jobs are built
        if wf.header.clustering:
            return build_workflow(wf.as_workflow(), catalog, max_jobs=max_jobs, placement=placement)
        jobs, wf = wf.table.jobs(), wf.header
    else:
        jobs = list(wf.jobs)
    if not jobs:
        raise WorkflowValidationError(f"workflow {show(wf.name)} has no jobs")
    _check_size(wf.name, len(jobs), max_jobs)
    clustered = cluster_jobs(wf) if wf.clustering else None
    if clustered is not None:
        jobs = list(clustered.jobs)
    parents = [list(j.parents) for j in jobs]
    if wf.init_job is not None:
        for p in parents:
            if not p:
                p.append(wf.init_job.name)
        jobs.insert(0, wf.init_job)
        parents.insert(0, [])
    graph = build_graph([j.name for j in jobs], parents)
    if wf.final_job is not None:
        if wf.final_job.name in graph.index:
            raise WorkflowValidationError(f"final job name {show(wf.final_job.name)} is also a job name")
        jobs.append(wf.final_job.model_copy(update={"site": wf.final_job.site or wf.home_site}))
    _check_sites(jobs, wf.home_site, catalog)
    jobs = place(jobs, catalog, workflow=wf.name, mode=placement)  # type: ignore[arg-type]
    tasks, task_of = partition_tasks([j.label for j in jobs], wf.task_chunk_size)
    n_init = 1 if wf.init_job is not None else 0
    final_idx = len(jobs) - 1 if wf.final_job is not None else -1
    retry_memo: dict[tuple[object, ...], str] = {}
    rows = [
        NewJob(
            idx, j.name, j.label, task_of[idx],
            "final" if idx == final_idx else ("init" if idx < n_init else "job"),
            _payload(j), _dumps_small(j.environment), j.request_memory, j.request_cpus,
            j.max_attempts, j.site, j.queue, j.priority, _dumps_small(j.inputs), _dumps_small(j.outputs),
            _dumps_small(j.tags), _retry_json(j, retry_memo),
        )
        for idx, j in enumerate(jobs)
    ]
    return NewWorkflow(
        name=wf.name, owner=wf.owner, home_site=wf.home_site,
        tasks=[NewTask(label, chunk, n) for label, chunk, n in tasks],
        jobs=rows, edges=list(graph.edges()),
        quanta=clustered.quanta(n_init) if clustered else [],
        quantum_edges=list(clustered.graph.edges()) if clustered else [],
    )


def build_campaign(campaign: Campaign, catalog: SiteCatalog, *, max_jobs: int = DEFAULT_MAX_WORKFLOW_JOBS,
                   placement: Mode = "refuse") -> NewCampaign:
    """All workflows validated before any is stored; an error of a campaign's workflow names it."""
    return build_workflows(campaign.name, campaign.owner, campaign.workflows, catalog, max_jobs=max_jobs,
                           placement=placement)


def build_workflows(name: str, owner: str, workflows: Sequence[Workflow | TableWorkflow], catalog: SiteCatalog, *,
                    max_jobs: int = DEFAULT_MAX_WORKFLOW_JOBS, placement: Mode = "refuse") -> NewCampaign:
    """:func:`build_campaign` of workflows that may be tables (no pydantic Job per node)."""
    built = []
    for w in workflows:
        try:
            built.append(build_workflow(w, catalog, max_jobs=max_jobs, placement=placement))
        except PanrayError as exc:
            if not str(exc).startswith("workflow "):
                exc.args = (f"workflow {show(w.name)}: {exc}",)  # the same error class, its message prefixed
            raise
    return NewCampaign(name, owner, built)
