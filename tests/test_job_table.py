"""Columnar submission: a job table is validated exactly as strictly as Job models, gives the same
rows, and a refusal is the Job path's own message."""

from __future__ import annotations

import datetime
from typing import Any

import networkx as nx
import pytest

from panray.dag import drp
from panray.exceptions import PanrayError, WorkflowValidationError
from panray.job_table import JobTable, TableWorkflow
from panray.models import Job, Workflow
from panray.sites import load_catalog
from panray.submission import build_workflow

CATALOG = load_catalog()

#: (field, value for the second job): each accepted or refused the same way by both paths.
CASES: list[tuple[str, Any]] = [
    ("request_memory", 0), ("request_memory", -1), ("request_memory", 3_000_000_000), ("request_memory", "12"),
    ("request_memory", 1.5), ("request_memory", None), ("request_memory", 4000), ("request_cpus", 0),
    ("max_attempts", 0), ("max_attempts", 1001), ("max_attempts", 7), ("priority", 2**31), ("priority", -5),
    ("memory_multiplier", 0.5), ("memory_multiplier", float("inf")), ("memory_multiplier", 2.0),
    ("request_memory_max", 0), ("retry_unless_exit", [256]), ("retry_unless_exit", [3, 4]),
    ("name", ""), ("name", "a\x01b"), ("name", "x" * 1001), ("label", "y" * 201), ("label", 5),
    ("command", []), ("command", ["a\x00b"]), ("command", "x" * (128 * 1024 + 1)), ("command", ["panray:sleep", "x"]),
    ("command", ["panray:sleep", "5"]), ("command", "echo hi"), ("command", ["bash", "-c", "true"]), ("command", 7),
    ("environment", {"A=B": "x"}), ("environment", {"": "x"}), ("environment", {"A": "x\x00"}), ("environment", {"A": "1"}),
    ("tags", {"a": b"x"}), ("tags", {"a": float("nan")}), ("tags", {"d": datetime.date(2026, 1, 2), "s": {3, 1}}),
    ("tags", {1: "int key"}), ("tags", "not a mapping"), ("parents", [""]), ("parents", "a"), ("inputs", ["ds:1"]),
    ("site", "UKDF"), ("queue", ""), ("outputs", [None]),
]


def _both(field: str, value: Any) -> tuple[Any, Any]:
    """(model path outcome, table path outcome): the jobs' fields, or the error class and message."""
    rows = [{"name": "a", "label": "isr"}, {"name": "b", "label": "calibrate", "parents": ["a"], field: value}]

    def outcome(make: Any) -> Any:
        try:
            return [tuple(getattr(j, f) for f in Job.model_fields) for j in make()]
        except PanrayError as exc:
            return type(exc), str(exc)

    columns = {k: [r.get(k, Job.model_fields[k].get_default(call_default_factory=True)) for r in rows]
               for k in {k for r in rows for k in r}}
    return (outcome(lambda: Workflow(name="table", jobs=rows).jobs),
            outcome(lambda: JobTable.from_columns(**columns).jobs()))


@pytest.mark.parametrize(("field", "value"), CASES, ids=[f"{f}={str(v)[:20]!r}" for f, v in CASES])
def test_a_column_is_judged_as_the_job_model_judges_it(field: str, value: Any) -> None:
    model, table = _both(field, value)
    assert table == model


def test_the_cases_cover_both_outcomes() -> None:
    refused = [c for c in CASES if isinstance(_both(*c)[0], tuple) and _both(*c)[0][0] is WorkflowValidationError]
    assert 10 < len(refused) < len(CASES), "the cases must hold refusals and acceptances"


def _drp_graph(n: int) -> nx.DiGraph:
    shape = drp(n)
    g = nx.DiGraph()
    for name, label, tags in zip(shape.names, shape.labels, shape.tags):
        g.add_node(name, label=label, tags=tags, command=["true"] if label == "isr" else None)
    for name, parents in zip(shape.names, shape.parents):
        g.add_edges_from((p, name) for p in parents)
    return g


def test_a_networkx_graph_gives_the_rows_its_job_models_give() -> None:
    g = _drp_graph(300)
    extra = {"init_job": Job(name="init", label="pipetaskInit"), "final_job": Job(name="final", label="finalJob"),
             "home_site": "FrDF", "task_chunk_size": 50}
    table = build_workflow(TableWorkflow.of(JobTable.from_graph(g), name="drp", **extra), CATALOG)
    jobs = [Job(name=n, parents=list(g.predecessors(n)), **d) for n, d in g.nodes(data=True)]
    model = build_workflow(Workflow(name="drp", jobs=jobs, **extra), CATALOG)
    assert (table.jobs, table.edges, table.tasks) == (model.jobs, model.edges, model.tasks)
    assert len(table.jobs) == g.number_of_nodes() + 2 and table.jobs[-1].kind == "final"


def test_a_nodes_name_and_parents_attributes_yield_to_the_node_and_its_edges() -> None:
    g = nx.DiGraph()
    g.add_node("a", label="isr", name="ignored", parents=["nowhere"])
    g.add_node("b", label="isr")
    g.add_edge("a", "b")
    from panray.models import workflow_from_networkx

    table = build_workflow(TableWorkflow.of(JobTable.from_graph(g), name="w"), CATALOG)
    model = build_workflow(workflow_from_networkx(g, name="w"), CATALOG)
    assert (table.jobs, table.edges) == (model.jobs, model.edges)
    assert [j.name for j in table.jobs] == ["a", "b"]


def test_a_table_errs_on_the_workflow_as_the_model_path_does() -> None:
    cols = {"name": ["a", "b"], "label": ["isr", "isr"], "parents": [["b"], ["a"]]}
    with pytest.raises(WorkflowValidationError, match="cycle in job graph"):
        build_workflow(TableWorkflow.of(JobTable.from_columns(**cols), name="w"), CATALOG)
    big = {"name": ["a"], "label": ["isr"], "request_memory": [10_000_000]}
    with pytest.raises(PanrayError, match="asks 10000000 MB"):
        build_workflow(TableWorkflow.of(JobTable.from_columns(**big), name="w"), CATALOG)
    with pytest.raises(WorkflowValidationError, match="more than the maximum of 1"):
        build_workflow(TableWorkflow.of(JobTable.from_columns(**cols), name="w"), CATALOG, max_jobs=1)


def test_a_malformed_table_is_refused_in_one_line() -> None:
    with pytest.raises(WorkflowValidationError, match="unknown columns memory"):
        JobTable.from_columns(name=["a"], label=["x"], memory=[1])
    with pytest.raises(WorkflowValidationError, match=r"do not have the 2 rows of 'name': label \(1\)"):
        JobTable.from_columns(name=["a", "b"], label=["x"])
    with pytest.raises(WorkflowValidationError, match="column 'label' is required"):
        JobTable.from_columns(name=["a"])


def test_function_jobs_in_a_table_are_checked_across_fields() -> None:
    with pytest.raises(WorkflowValidationError, match="has both a command and a function"):
        JobTable.from_columns(name=["a"], label=["x"], command=[["true"]], function=["math:hypot"]).jobs()
    [job] = JobTable.from_columns(name=["a"], label=["x"], function=["math:hypot"], args=[[3, 4]]).jobs()
    assert (job.function, job.args) == ("math:hypot", [3, 4])


def test_valid_columns_need_no_job_model(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_models(self: JobTable) -> None:
        raise AssertionError("the table was validated as Job models")

    monkeypatch.setattr(JobTable, "_as_models", no_models)
    table = JobTable.from_columns(name=["a", "b"], label=["isr", "calibrate"], parents=[[], ["a"]],
                                  command=[["bash", "-c", "true"], "echo hi"], environment=[{"A": "1"}, {}],
                                  tags=[{"d": datetime.date(2026, 1, 2)}, {}], request_memory=[1000, "2000"])
    a, b = table.jobs()
    assert (a.tags, b.request_memory, b.parents, a.retry_unless_exit) == ({"d": "2026-01-02"}, 2000, ["a"], [1, 2])
