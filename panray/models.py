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
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from panray.exceptions import WorkflowValidationError

DEFAULT_RETRY_UNLESS_EXIT = (1, 2)


class Job(BaseModel):
    """One job: a quantum (or a cluster of quanta) with its command and resource request."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    label: str = Field(min_length=1, description="pipeline-task label; one task per label")
    command: list[str] | str | None = Field(
        default=None, description="argv list, or a shell line run as bash -c (encoded); None = no-op"
    )
    function: str | None = Field(
        default=None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$",
        description="importable 'module:function' run as a Ray task instead of a command (or, in Python, the "
                    "function itself)")
    args: list[Any] = Field(default_factory=list, description="JSON-able positional arguments of the function")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="JSON-able keyword arguments of the function")
    parents: list[str] = Field(default_factory=list)
    environment: dict[str, str] = Field(default_factory=dict)
    request_memory: int = Field(default=2048, gt=0, description="MB")
    request_cpus: int = Field(default=1, gt=0)
    memory_multiplier: float | None = Field(default=None, ge=1.0)
    request_memory_max: int | None = Field(default=None, gt=0, description="MB")
    max_attempts: int = Field(default=3, ge=1)
    retry_unless_exit: list[int] = Field(default_factory=lambda: list(DEFAULT_RETRY_UNLESS_EXIT))
    site: str | None = Field(default=None, description="pin to this site")
    queue: str | None = None
    priority: int = 0
    inputs: list[str] = Field(default_factory=list, description="input dataset names")
    outputs: list[str] = Field(default_factory=list, description="output dataset names")
    tags: dict[str, Any] = Field(default_factory=dict, description="e.g. the data ID")

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
            except (TypeError, ValueError) as exc:
                raise ValueError(f"job {self.name!r}: function arguments are not JSON: {exc}") from None
        return self

    @field_validator("command")
    @classmethod
    def _command_not_empty(cls, v: list[str] | str | None) -> list[str] | str | None:
        if isinstance(v, list) and not v:
            raise ValueError("command argv is empty (use null for a no-op job)")
        return v


class ClusterRule(BaseModel):
    """Put quanta of ``labels`` sharing ``dimensions`` (tags keys) in one job, at most ``max_size`` each.

    Without dimensions: ``max_size`` quanta of the labels per job. See :mod:`panray.dag.clustering`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, description="the cluster jobs' label")
    labels: list[str] = Field(min_length=1)
    dimensions: list[str] = Field(default_factory=list)
    max_size: int | None = Field(default=None, gt=0)


class Workflow(BaseModel):
    """A DAG of jobs (an iDDS request), with an optional init job and final job."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    owner: str = Field(default_factory=getpass.getuser)
    home_site: str = "USDF"
    jobs: list[Job]
    init_job: Job | None = Field(default=None, description="runs before every root job")
    final_job: Job | None = Field(default=None, description="runs after all jobs, even failed ones")
    task_chunk_size: int = Field(default=10_000, gt=0)
    clustering: list[ClusterRule] = Field(default_factory=list, description="first matching rule wins")


class Campaign(BaseModel):
    """A set of workflows submitted and followed together."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    owner: str = Field(default_factory=getpass.getuser)
    workflows: list[Workflow] = Field(min_length=1)


def _one_line(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{source}: {where}: {first['msg']}{more}"


def load_campaign_file(path: str | Path) -> Campaign:
    """Load a campaign or a single workflow from YAML or JSON; errors name the file and field."""
    path = Path(path)
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise WorkflowValidationError(f"{path}: cannot read: {exc}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise WorkflowValidationError(f"{path}: expected a mapping with 'workflows' or 'jobs'")
    try:
        if "workflows" in data:
            return Campaign.model_validate(data)
        wf = Workflow.model_validate(data)
    except ValidationError as err:
        raise WorkflowValidationError(_one_line(err, str(path))) from None
    return Campaign(name=wf.name, owner=wf.owner, workflows=[wf])
