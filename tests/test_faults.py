"""Fault injection on the session's cluster: kill -9 of pilots and of a workflow manager mid-run.

Each case runs a few hundred short marker-writing jobs (tests/faults.py), injects the fault and
then only waits: the workflow must finish without ``panray resume`` or a restart, with 0 jobs
lost, 0 finished jobs run again, 0 overlapping attempts of one job and no attempt number run
twice; the supervisor must bring the killed pilots back.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

from conftest import FAST
from faults import Fault, actor_pid, audit, kill9, marker_workflow, wait_for
from panray import Panray, Settings

pytestmark = pytest.mark.slow


@pytest.fixture
def fpr(cluster: Panray, panray_home: Path, tmp_path: Path) -> Iterator[Panray]:
    """A session on its own SQLite store, with a short timeout for jobs queued at a site without pilots."""
    session = Panray(Settings(home=panray_home, db_url=f"sqlite:///{tmp_path}/faults.db", flush_interval=0.05,
                              activated_timeout=3.0, **FAST))
    yield session
    session.close()


def _site_rows(pr: Panray) -> dict[str, dict[str, int]]:
    return {r["site"]: r for r in ray.get(pr.runtime.brokerage.sites.remote())}


def _pilots_back(pr: Panray, names: list[str], old_pids: dict[str, int]) -> bool:
    """Every killed pilot answers again from a new process, and brokerage counts it."""
    try:
        fresh = all(actor_pid(n) != old_pids[n] for n in names)
    except (ValueError, ray.exceptions.RayActorError):
        return False
    sites = {n.split(":")[1] for n in names}
    rows = _site_rows(pr)
    return fresh and all(rows[s]["pilots"] == pr.catalog.get(s).pilots for s in sites)


def _busy_pilot(pr: Panray, wf_id: int, site: str) -> str | None:
    return next((j.pilot for j in pr.jobs(wf_id, status=["running"]) if j.site == site and j.pilot), None)


def _check(pr: Panray, wf_id: int, marks: Path, fault: float, lost_site: set[str]) -> None:
    result = audit(pr.jobs(wf_id), marks, [Fault(fault, frozenset(lost_site))])
    assert result.clean(), result
    retried = [(j, a) for j in pr.jobs(wf_id) for a in pr.store.attempts(j.job_id) if a.status == "failed"]
    assert retried, "the fault cut some runs short"
    assert all(a.error_class == "system" and a.site in lost_site for _j, a in retried), retried
    assert all(j.site != a.site for j, a in retried), "system-error retries avoid the site that lost them"


def test_one_busy_pilot_killed_at_each_of_two_sites(fpr: Panray, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    [wf_id] = fpr.submit(marker_workflow("kill-one-per-site", 200, marks, 0.4))
    victims = wait_for(lambda: all(p := [_busy_pilot(fpr, wf_id, s) for s in ("FrDF", "UKDF")]) and p,
                       what="a busy pilot at FrDF and at UKDF")
    pids = {n: actor_pid(n) for n in victims}
    fault = kill9(victims)
    assert fpr.wait([wf_id], timeout=120) == {wf_id: "Finished"}
    _check(fpr, wf_id, marks, fault, {"FrDF", "UKDF"})
    wait_for(lambda: _pilots_back(fpr, victims, pids), timeout=30, what="the supervisor to replace both pilots")


def test_every_pilot_of_a_site_killed_while_its_queue_holds_jobs(fpr: Panray, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    [wf_id] = fpr.submit(marker_workflow("kill-site", 300, marks, 0.4))
    wait_for(lambda: (r := _site_rows(fpr)["UKDF"])["queued"] > 0 and r["running"] > 0,
             what="UKDF running jobs with more queued")
    victims = [f"pilot:UKDF:{k}" for k in range(fpr.catalog.get("UKDF").pilots)]
    pids = {n: actor_pid(n) for n in victims}
    fault = kill9(victims)
    assert fpr.wait([wf_id], timeout=120) == {wf_id: "Finished"}
    _check(fpr, wf_id, marks, fault, {"UKDF"})
    taken_back = [j for j in fpr.jobs(wf_id) if [h.status for h in fpr.store.history(j.job_id)].count("activated") > 1]
    assert taken_back, "jobs queued at (or reserved for) the dead pilots were brokered again"
    wait_for(lambda: _pilots_back(fpr, victims, pids), timeout=30, what="the supervisor to restart UKDF's pilots")


def test_a_killed_workflow_manager_is_restarted_and_collects_what_pilots_hold(fpr: Panray, tmp_path: Path) -> None:
    from panray.actors.manager_pool import host_of
    from panray.actors.names import manager_name

    marks = tmp_path / "marks"
    [wf_id] = fpr.submit(marker_workflow("kill-manager", 200, marks, 0.4))
    wait_for(lambda: len(fpr.jobs(wf_id, status=["finished"])) >= 40, what="a fifth of the workflow to finish")
    name = host_of(manager_name(fpr.settings.resolved_db_url, wf_id))
    pid = actor_pid(name)
    fault = kill9([name])
    assert fpr.wait([wf_id], timeout=120) == {wf_id: "Finished"}, "no resume, no restart of the server"
    assert actor_pid(name) != pid, "Ray restarted the manager in a new process"
    result = audit(fpr.jobs(wf_id), marks, [Fault(fault)])
    assert result.clean() and not result.lost_with_pilot, result
    failed = [a for j in fpr.jobs(wf_id) for a in fpr.store.attempts(j.job_id) if a.status == "failed"]
    assert failed == [], "what live pilots ran was adopted, not failed and retried"
