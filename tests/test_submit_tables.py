"""Workflows that already are tables go to the store without a pydantic Job per node: a networkx
graph through the Python API is validated a column at a time, stored as its Job models would be."""

from __future__ import annotations

import networkx as nx
import pytest

from panray import Campaign, Panray, Workflow
from panray.exceptions import WorkflowValidationError

_STORED = ("name", "label", "kind", "payload", "environment", "request_memory", "request_cpus", "max_attempts",
           "site_pin", "priority", "inputs", "outputs", "tags", "retry")


def _graph(name: str) -> nx.DiGraph:
    g = nx.DiGraph(name=name)
    g.add_node("isr:0", label="isr", command=["true"], request_memory=1000, tags={"visit": 0})
    g.add_node("isr:1", label="isr", command="echo 'a b'", environment={"A": "1"})
    g.add_node(7, label="coadd", command=["true"], max_attempts=2)  # a node that is no str is named by str()
    g.add_edges_from([("isr:0", 7), ("isr:1", 7)])
    return g


def _stored(pr: Panray, wf_id: int) -> list[tuple[object, ...]]:
    return [tuple(getattr(j, f) for f in _STORED) for j in pr.jobs(wf_id)]


def test_a_graph_is_stored_as_its_job_models_are(cluster: Panray, monkeypatch: pytest.MonkeyPatch) -> None:
    wf = Workflow.from_networkx(_graph("as-models"))
    [by_models] = cluster.submit_campaign(Campaign(name=wf.name, workflows=[wf]))
    with monkeypatch.context() as m:  # the table path builds no Workflow of Job models
        m.setattr(Workflow, "from_networkx", _refuse)
        [by_table] = cluster.submit(_graph("as-table"))
    assert _stored(cluster, by_table) == _stored(cluster, by_models)
    store = cluster.service.store
    assert sorted(store.load_workflow(by_table).edges) == sorted(store.load_workflow(by_models).edges) != []
    assert cluster.wait([by_table, by_models], timeout=120) == {by_table: "Finished", by_models: "Finished"}


def test_a_bad_graph_is_refused_naming_the_job_and_stores_nothing(cluster: Panray) -> None:
    before = [w.workflow_id for w in cluster.status()]
    g = _graph("bad-table")
    g.nodes["isr:1"]["request_memory"] = 0
    with pytest.raises(WorkflowValidationError, match=r"job 'isr:1' \(jobs\[1\]\): request_memory: Input should be "
                                                      r"greater than 0 \(got 0\)"):
        cluster.submit(g)
    g = _graph("cyclic-table")
    g.add_edge(7, "isr:0")
    with pytest.raises(WorkflowValidationError, match="cycle in job graph"):
        cluster.submit(g)
    assert [w.workflow_id for w in cluster.status()] == before


def _refuse(*args: object, **kwargs: object) -> Workflow:
    raise AssertionError("the graph went through Job models")
