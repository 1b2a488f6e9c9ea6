"""End to end on the embedded three-site loopback cluster, on SQLite and PostgreSQL, and over HTTP to a server."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from panray import Job, Panray, Workflow
from panray.dag import drp


@pytest.fixture
def pr(pr_or_remote: Panray) -> Panray:
    """Each test embedded on both backends, and as a client of a server over HTTP (conftest.py)."""
    return pr_or_remote


from helpers import wait_for as _wait_for


def _dag_workflow(n: int, marker_dir: Path) -> Workflow:
    shape = drp(n)
    script = 'printf "%s\\n" "$1" >> "$2"'
    jobs = [
        Job(name=name, label=label, parents=parents, tags=tags,
            command=["bash", "-c", script, "run", name, str(marker_dir / "runs.txt")])
        for name, label, parents, tags in zip(shape.names, shape.labels, shape.parents, shape.tags)
    ]
    return Workflow(name=f"dag-{n}", jobs=jobs)


def test_dag_runs_on_every_site_in_parent_order(pr: Panray, tmp_path: Path) -> None:
    wf = _dag_workflow(200, tmp_path)
    [wf_id] = pr.submit(wf)
    assert pr.wait([wf_id], timeout=180) == {wf_id: "Finished"}

    jobs = pr.jobs(wf_id)
    assert len(jobs) == len(wf.jobs) >= 190
    assert {j.status for j in jobs} == {"finished"}
    sites = Counter(j.site for j in jobs)
    assert set(sites) == {"USDF", "FrDF", "UKDF"}, sites
    by_name = {j.name: j for j in jobs}
    fan_in = fan_out = 0
    for spec in wf.jobs:
        child = by_name[spec.name]
        fan_in += len(spec.parents) > 1
        for p in spec.parents:
            parent = by_name[p]
            assert child.start_time >= parent.end_time, (spec.name, p)
    children = Counter(p for spec in wf.jobs for p in spec.parents)
    fan_out = sum(1 for n in children.values() if n > 1)
    assert fan_in and fan_out
    runs = (tmp_path / "runs.txt").read_text().split()
    assert sorted(runs) == sorted(j.name for j in wf.jobs)  # every job ran exactly once
    history = pr.history(jobs[-1].job_id)
    assert [h.status for h in history] == ["defined", "assigned", "activated", "sent", "starting", "running",
                                           "finished"]
    assert [h.time for h in history] == sorted(h.time for h in history)
    status = pr.status(wf_id)[0]
    assert status.tasks == {"done": len({j.label for j in wf.jobs})}


def test_cancel_kills_running_payloads(pr: Panray, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    script = 'echo $$ > "$1/.$2"; mv "$1/.$2" "$1/$2"; exec sleep 300'
    jobs = [Job(name=f"sleep{k}", label="sleeper", command=["bash", "-c", script, "s", str(pids), f"p{k}"])
            for k in range(6)]
    jobs.append(Job(name="after", label="after", parents=["sleep0"], command=["true"]))
    [wf_id] = pr.submit(Workflow(name="to-cancel", jobs=jobs))
    started = _wait_for(lambda: len(list(pids.glob("p*"))) >= 3 and list(pids.glob("p*")), what="payloads to start")
    running = [int(p.read_text()) for p in started]
    for pid in running:
        os.kill(pid, 0)  # alive now

    assert pr.cancel(wf_id)
    assert pr.wait([wf_id], timeout=60) == {wf_id: "Cancelled"}

    def all_gone() -> bool:
        for pid in running:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            return False
        return True

    _wait_for(all_gone, timeout=10, what="payload processes to be killed")
    statuses = Counter(j.status for j in pr.jobs(wf_id))
    assert statuses == {"cancelled": 7}


def test_failed_job_prunes_descendants_and_final_still_runs(pr: Panray, tmp_path: Path) -> None:
    jobs = [
        Job(name="a", label="isr", command=["true"]),
        Job(name="bad", label="isr", command=["bash", "-c", "exit 1"], parents=["a"]),
        Job(name="c", label="calibrate", command=["true"], parents=["bad"]),
        Job(name="d", label="calibrate", command=["true"], parents=["c"]),
        Job(name="ok", label="calibrate", command=["true"], parents=["a"]),
    ]
    final = Job(name="final", label="finalJob", command=["bash", "-c", 'touch "$1"', "f", str(tmp_path / "final")])
    [wf_id] = pr.submit(Workflow(name="prune", jobs=jobs, final_job=final))
    assert pr.wait([wf_id], timeout=60) == {wf_id: "SubFinished"}
    st = {j.name: (j.status, j.error_class, j.attempt_nr) for j in pr.jobs(wf_id)}
    assert st["bad"] == ("failed", "payload", 1)  # exit 1 is never retried
    assert st["c"][:2] == st["d"][:2] == ("closed", "pruned")
    assert st["ok"][0] == st["a"][0] == st["final"][0] == "finished"
    assert (tmp_path / "final").exists()
    final_row = next(j for j in pr.jobs(wf_id) if j.name == "final")
    assert final_row.site == "USDF"  # pinned to the home site


def test_retryable_failure_gets_new_attempts(pr: Panray, tmp_path: Path) -> None:
    counter = tmp_path / "count"
    script = 'echo x >> "$1"; [ "$(wc -l < "$1")" -ge 3 ] || exit 3'
    jobs = [Job(name="flaky", label="isr", command=["bash", "-c", script, "f", str(counter)], max_attempts=3)]
    [wf_id] = pr.submit(Workflow(name="retry", jobs=jobs))
    assert pr.wait([wf_id], timeout=60) == {wf_id: "Finished"}
    job = pr.jobs(wf_id)[0]
    assert job.attempt_nr == 3 and job.status == "finished"
    attempts = pr.attempts(job.job_id)
    assert [(a.attempt_nr, a.status, a.exit_code, a.error_class) for a in attempts] == [
        (1, "failed", 3, "payload"), (2, "failed", 3, "payload"), (3, "finished", 0, None)]


@pytest.mark.slow
def test_thousand_jobs_with_failures_cancel_and_retry_over_http(remote_pr: Panray, tmp_path: Path) -> None:
    """1,000 jobs through the server: 5 roots fail, one is cancelled while it runs; a retry reruns them all."""
    pr, fixed, started = remote_pr, tmp_path / "fixed", tmp_path / "started"
    fail = ["bash", "-c", '[ -e "$1" ] || exit 1', "f", str(fixed)]
    slow = ["bash", "-c", 'touch "$2"; [ -e "$1" ] || exec sleep 300', "s", str(fixed), str(started)]
    jobs = []
    for r in range(50):
        jobs.append(Job(name=f"root{r}", label="isr", command=slow if r == 0 else fail if r <= 5 else ["true"]))
        jobs += [Job(name=f"c{r}.{k}", label="calibrate", parents=[f"root{r}"], command=["true"]) for k in range(19)]
    [wf_id] = pr.submit(Workflow(name="thousand", jobs=jobs))
    _wait_for(started.exists, what="the slow root to start")
    [slow_job] = pr.jobs(wf_id, label="isr", limit=1)
    assert slow_job.name == "root0"
    assert pr.cancel(wf_id, job_ids=[slow_job.job_id])
    assert pr.wait([wf_id], timeout=180) == {wf_id: "SubFinished"}

    counts = pr.status(wf_id)[0].jobs
    assert counts == {"finished": 880, "failed": 5, "cancelled": 1, "closed": 114}
    assert len(pr.jobs(wf_id)) == 1000  # paged through the server
    assert {j.name for j in pr.jobs(wf_id, ["failed"])} == {f"root{r}" for r in range(1, 6)}
    page = pr.jobs(wf_id, ["closed"], label="calibrate", limit=10, offset=100)
    assert [j.name for j in page] == [f"c5.{k}" for k in range(5, 15)]

    fixed.touch()
    pr.retry(wf_id)
    assert pr.wait([wf_id], timeout=180) == {wf_id: "Finished"}
    rows = {j.name: j for j in pr.jobs(wf_id)}
    assert {j.status for j in rows.values()} == {"finished"}
    assert rows["root3"].attempt_nr == rows["root0"].attempt_nr == 2 and rows["root9"].attempt_nr == 1
    assert [a.status for a in pr.attempts(rows["root3"].job_id)] == ["failed", "finished"]
