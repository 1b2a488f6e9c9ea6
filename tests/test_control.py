"""Job control while a workflow runs, on the session's cluster: retry of selected jobs (never a
finished one), hold/release, priority; embedded on both backends and over HTTP."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from panray import Job, Panray, Workflow
from panray.exceptions import ConflictError, NotFoundError, PermissionDeniedError
from panray.identity import Identity
from panray.store import StateStore

from helpers import wait_for

#: Waits for a gate file (keeps the workflow running), then ends.
GATED = 'for i in $(seq 1200); do [ -e "$1" ] && exit 0; sleep 0.1; done; exit 5'
#: Fails (exit 3) until its fix file exists; counts its runs.
FIXABLE = 'echo run >> "$2"; [ -e "$1" ] || exit 3'


@pytest.fixture
def pr(pr_or_remote: Panray) -> Panray:
    return pr_or_remote


def _workflow(tmp: Path) -> Workflow:
    return Workflow(name="control", jobs=[
        Job(name="ok", label="isr", command=["bash", "-c", 'echo run >> "$1"', "x", str(tmp / "ok.runs")]),
        Job(name="bad", label="isr", max_attempts=1,
            command=["bash", "-c", FIXABLE, "x", str(tmp / "fixed"), str(tmp / "bad.runs")]),
        Job(name="after", label="calib", parents=["bad"], command=["true"]),
        Job(name="gate", label="gate", command=["bash", "-c", GATED, "x", str(tmp / "gate")]),
    ])


@pytest.mark.slow
def test_retry_selected_jobs_while_running_and_hold(pr: Panray, tmp_path: Path) -> None:
    [wf] = pr.submit(_workflow(tmp_path))
    ids = {j.name: j.job_id for j in pr.jobs(wf)}
    jobs = lambda: {j.name: j for j in pr.jobs(wf)}  # noqa: E731
    wait_for(lambda: jobs()["bad"].status == "failed" and jobs()["ok"].status == "finished"
             and jobs()["after"].status == "closed", 60, "bad failed, ok finished, after pruned")
    assert pr.status(wf)[0].status == "Transforming"        # the gate keeps it running

    pr.hold(wf)
    assert pr.held(wf) is True
    (tmp_path / "fixed").touch()
    assert pr.retry_jobs(wf, job_ids=[ids["bad"]], memory=3000) == 2   # bad, and after that it pruned
    wait_for(lambda: jobs()["bad"].attempt_nr == 2, 30, "the new attempt stored")
    deadline = time.monotonic() + 1.5                         # held: the new attempt is not brokered
    while time.monotonic() < deadline:
        assert jobs()["bad"].status == "defined"
        time.sleep(0.1)
    pr.release(wf)
    assert pr.held(wf) == []
    wait_for(lambda: jobs()["after"].status == "finished", 60, "after ran once bad was fixed")
    (tmp_path / "gate").touch()
    assert pr.wait([wf], timeout=60) == {wf: "Finished"}

    final = jobs()
    assert final["ok"].attempt_nr == 1 and (tmp_path / "ok.runs").read_text().count("run") == 1  # never rerun
    assert (tmp_path / "bad.runs").read_text().count("run") == 2
    assert [a.request_memory for a in pr.attempts(ids["bad"])][-1] == 3000
    causes = [h.cause for h in pr.history(ids["bad"])]
    assert any(c.startswith("retry by ") for c in causes)


def test_control_refuses_strangers_unknown_ids_and_bad_values(cluster: Panray) -> None:
    svc = cluster.service
    [wf] = cluster.submit(Workflow(name="ctl", owner="alice", jobs=[Job(name="a", label="isr", command=["true"])]))
    cluster.wait([wf], timeout=60)
    owner = svc.workflow(wf).owner
    eve = Identity("eve-not-" + owner)
    with pytest.raises(PermissionDeniedError, match=f"only the owner \\({owner}\\) or role production may hold"):
        svc.hold(eve, wf)
    with pytest.raises(PermissionDeniedError, match="may set-priority"):
        svc.set_priority(eve, wf, 5)
    with pytest.raises(NotFoundError, match="no workflow 999999 in this store"):
        cluster.retry_jobs(999999)
    with pytest.raises(NotFoundError, match=f"workflow {wf} has no task 999999"):
        cluster.hold(wf, task_id=999999)
    with pytest.raises(Exception, match="priority 3000000000: expected an integer"):
        cluster.set_priority(wf, 3_000_000_000)
    assert cluster.retry_jobs(wf) == 0                       # it finished: nothing to rerun
    assert cluster.set_priority(wf, 7) == 1 and cluster.job(cluster.jobs(wf)[0].job_id).priority == 7
    with pytest.raises(ConflictError, match="held as a whole"):
        cluster.hold(wf) and cluster.release(wf, task_id=cluster.tasks(wf)[0].task_id)
    assert [a.action for a in svc.audit(limit=3)] == ["release", "hold", "set-priority"]


def test_store_keeps_holds_and_priorities(store: StateStore) -> None:
    from panray.core.workflow_core import held_of
    from panray.sites import load_catalog
    from panray.submission import build_campaign
    from panray.models import Campaign

    wf = Workflow(name="w", jobs=[Job(name="a", label="isr"), Job(name="b", label="calib", parents=["a"])])
    [sub] = store.submit(build_campaign(Campaign(name="c", workflows=[wf]), load_catalog())).workflows
    assert held_of(store.workflow(sub.workflow_id).settings) == []
    store.set_held(sub.workflow_id, [sub.first_task_id + 1, sub.first_task_id + 1])
    assert held_of(store.workflow(sub.workflow_id).settings) == [sub.first_task_id + 1]
    store.set_held(sub.workflow_id, True)
    assert held_of(store.load_workflow(sub.workflow_id).workflow.settings) is True
    assert store.set_priority(sub.workflow_id, 5) == 2
    assert store.set_priority(sub.workflow_id, -3, task_id=sub.first_task_id + 1) == 1
    assert store.set_priority(sub.workflow_id, 8, job_ids=[sub.first_job_id]) == 1
    assert [j.priority for j in store.jobs(sub.workflow_id)] == [8, -3]
    with pytest.raises(NotFoundError, match="no workflow 999 in this store"):
        store.set_held(999, True)
