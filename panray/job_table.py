"""Jobs given as columns (a table), validated a column at a time by the :class:`~panray.models.Job` rules.

A workflow that already is a table (bps's GenericWorkflow, a networkx graph, arrays of a
pipeline's quanta) need not become one pydantic ``Job`` per node to be checked: each column goes
through one pydantic validator built from the ``Job`` field's own type, constraints and field
validators, and the jobs become :class:`TableJob` tuples. Validation stays exactly as strict: any
column that fails, and any table the columns cannot judge alone (function jobs, whose checks span
fields), is validated again as ``Job`` models, so a refusal is the ``Job`` path's own one-line
error, word for word.

Examples:
    >>> t = JobTable.from_columns(name=["a", "b"], label=["isr", "calibrate"], parents=[[], ["a"]])
    >>> [(j.name, j.parents, j.request_memory) for j in t.jobs()]
    [('a', [], 2048), ('b', ['a'], 2048)]
    >>> JobTable.from_columns(name=["a"], label=["isr"], request_memory=[0]).jobs()
    Traceback (most recent call last):
    ...
    panray.exceptions.WorkflowValidationError: Workflow: job 'a' (jobs[0]): request_memory: Input should be greater than 0 (got 0)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any, NamedTuple

from pydantic import AfterValidator, BeforeValidator, TypeAdapter, ValidationError

from panray.exceptions import WorkflowValidationError
from panray.models import Job, Workflow

FIELDS = tuple(Job.model_fields)
_MISSING = object()  #: a node of a graph without this attribute
#: Columns whose checks span several fields (the function-or-command rule): a table that uses
#: them is validated as Job models.
_ROW_RULES = ("function", "args", "kwargs")


class TableJob(NamedTuple):
    """A validated job of a table: the fields of :class:`~panray.models.Job`, as a plain tuple."""

    name: str
    label: str
    command: list[str] | str | None
    function: str | None
    args: list[Any]
    kwargs: dict[str, Any]
    parents: list[str]
    environment: dict[str, str]
    request_memory: int
    request_cpus: int
    memory_multiplier: float | None
    request_memory_max: int | None
    max_attempts: int
    retry_unless_exit: list[int]
    site: str | None
    queue: str | None
    priority: int
    inputs: list[str]
    outputs: list[str]
    tags: dict[str, Any]

    def model_copy(self, *, update: Mapping[str, Any]) -> TableJob:
        """As ``Job.model_copy``: placement clamps requests this way."""
        return self._replace(**update)


assert TableJob._fields == FIELDS, "TableJob must list Job's fields in Job's order"


@lru_cache(maxsize=None)
def _column_adapter(field: str) -> TypeAdapter[list[Any]]:
    """A validator of a whole column: the Job field's type and constraints, then its field validators."""
    info = Job.model_fields[field]
    checks: list[Any] = []
    for dec in Job.__pydantic_decorators__.field_validators.values():
        if field in dec.info.fields:
            fn = getattr(Job, dec.cls_var_name)  # the classmethod, bound to Job
            checks.append(BeforeValidator(fn) if dec.info.mode == "before" else AfterValidator(fn))
    before = [c for c in checks if isinstance(c, BeforeValidator)]
    after = [c for c in checks if isinstance(c, AfterValidator)]
    item = Annotated[info.annotation, info, *after, *before]  # type: ignore[name-defined]
    return TypeAdapter(list[item], config=Job.model_config)  # type: ignore[valid-type]


def _default(field: str) -> Any:
    info = Job.model_fields[field]
    return info.default_factory() if info.default_factory is not None else info.default  # type: ignore[call-arg]


@dataclass(frozen=True, slots=True)
class JobTable:
    """Columns of job fields, one value per job; a field without a column takes its default."""

    columns: dict[str, list[Any]]
    n: int

    @classmethod
    def from_columns(cls, **columns: Sequence[Any]) -> JobTable:
        """Columns named after :class:`~panray.models.Job` fields; ``name`` and ``label`` are required."""
        unknown = sorted(set(columns) - set(FIELDS))
        if unknown:
            raise WorkflowValidationError(f"job table: unknown columns {', '.join(unknown)}; "
                                          f"columns are Job fields: {', '.join(FIELDS)}")
        for required in ("name", "label"):
            if required not in columns:
                raise WorkflowValidationError(f"job table: column {required!r} is required")
        lengths = {k: len(v) for k, v in columns.items()}
        n = lengths["name"]
        uneven = {k: m for k, m in lengths.items() if m != n}
        if uneven:
            raise WorkflowValidationError(f"job table: {len(uneven)} columns do not have the {n:,} rows of 'name': "
                                          + ", ".join(f"{k} ({m:,})" for k, m in sorted(uneven.items())))
        return cls({k: list(v) for k, v in columns.items()}, n)

    @classmethod
    def from_graph(cls, graph: Any,
                   fields: Callable[[Any, Mapping[str, Any]], Mapping[str, Any]] | None = None) -> JobTable:
        """A networkx ``DiGraph`` whose nodes are job names (``str`` of each, as
        :func:`~panray.models.workflow_from_networkx` names them): each node's attributes are its
        fields (or ``fields(node, data)`` returns them); its predecessors are its parents."""
        cols: dict[str, list[Any]] = {"name": [], "parents": []}
        for k, (node, data) in enumerate(graph.nodes(data=True)):
            row = fields(node, data) if fields is not None else data
            cols["name"].append(str(node))
            cols["parents"].append([str(p) for p in graph.predecessors(node)])
            for key, value in row.items():
                if key in ("name", "parents"):  # the node and its edges win, as in workflow_from_networkx
                    continue
                col = cols.get(key)
                if col is None:
                    col = cols[key] = [_MISSING] * k
                col.append(value)
            for key, col in cols.items():
                if len(col) == k:
                    col.append(_MISSING)
        for key, col in cols.items():
            if key in Job.model_fields and any(v is _MISSING for v in col):
                d = _default(key)
                cols[key] = [d if v is _MISSING else v for v in col]
        return cls.from_columns(**cols)

    def rows(self) -> Iterable[dict[str, Any]]:
        """Each job as the mapping a ``Job`` would be built from (for the model path)."""
        names = list(self.columns)
        for values in zip(*(self.columns[k] for k in names)):
            yield dict(zip(names, values))

    def jobs(self) -> list[TableJob]:
        """The validated jobs; raises the ``Job`` path's WorkflowValidationError on any bad value."""
        if any(k in self.columns for k in _ROW_RULES):
            return self._as_models()
        checked: dict[str, list[Any]] = {}
        try:
            for field, values in self.columns.items():
                checked[field] = _column_adapter(field).validate_python(values)
        except (ValidationError, ValueError, TypeError):
            return self._as_models()  # raises the error as the Job model words it
        # A field without a column holds one default object for every job (read-only, as the rows
        # are): 200k jobs need not carry 200k empty lists. Parents, which submission extends, excepted.
        cols = [checked[f] if f in checked else
                ([[] for _ in range(self.n)] if f == "parents" else [_default(f)] * self.n) for f in FIELDS]
        return list(map(TableJob._make, zip(*cols)))

    def _as_models(self) -> list[TableJob]:
        """The model path: one Job per row, in a Workflow, so errors name the job as it does."""
        wf = Workflow(name="table", jobs=list(self.rows()))
        return [TableJob(*(getattr(j, f) for f in FIELDS)) for j in wf.jobs]


@dataclass(frozen=True, slots=True)
class TableWorkflow:
    """A workflow whose jobs are a :class:`JobTable`; ``header`` is a jobless Workflow holding the rest.

    Examples:
        >>> wf = TableWorkflow.of(JobTable.from_columns(name=["a"], label=["isr"]), name="w", home_site="UKDF")
        >>> wf.header.home_site, wf.table.n
        ('UKDF', 1)
    """

    header: Workflow
    table: JobTable

    @classmethod
    def of(cls, table: JobTable, **fields: Any) -> TableWorkflow:
        """``fields`` are Workflow's other fields (name, owner, home_site, init_job, final_job, ...)."""
        return cls(Workflow(jobs=[], **fields), table)

    @property
    def name(self) -> str:
        return self.header.name

    def owned_by(self, owner: str) -> TableWorkflow:
        """The same workflow with another owner (the service sets the submitter's)."""
        return TableWorkflow(self.header.model_copy(update={"owner": owner}), self.table)

    def as_workflow(self) -> Workflow:
        """The same workflow as a Workflow of Job models (what clustering works on)."""
        return Workflow(**{k: getattr(self.header, k) for k in Workflow.model_fields if k != "jobs"},
                        jobs=list(self.table.rows()))
