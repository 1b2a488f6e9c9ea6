"""End to end on the embedded three-site loopback cluster, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from panray import Job, Panray, Workflow
from panray.dag import drp

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
    history = pr.store.history(jobs[-1].job_id)
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
    attempts = pr.store.attempts(job.job_id)
    assert [(a.attempt_nr, a.status, a.exit_code, a.error_class) for a in attempts] == [
        (1, "failed", 3, "payload"), (2, "failed", 3, "payload"), (3, "finished", 0, None)]
