"""Lifecycle rules on the real cluster: memory limits, lost pilots, restart, crash recovery."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import ray

from panray import Job, Panray, Settings, Workflow
from panray.runtime import ensure_actors

from helpers import alive as _alive
from helpers import wait_for as _wait_for

HOG = "import sys, time; b = bytearray(int(sys.argv[1]) * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep(3)"


def test_memory_limit_kills_and_retries_with_more_memory(pr: Panray) -> None:
    job = Job(name="hog", label="isr", command=[sys.executable, "-c", HOG, "250"], request_memory=120,
              memory_multiplier=3.0, request_memory_max=1000, max_attempts=3)
    [wf_id] = pr.submit(Workflow(name="oom", jobs=[job]))
    assert pr.wait([wf_id], timeout=90) == {wf_id: "Finished"}
    [row] = pr.jobs(wf_id)
    attempts = pr.store.attempts(row.job_id)
    assert [(a.attempt_nr, a.status, a.exit_code, a.error_class, a.request_memory) for a in attempts] == [
        (1, "failed", 137, "memory", 120), (2, "finished", 0, None, 360)]
    assert attempts[0].max_pss_kb > 120 * 1024 and attempts[1].max_pss_kb > 200 * 1024
    assert "above request 120 MB" in attempts[0].diag


def test_lost_pilot_is_a_system_error_and_the_job_runs_elsewhere(cluster: Panray, tmp_path: Path) -> None:
    """Losing a pilot does not depend on the store backend: one run on the session's SQLite."""
    pr = cluster
    marks = tmp_path / "marks"
    script = 'echo "$PANRAY_ATTEMPT $$" >> "$1"; [ "$PANRAY_ATTEMPT" = 1 ] && exec sleep 300; exit 0'
    job = Job(name="victim", label="isr", command=["bash", "-c", script, "v", str(marks)], max_attempts=1, site="UKDF")
    [wf_id] = pr.submit(Workflow(name="lost", jobs=[job]))
    _wait_for(lambda: marks.exists() and marks.read_text().strip(), what="first attempt to start")
    [row] = pr.jobs(wf_id)
    pilot = _wait_for(lambda: pr.store.job(row.job_id).pilot, what="pilot recorded")
    ray.kill(ray.get_actor(pilot, namespace="panray"))
    try:
        assert pr.wait([wf_id], timeout=60) == {wf_id: "Finished"}
    finally:
        ensure_actors(cluster.runtime)  # the killed pilot comes back for the other tests
    from panray.actors.names import actor

    fresh = _wait_for(lambda: actor(pilot), timeout=60, what="the supervisor to start a fresh pilot under the name")
    assert ray.get(fresh.ready.remote())  # a fresh pilot holds the name
    attempts = pr.store.attempts(row.job_id)
    assert [(a.attempt_nr, a.status, a.error_class) for a in attempts] == [(1, "failed", "system"), (2, "finished", None)]
    assert f"pilot {pilot} lost" in attempts[0].diag, "the manager's liveness check beats the heartbeat timeout"
    pid = int(marks.read_text().split()[1])
    _wait_for(lambda: not _alive(pid), timeout=10, what="the lost payload to die with its pilot")


def test_retry_reruns_failed_cancelled_pruned_never_finished(pr: Panray, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    gate = tmp_path / "gate"
    tick = 'echo "$1" >> "$2"'
    gated = 'echo "$1" >> "$2"; [ -e "$3" ]'
    jobs = [Job(name="a", label="a", command=["bash", "-c", tick, "x", "a", str(runs)]),
            Job(name="b", label="b", parents=["a"], command=["bash", "-c", gated, "x", "b", str(runs), str(gate)],
                retry_unless_exit=[1], max_attempts=1),
            Job(name="c", label="c", parents=["b"], command=["bash", "-c", tick, "x", "c", str(runs)]),
            Job(name="d", label="d", parents=["a"], command=["bash", "-c", tick, "x", "d", str(runs)])]
    [wf_id] = pr.submit(Workflow(name="restart", jobs=jobs))
    assert pr.wait([wf_id], timeout=60) == {wf_id: "SubFinished"}
    assert Counter(runs.read_text().split()) == {"a": 1, "b": 1, "d": 1}
    gate.touch()
    pr.retry(wf_id)
    assert pr.wait([wf_id], timeout=60) == {wf_id: "Finished"}
    assert Counter(runs.read_text().split()) == {"a": 1, "b": 2, "c": 1, "d": 1}
    attempts = {j.name: j.attempt_nr for j in pr.jobs(wf_id)}
    assert attempts == {"a": 1, "b": 2, "c": 2, "d": 1}


CRASH_DRIVER = """
import sys
from panray import Job, Panray, Settings, Workflow
home, db, marks = sys.argv[1], sys.argv[2], sys.argv[3]
script = 'echo "$1" >> "$2"; sleep 0.3'
jobs = [Job(name=f"j{k:03d}", label=f"l{k % 4}", parents=[f"j{k - 4:03d}"] if k >= 4 else [],
            command=["bash", "-c", script, "m", f"j{k:03d}", marks]) for k in range(120)]
with Panray(Settings(home=home, db_url=db or None, heartbeat_interval=0.5, heartbeat_timeout=4)) as pr:
    [wf] = pr.submit(Workflow(name="crash", jobs=jobs))
    print(wf, flush=True)
    pr.wait([wf])
"""


@pytest.mark.slow
def test_crash_recovery_after_sigkill(store_url: str, tmp_path: Path) -> None:
    home, marks = tmp_path / "home", tmp_path / "marks"
    db = store_url if store_url.startswith("postgres") else ""
    driver = subprocess.Popen([sys.executable, "-c", CRASH_DRIVER, str(home), db, str(marks)],
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wf_id = int(driver.stdout.readline())
        _wait_for(lambda: marks.exists() and len(marks.read_text().split()) >= 30, timeout=120,
                  what="a quarter of the workflow to run")
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the whole control plane: driver, GCS, raylets, actors
        driver.wait()
    settings = Settings(home=home, db_url=db or None, heartbeat_interval=0.5, heartbeat_timeout=4)
    with Panray(settings) as before:
        finished_at_crash = {j.name for j in before.jobs(wf_id, status=["finished"])}
    assert 0 < len(finished_at_crash) < 120
    resume = subprocess.run([sys.executable, "-m", "panray.cli", "--home", str(home),
                             *(["--db", db] if db else []), "resume"], capture_output=True, text=True, timeout=300)
    assert resume.returncode == 0, resume.stderr[-2000:]
    with Panray(settings) as after:
        jobs = after.jobs(wf_id)
        assert {j.status for j in jobs} == {"finished"}
        assert after.status(wf_id)[0].status == "Finished"
    runs = Counter(marks.read_text().split())
    assert set(runs) == {j.name for j in jobs}                            # no job missing
    assert all(runs[name] == 1 for name in finished_at_crash)            # no finished job ran twice
