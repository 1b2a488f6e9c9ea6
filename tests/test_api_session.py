"""The Python API's session conveniences: settings from the environment, exported records,
networkx graphs as workflows, and a future/asyncio way to wait."""

from __future__ import annotations

import asyncio
from pathlib import Path

import networkx as nx
import pytest

import panray
from panray import Job, Panray, Settings, Workflow
from panray.exceptions import NotFoundError, PanrayError


def test_settings_and_panray_read_the_same_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "config.yaml").write_text("release_batch: 77\n")
    monkeypatch.setenv("PANRAY_HOME", str(tmp_path / "from-env"))
    monkeypatch.setenv("PANRAY_CONFIG", str(tmp_path / "config.yaml"))
    assert Settings().home == Settings.load().home == tmp_path / "from-env"
    assert Settings().release_batch == 77
    assert Settings(home=tmp_path / "given").home == tmp_path / "given"          # a given key wins
    with Panray(Settings()) as pr:
        assert pr.settings.home == tmp_path / "from-env" and pr.status() == []
    assert (tmp_path / "from-env").is_dir()


def test_records_are_exported_and_typed() -> None:
    from panray.store.base import JobRow

    assert panray.JobRow is JobRow and "JobRow" in panray.__all__ and "WorkflowHandle" in panray.__all__
    assert (Path(panray.__file__).parent / "py.typed").is_file()
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        panray.Nope  # noqa: B018


def test_networkx_graph_round_trip() -> None:
    g = nx.DiGraph(name="from-nx")
    g.add_node("isr:0", label="isr", command=["true"], request_memory=1000)
    g.add_node("isr:1", label="isr", command=["true"])
    g.add_node("coadd", label="coadd", command=["true"])
    g.add_edges_from([("isr:0", "coadd"), ("isr:1", "coadd")])
    wf = Workflow.from_networkx(g, home_site="FrDF")
    assert (wf.name, wf.home_site) == ("from-nx", "FrDF")
    jobs = {j.name: j for j in wf.jobs}
    assert sorted(jobs["coadd"].parents) == ["isr:0", "isr:1"] and jobs["isr:0"].request_memory == 1000
    back = wf.to_networkx()
    assert set(back.edges) == set(g.edges) and back.nodes["isr:0"]["request_memory"] == 1000
    with pytest.raises(PanrayError, match="label"):
        Workflow.from_networkx(nx.DiGraph([("a", "b")]))                       # a job needs its label


def test_submit_a_graph_and_wait_on_a_handle(cluster: Panray) -> None:
    g = nx.DiGraph(name="graph-run")
    g.add_node("a", label="isr", command=["true"])
    g.add_node("b", label="calib", command=["true"])
    g.add_edge("a", "b")
    [wf_id] = cluster.submit(g)
    handle = cluster.handle(wf_id)
    assert handle.result(timeout=60) == "Finished" and handle.done()
    rows = cluster.jobs(wf_id)
    assert [j.name for j in rows] == ["a", "b"] and isinstance(rows[0], panray.JobRow)
    assert cluster.errors(wf_id) == [] and cluster.explain(rows[0].job_id)[0].site in {"USDF", "FrDF", "UKDF"}

    async def run() -> str:
        return await cluster.start(Workflow(name="awaited", jobs=[Job(name="x", label="isr", command=["true"])]))

    assert asyncio.run(run()) == "Finished"
    with pytest.raises(NotFoundError, match="no workflow 999999 in this store"):
        cluster.handle(999999)
    with pytest.raises(PanrayError, match="not a dict"):
        cluster.submit({"name": "x"})
