"""A campaign's workflows on a bounded pool of manager actors, on the session's cluster.

More workflows than the pool has actors run at the same time in that many manager processes;
a manager actor killed mid-run is restarted by Ray and every workflow it hosted finishes from the
stored state, with no job lost and none run again after it finished.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

from conftest import FAST
from faults import Fault, actor_pid, audit, kill9, marker_workflow, wait_for
from panray import Panray, Settings
from panray.actors.manager_pool import ManagerHandle, find, host_of, start
from panray.actors.names import NAMESPACE, manager_name, store_digest
from panray.actors.workflow_manager import _batches

POOL = 2
WORKFLOWS = 5


@pytest.fixture
def campaign_pr(cluster: Panray, panray_home: Path, tmp_path: Path) -> Iterator[Panray]:
    session = Panray(Settings(home=panray_home, db_url=f"sqlite:///{tmp_path}/campaign.db", flush_interval=0.05,
                              activated_timeout=3.0, manager_pool=POOL, **FAST))
    yield session
    session.close()


def _manager_actors(pr: Panray) -> list[str]:
    """The names of the live manager actors of this session's store."""
    prefix = f"workflow-manager:{store_digest(pr.settings.resolved_db_url)}:"
    return sorted(e["name"] for e in ray.util.list_named_actors(all_namespaces=True)
                  if e["namespace"] == NAMESPACE and e["name"].startswith(prefix))


def _running_workflows(pr: Panray, wf_ids: list[int]) -> set[int]:
    return {w for w in wf_ids if pr.jobs(w, status=["running"])}


@pytest.mark.slow
def test_workflows_beyond_the_pool_run_at_once_and_a_killed_manager_s_all_finish(campaign_pr: Panray,
                                                                                  tmp_path: Path) -> None:
    pr = campaign_pr
    marks = {k: tmp_path / f"marks{k}" for k in range(WORKFLOWS)}
    wf_ids = [pr.submit(marker_workflow(f"pool-{k}", 60, marks[k], 0.3, width=10))[0] for k in range(WORKFLOWS)]
    seen = wait_for(lambda: len(r := _running_workflows(pr, wf_ids)) >= POOL + 1 and r,
                    what=f"more than {POOL} workflows running at once")
    assert len(seen) > POOL

    names = _manager_actors(pr)
    assert len(names) == POOL, f"{WORKFLOWS} workflows on a pool of {POOL}: {names}"
    pids = {n: actor_pid(n) for n in names}
    assert len(set(pids.values())) == POOL, "one process per manager actor"
    hosts = {w: host_of(manager_name(pr.settings.resolved_db_url, w)) for w in wf_ids}
    assert set(hosts.values()) == set(names), hosts
    handle = find(pr.settings.resolved_db_url, wf_ids[0])
    assert isinstance(handle, ManagerHandle) and handle.host == hosts[wf_ids[0]]
    assert ray.get(handle.progress.remote())["workflow_id"] == wf_ids[0], "the handle speaks for its workflow"

    victim = hosts[wf_ids[0]]
    orphaned = [w for w in wf_ids if hosts[w] == victim]
    wait_for(lambda: all(pr.jobs(w, status=["finished"]) for w in orphaned), what="each victim's workflow under way")
    fault = kill9([victim])
    assert pr.wait(wf_ids, timeout=180) == {w: "Finished" for w in wf_ids}, "no resume, no restart of the server"
    assert actor_pid(victim) != pids[victim], "Ray restarted the manager actor in a new process"
    assert _manager_actors(pr) == names, "still the same bounded pool"
    for k, w in enumerate(wf_ids):
        result = audit(pr.jobs(w), marks[k], [Fault(fault)])
        assert result.clean() and not result.lost_with_pilot, (w, result)
    assert all(pr.manager_alive(w) for w in wf_ids)


@pytest.mark.slow
def test_a_workflow_not_hosted_is_refused_by_name_and_unknown_to_lookup(campaign_pr: Panray, tmp_path: Path) -> None:
    pr = campaign_pr
    [wf_id] = pr.submit(marker_workflow("one", 1, tmp_path / "marks", 0.0))
    assert pr.wait([wf_id], timeout=60) == {wf_id: "Finished"}
    assert find(pr.settings.resolved_db_url, wf_id + 1000) is None
    host = pr._manager(wf_id).actor
    with pytest.raises(ray.exceptions.RayTaskError, match=f"workflow {wf_id + 1000} is not managed by"):
        ray.get(host.progress.remote(wf_id + 1000))
    assert ray.get(host.report.remote(wf_id + 1000, [], [], "pilot", 1)) == 0, "a stray report is not acknowledged"
    assert ray.get(host.wait.remote(wf_id, None)) == "Finished"
    before = _manager_actors(pr)
    other = pr.settings.model_copy(update={"manager_pool": 0})  # another process's layout: an actor per workflow
    [handle] = start(other, [wf_id]).values()
    assert handle.host == pr._manager(wf_id).host and _manager_actors(pr) == before, "hosted once, where it was"


def test_the_pool_layout_is_bounded_and_the_shares_of_a_tick_are_cut_into_full_batches() -> None:
    from panray.actors.manager_pool import host_name

    url = "sqlite:///campaign.db"
    assert {host_name(url, w, 3) for w in range(1, 200)} == {f"workflow-manager:{store_digest(url)}:pool-{k}"
                                                             for k in range(3)}
    assert host_name(url, 7, 0).endswith(":wf-7"), "manager_pool 0: an actor per workflow"
    parts = [("a", list(range(7))), ("b", list(range(100, 105))), ("c", [])]
    batches = list(_batches(parts, 4))  # type: ignore[arg-type]
    assert [[(w, idxs) for w, idxs in b] for b in batches] == [
        [("a", [0, 1, 2, 3])], [("a", [4, 5, 6]), ("b", [100])], [("b", [101, 102, 103, 104])]]
