"""Fault injection: the state store goes away in the middle of a run.

Each payload appends its attempt number to a marker file named after its job, so the files
say how often every job really ran; the run must finish without ``resume`` or a restart, with
every job run exactly once and the store agreeing with the manager.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
import ray

import pgserver
from conftest import FAST
from panray import Job, Panray, Settings, Workflow
from panray.store import open_store
from test_integration import _wait_for

CHAINS, DEPTH = 24, 5
MARK = 'echo "$PANRAY_ATTEMPT" >> "$1/$PANRAY_JOB_ID"; sleep 0.4'
STOP_S = 10.0


def _chains(marks: Path) -> Workflow:
    jobs = [Job(name=f"c{c}:{d}", label=f"step{d}", command=["bash", "-c", MARK, "mark", str(marks)],
                parents=[f"c{c}:{d - 1}"] if d else [])
            for c in range(CHAINS) for d in range(DEPTH)]
    return Workflow(name="outage", jobs=jobs)


def _ended(progress: dict) -> int:
    return sum(progress["counts"].get(s, 0) for s in ("finished", "failed", "closed", "cancelled"))


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["restart", "stop"])
def test_a_run_rides_out_a_database_outage(fault: str, own_pg: pgserver.PgServer, cluster: Panray,
                                          panray_home: Path, tmp_path: Path) -> None:
    url = own_pg.create_database(f"outage_{fault}")
    marks = tmp_path / "marks"
    marks.mkdir()
    with Panray(Settings(home=panray_home, db_url=url, flush_interval=0.05, **FAST)) as pr:
        [wf_id] = pr.submit(_chains(marks))
        _wait_for(lambda: sum(n.get("finished", 0) for n in pr.store.job_counts(wf_id).values()) >= CHAINS,
                  what="a first wave stored")
        mgr = pr._manager(wf_id)
        if fault == "restart":
            own_pg.restart("fast")
        else:
            own_pg.halt("fast")
            before = _ended(ray.get(mgr.progress.remote()))
            deadline = time.monotonic() + STOP_S
            _wait_for(lambda: ray.get(mgr.stats.remote())["store_away_s"] is not None, timeout=STOP_S,
                      what="the manager to notice the outage")
            away = ray.get(mgr.stats.remote())
            time.sleep(max(deadline - time.monotonic(), 0.0))  # the outage's length, not a synchronisation
            during = _ended(ray.get(mgr.progress.remote()))
            assert during > before, "the manager runs on from memory while the store is away"
            assert away["store_backlog"] > 0
            own_pg.boot()
        assert pr.wait([wf_id], timeout=60) == {wf_id: "Finished"}
        stats = ray.get(mgr.stats.remote())
        manager_counts = ray.get(mgr.progress.remote())["counts"]
        jobs = pr.jobs(wf_id)
        stored = Counter(j.status for j in jobs)
    assert stats["store_backlog"] == 0 and stats["store_away_s"] is None
    if fault == "stop":
        assert stats["store_outages"] >= 1
    assert stored == Counter({"finished": CHAINS * DEPTH}), "0 jobs lost"
    assert {s: n for s, n in manager_counts.items() if n} == dict(stored), "the store agrees with the manager"
    assert {j.attempt_nr for j in jobs} == {1}
    runs = {p.name: p.read_text().split() for p in marks.iterdir()}
    assert runs == {str(j.job_id): ["1"] for j in jobs}, "every job ran once: no finished job ran again"
    store = open_store(url)
    try:
        changes = Counter((h.job_id, h.attempt_nr, h.status) for j in jobs for h in store.history(j.job_id))
    finally:
        store.close()
    assert changes.most_common(1)[0][1] == 1, "no status change stored twice"
