"""Pydantic models at panray's boundary: what users submit (campaign > workflow > job).

Inside the control plane jobs become compact tuples and arrays; these models are only for
input, validation and files.

Examples:
    >>> wf = Workflow(name="w", jobs=[Job(name="a", label="isr", command=["true"]),
    ...                               Job(name="b", label="calibrate", parents=["a"])])
    >>> [j.name for j in wf.jobs]
    ['a', 'b']
"""

from __future__ import annotations

import getpass
import json
import math
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field, field_validator, model_validator

from panray.cluster_format import CLUSTER_ARGV0
from panray.documents import read_document
from panray.exceptions import WorkflowValidationError, show
from panray.payload import SLEEP
from panray.validation import (
    ARG_MAX, MEMORY_MULTIPLIER_MAX, SLEEP_MAX, BoundaryModel, EnvName, EnvValue, ExitCode, Int32, Label, Name,
    PositiveInt32, jsonable_tags,
)

DEFAULT_RETRY_UNLESS_EXIT = (1, 2)
DEFAULT_MAX_WORKFLOW_JOBS = 1_000_000  #: jobs in one workflow (Settings.max_workflow_jobs)


class Job(BoundaryModel):
    """One job: a quantum (or a cluster of quanta) with its command and resource request.

    Limits are those of :mod:`panray.validation`. ``queue`` and ``priority`` are recorded (bps
    passes them, the monitor shows them) but brokerage does not use them yet.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name
    label: Label = Field(description="pipeline-task label; one task per label")
    command: list[str] | str | None = Field(
        default=None, description="argv list, or a shell line run as bash -c (encoded); None = no-op"
    )
    function: str | None = Field(
        default=None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$",
        description="importable 'module:function' run as a Ray task instead of a command (or, in Python, the "
                    "function itself)")
    args: list[Any] = Field(max_length=10_000, default_factory=list, description="JSON-able positional arguments of the function")
    kwargs: dict[str, Any] = Field(max_length=10_000, default_factory=dict, description="JSON-able keyword arguments of the function")
    parents: list[Name] = Field(default_factory=list)
    environment: dict[EnvName, EnvValue] = Field(default_factory=dict)
    request_memory: PositiveInt32 = Field(default=2048, description="MB")
    request_cpus: PositiveInt32 = 1
    memory_multiplier: float | None = Field(default=None, ge=1.0, le=MEMORY_MULTIPLIER_MAX, allow_inf_nan=False)
    request_memory_max: PositiveInt32 | None = Field(default=None, description="MB")
    max_attempts: int = Field(default=3, ge=1, le=1000)
    retry_unless_exit: list[ExitCode] = Field(default_factory=lambda: list(DEFAULT_RETRY_UNLESS_EXIT))
    site: Label | None = Field(default=None, description="pin to this site")
    queue: Label | None = Field(default=None, description="recorded, not used by brokerage yet")
    priority: Int32 = Field(default=0, description="the workflow's manager brokers higher ones first")
    inputs: list[Name] = Field(default_factory=list, description="input dataset names")
    outputs: list[Name] = Field(default_factory=list, description="output dataset names")
    tags: dict[str, Any] = Field(default_factory=dict, description="e.g. the data ID; plain JSON")

    @field_validator("function", mode="before")
    @classmethod
    def _function_by_name(cls, v: Any) -> Any:
        """A module-level callable becomes its importable ``module:qualname``."""
        if v is None or isinstance(v, str):
            return v
        if not callable(v):
            raise ValueError(f"function must be 'module:function' or a callable, not {type(v).__name__}")
        module, qualname = getattr(v, "__module__", None), getattr(v, "__qualname__", "")
        if not module or module == "__main__" or "<" in qualname:
            raise ValueError(f"function {qualname or v!r} is not importable by name "
                             f"(define it at module level in an importable module)")
        return f"{module}:{qualname}"

    @model_validator(mode="after")
    def _function_or_command(self) -> Job:
        if self.function is not None and self.command is not None:
            raise ValueError(f"job {self.name!r} has both a command and a function; give one")
        if self.function is None and (self.args or self.kwargs):
            raise ValueError(f"job {self.name!r} has args/kwargs but no function")
        if self.function is not None:
            try:
                json.dumps([self.args, self.kwargs], allow_nan=False)
            except (TypeError, ValueError, RecursionError) as exc:
                raise ValueError(f"job {self.name!r}: function arguments are not JSON: {exc}") from None
        return self

    @field_validator("command")
    @classmethod
    def _check_command(cls, v: list[str] | str | None) -> list[str] | str | None:
        if v is None:
            return v
        if isinstance(v, str):
            _check_arg(v, 0)
            return v
        if not v:
            raise ValueError("command argv is empty (use null for a no-op job)")
        if v[0] == SLEEP:
            return [SLEEP, str(_sleep_seconds(v))]
        if v[0] == CLUSTER_ARGV0:  # built by panray: its spec travels in a file, not as an argument
            return v
        for i, arg in enumerate(v):
            _check_arg(arg, i)
        return v

    @field_validator("tags", mode="before")
    @classmethod
    def _check_tags(cls, v: Any) -> Any:
        return jsonable_tags(v) if isinstance(v, dict) and v else v


def _check_arg(arg: str, i: int) -> None:
    if "\x00" in arg:
        raise ValueError(f"command argument {i} contains a NUL character")
    if len(arg) > ARG_MAX:
        raise ValueError(f"command argument {i} has {len(arg):,} characters, more than {ARG_MAX:,}")


def _sleep_seconds(argv: list[str]) -> float:
    """``[panray:sleep, S]``: S seconds, parsed here so that a pilot never meets a bad one."""
    if len(argv) != 2:
        raise ValueError(f"{SLEEP} takes one argument, SECONDS (got {len(argv) - 1})")
    try:
        seconds = float(argv[1])
    except ValueError:
        raise ValueError(f"{SLEEP}: {argv[1][:40]!r} is not a number of seconds") from None
    if not (math.isfinite(seconds) and 0.0 <= seconds <= SLEEP_MAX):
        raise ValueError(f"{SLEEP}: {seconds} seconds is outside 0 .. {SLEEP_MAX:g}")
    return seconds


class ClusterRule(BoundaryModel):
    """Put quanta of ``labels`` sharing ``dimensions`` (tags keys) in one job, at most ``max_size`` each.

    Without dimensions: ``max_size`` quanta of the labels per job. See :mod:`panray.dag.clustering`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Label = Field(description="the cluster jobs' label")
    labels: list[Label] = Field(min_length=1)
    dimensions: list[Label] = Field(default_factory=list)
    max_size: PositiveInt32 | None = None


class Workflow(BoundaryModel):
    """A DAG of jobs (an iDDS request), with an optional init job and final job (neither has parents)."""

    model_config = ConfigDict(extra="forbid")

    name: Name
    owner: Label = Field(default_factory=getpass.getuser)
    home_site: Label = "USDF"
    jobs: list[Job]
    init_job: Job | None = Field(default=None, description="runs before every root job")
    final_job: Job | None = Field(default=None, description="runs after all jobs, even failed ones")
    task_chunk_size: PositiveInt32 = 10_000
    clustering: list[ClusterRule] = Field(default_factory=list, description="first matching rule wins")

    @model_validator(mode="after")
    def _no_parents_on_init_or_final(self) -> Workflow:
        for kind, job in (("init_job", self.init_job), ("final_job", self.final_job)):
            if job is not None and job.parents:
                raise ValueError(f"{kind} {show(job.name)} has parents; it runs "
                                 + ("before every root job" if kind == "init_job" else "after every job")
                                 + " by itself, so give it none")
        return self

    @classmethod
    def from_networkx(cls, graph: Any, *, name: str | None = None, **fields: Any) -> Workflow:
        """See :func:`workflow_from_networkx`."""
        return workflow_from_networkx(graph, name=name, **fields)

    def to_networkx(self) -> Any:
        """See :func:`workflow_to_networkx`."""
        return workflow_to_networkx(self)


def workflow_from_networkx(graph: Any, *, name: str | None = None, **fields: Any) -> Workflow:
    """A workflow from a networkx DiGraph: each node a job named after it, its attributes job
    fields (``label`` at least), each edge parent -> child; ``fields`` (and the graph's ``name``
    attribute) the workflow's own. bps hands panray such graphs; Ray/networkx users hold DAGs in one.

    Examples:
        >>> import networkx as nx
        >>> g = nx.DiGraph(name="mini")
        >>> g.add_node("isr:0", label="isr", command=["true"]); g.add_node("calib", label="calib")
        >>> g.add_edge("isr:0", "calib")
        >>> [(j.name, j.parents) for j in workflow_from_networkx(g).jobs]
        [('isr:0', []), ('calib', ['isr:0'])]
    """
    jobs = [Job(**{**attrs, "name": str(node), "parents": [str(p) for p in graph.predecessors(node)]})
            for node, attrs in graph.nodes(data=True)]
    return Workflow(name=name or graph.graph.get("name") or "workflow", jobs=jobs, **fields)


def workflow_to_networkx(workflow: Workflow) -> Any:
    """The workflow's jobs as a networkx DiGraph (node attributes: the job fields set), the inverse
    of :func:`workflow_from_networkx`; the init and final jobs are left out (they have no edges)."""
    import networkx as nx

    graph = nx.DiGraph(name=workflow.name)
    for job in workflow.jobs:
        graph.add_node(job.name, **job.model_dump(exclude={"name", "parents"}, exclude_unset=True))
    graph.add_edges_from((p, job.name) for job in workflow.jobs for p in job.parents)
    return graph


class Campaign(BoundaryModel):
    """A set of workflows submitted and followed together."""

    model_config = ConfigDict(extra="forbid")

    name: Name
    owner: Label = Field(default_factory=getpass.getuser)
    workflows: list[Workflow] = Field(min_length=1)


def load_campaign_file(path: str | Path, max_jobs: int = DEFAULT_MAX_WORKFLOW_JOBS) -> Campaign:
    """Load a campaign or a single workflow from YAML or JSON; errors name the file, workflow and field.

    The file is read as :func:`panray.documents.read_document` allows (a regular file, bounded
    size, nesting and YAML alias expansion); a workflow of more than ``max_jobs`` jobs is
    refused before any job is validated.
    """
    source = str(path)
    data = read_document(path, WorkflowValidationError)
    if not isinstance(data, dict):
        raise WorkflowValidationError(f"{source}: expected a mapping with 'workflows' or 'jobs'")
    for wf in data.get("workflows", []) if isinstance(data.get("workflows"), list) else [data]:
        jobs = wf.get("jobs") if isinstance(wf, dict) else None
        if isinstance(jobs, list) and len(jobs) > max_jobs:
            raise WorkflowValidationError(
                f"{source}: workflow {show(str(wf.get('name')))} has {len(jobs):,} jobs, more than the "
                f"maximum of {max_jobs:,} (setting max_workflow_jobs)"
            )
    if "workflows" in data:
        return Campaign.model_validate(data, source=source)
    wf = Workflow.model_validate(data, source=source)
    return Campaign(name=wf.name, owner=wf.owner, workflows=[wf])
