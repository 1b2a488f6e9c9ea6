"""Sites on a real multi-node Ray cluster (``ray.cluster_utils.Cluster`` on loopback).

The head node carries no site (the control plane); USDF and FrDF join at once, UKDF joins late,
as a facility that comes up after panray started. Tests run in file order on one cluster.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from panray import Job, Panray, Settings, Workflow
from panray.cli import main as cli_main
from panray.dag import drp
from panray.runtime import ensure_actors
from panray.sites import Decision, JobRequest, SiteLoad, SiteStatus, candidates, format_explanation
from panray.sites.topology import SITE_PREFIX, SITE_UNITS, loopback_env, site_nodes

from helpers import wait_for

FAST = {"heartbeat_interval": 0.5, "heartbeat_timeout": 30.0, "sent_timeout": 30.0, "flush_interval": 0.05}
SHARES = {"USDF": 0.35, "FrDF": 0.40, "UKDF": 0.25}


def _lose_node(cluster: Any, node: Any) -> None:
    """A node lost as a machine is lost: with every process it ran. Removing a node of a
    ``cluster_utils.Cluster`` kills only its raylet and helpers; its workers (pilots) would live on
    until they notice, and a payload of theirs could still end and write its marker."""
    import psutil

    [raylet] = node.all_processes["raylet"]
    processes = psutil.Process(raylet.process.pid).children(recursive=True)
    cluster.remove_node(node)
    for p in processes:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def _add_site(cluster: Any, site: str) -> Any:
    node = cluster.add_node(num_cpus=1, resources={SITE_PREFIX + site: SITE_UNITS}, node_ip_address="127.0.0.1",
                            object_store_memory=100 * 1024 * 1024)
    cluster.wait_for_nodes()
    return node


@pytest.fixture(scope="module")
def sites_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    import ray
    from ray.cluster_utils import Cluster

    loopback_env()
    if ray.is_initialized():  # the session's embedded cluster: this module needs its own one
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False,
        "object_store_memory": 100 * 1024 * 1024})
    nodes = {site: _add_site(cluster, site) for site in ("USDF", "FrDF")}
    home = tmp_path_factory.mktemp("sites-cluster")
    settings = Settings(home=home, ray_address=cluster.address, **FAST)
    (home / "config.yaml").write_text(json.dumps(settings.model_dump(mode="json", exclude_none=True)))
    pr = Panray(settings)
    try:
        yield {"cluster": cluster, "nodes": nodes, "pr": pr, "settings": settings}
    finally:
        pr.close()
        ray.shutdown()
        cluster.shutdown()


def _cli(settings: Settings, *argv: str, capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert cli_main(["--config", str(settings.home / "config.yaml"), *argv]) == 0
    return capsys.readouterr().out


def _site_list(settings: Settings, capsys: pytest.CaptureFixture[str]) -> dict[str, dict[str, Any]]:
    return {r["site"]: r for r in json.loads(_cli(settings, "site", "list", "--json", capsys=capsys))}


def _noop_workflow(name: str, n: int, **pins: int) -> Workflow:
    jobs = [Job(name=f"j{k}", label="isr") for k in range(n)]
    for site, count in pins.items():
        jobs += [Job(name=f"{site}-{k}", label="merge", site=site) for k in range(count)]
    return Workflow(name=name, jobs=jobs)


def _marker_workflow(name: str, n: int, marker_dir: Path, seconds: float) -> Workflow:
    """Each job sleeps, then appends its name to its own marker file: a second line = ran twice."""
    script = 'sleep "$1"; printf "%s\\n" "$2" >> "$3/$2"'
    return Workflow(name=name, jobs=[
        Job(name=f"m{k}", label="isr", command=["bash", "-c", script, "run", str(seconds), f"m{k}", str(marker_dir)])
        for k in range(n)
    ])


def _assert_each_ran_once(pr: Panray, wf_id: int, marker_dir: Path) -> None:
    jobs = pr.jobs(wf_id)
    assert all(j.status == "finished" for j in jobs), Counter(j.status for j in jobs)
    lines = {p.name: p.read_text().splitlines() for p in marker_dir.iterdir()}
    assert sorted(lines) == sorted(j.name for j in jobs)
    assert all(v == [k] for k, v in lines.items()), {k: v for k, v in lines.items() if v != [k]}


def test_sites_are_discovered_from_node_resources_and_a_late_node_gets_pilots(
        sites_cluster: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    import ray

    pr, settings = sites_cluster["pr"], sites_cluster["settings"]
    rt = pr.runtime
    assert sorted(site_nodes()) == ["FrDF", "USDF"]
    assert rt.missing == ["UKDF"]
    listed = _site_list(settings, capsys)
    assert (listed["UKDF"]["nodes"], listed["UKDF"]["pilots"]) == (0, 0)
    assert (listed["FrDF"]["nodes"], listed["FrDF"]["pilots"]) == (1, 2)

    node = sites_cluster["nodes"]["UKDF"] = _add_site(sites_cluster["cluster"], "UKDF")
    assert ensure_actors(rt) == []
    where = ray.get([p.ready.remote() for p in rt.pilots["UKDF"]])
    assert set(where) == {node.node_id}, "UKDF's pilots run on the node that joined"
    assert _site_list(settings, capsys)["UKDF"]["pilots"] == 2


def test_drp_workflow_without_pins_splits_by_shares(sites_cluster: dict[str, Any]) -> None:
    pr: Panray = sites_cluster["pr"]
    shape = drp(3000)
    wf = Workflow(name="drp-3000", jobs=[
        Job(name=n, label=label, parents=parents) for n, label, parents in zip(shape.names, shape.labels, shape.parents)
    ])
    [wf_id] = pr.submit(wf)
    assert pr.wait([wf_id], timeout=120) == {wf_id: "Finished"}
    jobs = pr.jobs(wf_id)
    per_site = Counter(j.site for j in jobs)
    fractions = {s: per_site[s] / len(jobs) for s in SHARES}
    assert all(abs(fractions[s] - SHARES[s]) <= 0.05 for s in SHARES), fractions


def test_locality_beats_shares_and_running_away_from_inputs_records_a_transfer(
        sites_cluster: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    pr: Panray = sites_cluster["pr"]
    n = 40
    jobs = [Job(name=f"p{k}", label="isr", site="UKDF", outputs=[f"calexp{k}"]) for k in range(n)]
    jobs += [Job(name=f"c{k}", label="makeWarp", parents=[f"p{k}"], inputs=[f"calexp{k}"]) for k in range(n)]
    [wf_id] = pr.submit(Workflow(name="locality", jobs=jobs))
    assert pr.wait([wf_id], timeout=60) == {wf_id: "Finished"}
    children = [j for j in pr.jobs(wf_id) if j.name.startswith("c")]
    assert Counter(j.site for j in children) == {"UKDF": n}, "every child follows its input"
    assert all(pr.store.transfers(j.job_id) == [] for j in children)

    decision = json.loads(pr.store.decisions(children[0].job_id)[-1].decision)
    weights = decision["weights"]
    assert decision["site"] == "UKDF" and weights["UKDF"] > max(weights["USDF"], weights["FrDF"])

    pr.runtime  # noqa: B018 - the cluster must run for set-status to apply
    from panray.site_ops import set_site_status

    set_site_status(pr, "UKDF", "brokeroff")
    try:
        [wf2] = pr.submit(Workflow(name="away", jobs=[
            Job(name="p", label="isr", site="UKDF", outputs=["coadd"]),
            Job(name="c", label="detection", parents=["p"], inputs=["coadd"]),
        ]))
        assert pr.wait([wf2], timeout=60) == {wf2: "Finished"}
    finally:
        set_site_status(pr, "UKDF", "online")
    child = next(j for j in pr.jobs(wf2) if j.name == "c")
    assert child.site != "UKDF"
    [t] = pr.store.transfers(child.job_id)
    assert (t.dataset, t.source, t.destination) == ("coadd", "UKDF", child.site)
    out = _cli(sites_cluster["settings"], "job", str(child.job_id), capsys=capsys)
    assert "inputs transferred" in out and "coadd" in out


def test_brokeroff_site_takes_only_pinned_work_and_the_status_survives_a_restart(
        sites_cluster: dict[str, Any]) -> None:
    import ray

    pr: Panray = sites_cluster["pr"]
    from panray.site_ops import apply_stored_statuses, set_site_status

    set_site_status(pr, "FrDF", "brokeroff")
    try:
        [wf_id] = pr.submit(_noop_workflow("brokeroff", 300, FrDF=5))
        assert pr.wait([wf_id], timeout=60) == {wf_id: "Finished"}
        at_frdf = sorted(j.name for j in pr.jobs(wf_id) if j.site == "FrDF")
        assert at_frdf == [f"FrDF-{k}" for k in range(5)]

        brokerage = pr.runtime.brokerage
        ray.get(brokerage.set_status.remote("FrDF", "online"))  # as a freshly started brokerage would be
        apply_stored_statuses(pr.store, pr.runtime)  # what every connecting panray does
        status = {r["site"]: r["status"] for r in ray.get(brokerage.sites.remote())}
        assert status["FrDF"] == SiteStatus.BROKEROFF.value
    finally:
        set_site_status(pr, "FrDF", "online")


def test_explain_prints_what_the_policy_decided(sites_cluster: dict[str, Any],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    pr: Panray = sites_cluster["pr"]
    [wf_id] = pr.submit(Workflow(name="explain", jobs=[
        Job(name="big", label="isr", command=["true"], request_memory=5000),
        Job(name="pinned", label="merge", command=["true"], site="FrDF"),
    ]))
    assert pr.wait([wf_id], timeout=60) == {wf_id: "Finished"}
    catalog = pr.catalog
    loads = [SiteLoad(s.name, share=s.drp_share, memory_min_mb=s.memory_min_mb, memory_max_mb=s.memory_max_mb,
                      max_cores=s.max_cores, live_pilots=s.pilots) for s in catalog]
    for job in pr.jobs(wf_id):
        [row] = pr.store.decisions(job.job_id)
        decision = Decision.from_dict(json.loads(row.decision))
        ok, filtered = candidates(JobRequest(job.request_memory, job.request_cpus, job.site_pin), loads)
        assert decision.filtered == (filtered or None), "filter reasons are the policy's"
        assert sorted(decision.weights or {}) == sorted(ok)
        assert decision.site == job.site
        assert decision.weights[job.site] == max(decision.weights.values()), "the largest weight wins"
        out = _cli(sites_cluster["settings"], "explain", str(job.job_id), capsys=capsys)
        assert format_explanation(decision) in out
    big = next(j for j in pr.jobs(wf_id) if j.name == "big")
    out = _cli(sites_cluster["settings"], "explain", str(big.job_id), capsys=capsys)
    assert "UKDF  memory 5000 MB/core above max 4000" in out


def test_offline_site_gives_its_queue_back_without_losing_or_repeating_a_job(
        sites_cluster: dict[str, Any], tmp_path: Path) -> None:
    import ray

    pr: Panray = sites_cluster["pr"]
    from panray.site_ops import set_site_status

    [wf_id] = pr.submit(_marker_workflow("offline", 120, tmp_path, 0.5))

    def frdf_queued() -> int:
        return next(r["queued"] for r in ray.get(pr.runtime.brokerage.sites.remote()) if r["site"] == "FrDF")

    wait_for(frdf_queued, timeout=30, what="jobs queued at FrDF")
    set_site_status(pr, "FrDF", "offline")
    offline_at = time.time()
    try:
        assert pr.wait([wf_id], timeout=120) == {wf_id: "Finished"}
    finally:
        set_site_status(pr, "FrDF", "online")
    _assert_each_ran_once(pr, wf_id, tmp_path)
    rebrokered = [j for j in pr.jobs(wf_id)
                  if [h.status for h in pr.store.history(j.job_id)].count("activated") > 1]
    assert rebrokered, "some jobs were queued at FrDF when it went offline"
    assert all(("activated", "defined", "site offline") in
               {(h.previous, h.status, h.cause) for h in pr.store.history(j.job_id)} for j in rebrokered)
    assert all(j.site != "FrDF" for j in rebrokered)
    late_at_frdf = [j for j in pr.jobs(wf_id) if j.site == "FrDF" and (j.start_time or 0) > offline_at + 1]
    assert not late_at_frdf


def test_removing_a_sites_node_fails_its_running_jobs_and_they_run_elsewhere(
        sites_cluster: dict[str, Any], tmp_path: Path) -> None:
    pr: Panray = sites_cluster["pr"]
    cluster = sites_cluster["cluster"]
    if "UKDF" not in sites_cluster["nodes"]:  # run alone: the first test has not added it
        sites_cluster["nodes"]["UKDF"] = _add_site(cluster, "UKDF")
        ensure_actors(pr.runtime)
    [wf_id] = pr.submit(_marker_workflow("node-loss", 40, tmp_path, 2.0))

    deadline = time.monotonic() + 30
    while not any(j.site == "UKDF" and j.status == "running" for j in pr.jobs(wf_id)):
        assert time.monotonic() < deadline, "no job started at UKDF"
        time.sleep(0.05)
    removed_at = time.monotonic()
    _lose_node(cluster, sites_cluster["nodes"].pop("UKDF"))
    assert pr.wait([wf_id], timeout=90) == {wf_id: "Finished"}
    assert time.monotonic() - removed_at < FAST["heartbeat_timeout"], "noticed before the heartbeat timeout"
    _assert_each_ran_once(pr, wf_id, tmp_path)
    lost = [a for j in pr.jobs(wf_id) for a in pr.store.attempts(j.job_id) if a.status == "failed"]
    assert lost and all(a.error_class == "system" and a.site == "UKDF" for a in lost)
    assert all(re.fullmatch(r"pilot pilot:UKDF:\d lost", a.diag or "") for a in lost), \
        [a.diag for a in lost]  # by liveness, not a lost control plane or a heartbeat timeout
    finished = {j.job_id: j.site for j in pr.jobs(wf_id)}
    assert all(finished[a.job_id] != "UKDF" for a in lost), "they ran elsewhere"
