"""The job lifecycle rules, driven through the pure workflow core (no Ray)."""

from __future__ import annotations

from pathlib import Path

import pytest

from panray import Campaign, Job, Workflow
from panray.core.messages import Outcome, Started
from panray.core.workflow_core import CoreSettings, WorkflowCore
from panray.exceptions import IllegalTransitionError
from panray.sites import load_catalog
from panray.statuses import FINAL_JOB_STATES, JobStatus
from panray.store import WorkflowSnapshot, open_store
from panray.submission import build_campaign
from panray.transitions import JOB_TRANSITIONS, check_transition

from helpers import snapshot


def test_final_statuses_never_change() -> None:
    for final in FINAL_JOB_STATES:
        assert not JOB_TRANSITIONS[final]
        for other in JobStatus:
            with pytest.raises(IllegalTransitionError):
                check_transition(final, other)


@pytest.mark.parametrize(("old", "new"), [("pending", "running"), ("defined", "finished"), ("activated", "running"),
                                          ("running", "defined"), ("sent", "assigned")])
def test_illegal_transitions_are_rejected(old: str, new: str) -> None:
    with pytest.raises(IllegalTransitionError, match=f"{old} -> {new}"):
        check_transition(JobStatus(old), JobStatus(new))


def _core(wf: Workflow, **settings: float) -> WorkflowCore:
    return WorkflowCore(snapshot(wf), CoreSettings(**settings))  # type: ignore[arg-type]


def _run(core: WorkflowCore, idxs: list[int], t: float, *, exit_code: int = 0, error: str | None = None) -> list[int]:
    core.queued(idxs, ["USDF"] * len(idxs), t)
    outs = [Outcome(core.first_id + i, core.attempt[i], "p", "USDF", t, t, t + 1, exit_code, error,
                    None if error is None else "x", None, None) for i in idxs]
    return core.ended(outs)


def _status(core: WorkflowCore, i: int) -> str:
    return list(JobStatus)[core.status[i]].value


def test_retry_rules() -> None:
    jobs = [Job(name="never", label="a", command=["x"]),
            Job(name="user", label="a", command=["x"], max_attempts=2),
            Job(name="oom", label="a", command=["x"], request_memory=1000, memory_multiplier=2.0,
                request_memory_max=3000, max_attempts=5),
            Job(name="sys", label="a", command=["x"], max_attempts=1)]
    core = _core(Workflow(name="w", jobs=jobs), max_system_retries=2)
    ready = core.start(0.0)
    assert sorted(ready) == [0, 1, 2, 3]
    assert _run(core, [0], 1, exit_code=2, error="payload") == []          # exit 2: never retried
    assert _status(core, 0) == "failed" and core.attempt[0] == 1
    assert _run(core, [1], 1, exit_code=5, error="payload") == [1]         # attempt 2 of 2
    assert core.attempt[1] == 2 and _status(core, 1) == "defined"
    assert _run(core, [1], 2, exit_code=5, error="payload") == []          # exhausted
    assert _status(core, 1) == "failed"
    assert _run(core, [2], 1, exit_code=137, error="memory") == [2]
    assert core.memory[2] == 2000
    assert _run(core, [2], 2, exit_code=137, error="memory") == [2]
    assert core.memory[2] == 3000                                           # capped
    assert _run(core, [2], 3, exit_code=137, error="memory") == []         # already at the cap
    for t in (1, 2):                                                        # system errors: own budget
        assert _run(core, [3], t, exit_code=None, error="system") == [3]
    assert core.user_failures[3] == 0 and core.attempt[3] == 3
    assert _run(core, [3], 3, exit_code=None, error="system") == []
    batch = core.drain_changes(10)
    attempts = [(a.job_id - core.first_id, a.attempt_nr, a.error_class) for a in batch.attempts]
    assert (2, 2, "memory") in attempts and (3, 3, "system") in attempts
    assert core.done


def test_pruning_and_final_job() -> None:
    jobs = [Job(name="a", label="a"), Job(name="b", label="b", parents=["a"]), Job(name="c", label="c", parents=["b"]),
            Job(name="d", label="d", parents=["a"])]
    wf = Workflow(name="w", jobs=jobs, init_job=Job(name="init", label="init"), final_job=Job(name="final", label="f"))
    core = _core(wf)
    names = [r.name for r in core.rows]
    idx = {n: k for k, n in enumerate(names)}
    assert core.start(0) == [idx["init"]]
    assert _run(core, [idx["init"]], 1) == [idx["a"]]
    assert sorted(_run(core, [idx["a"]], 2)) == sorted([idx["b"], idx["d"]])
    assert _run(core, [idx["b"]], 3, exit_code=1, error="payload") == []
    assert _status(core, idx["c"]) == "closed" and core.error_class[idx["c"]] == "pruned"
    assert _run(core, [idx["d"]], 4) == [idx["final"]]                      # final after everything
    assert _run(core, [idx["final"]], 5) == []
    assert core.done and core.drain_changes(6).workflows[-1][1] == "SubFinished"


def test_heartbeat_and_sent_timeouts() -> None:
    core = _core(Workflow(name="w", jobs=[Job(name="a", label="a", command=["x"]),
                                                    Job(name="b", label="a", command=["x"])]),
                 heartbeat_timeout=10, sent_timeout=5)
    core.start(0)
    core.queued([0, 1], ["USDF", "USDF"], 0)
    core.started([Started(core.first_id, 1, "p", 1.0, 1.0), Started(core.first_id + 1, 1, "p", 1.0, 0.0)])
    assert _status(core, 0) == "running" and _status(core, 1) == "sent"
    core.heartbeat([(core.first_id, 1)], 8.0)
    assert core.expire(7.0) == [1]                                          # sent, never started
    assert core.diag[1] is None and core.attempt[1] == 2
    assert core.expire(17.0) == []                                          # heartbeat at 8: alive
    assert core.expire(18.5) == [0]                                         # silent for > 10 s
    assert core.attempt[0] == 2 and core.system_failures[0] == 1 and core.user_failures[0] == 0


def test_restart_reruns_only_failed_cancelled_pruned(tmp_path: Path) -> None:
    jobs = [Job(name="a", label="a"), Job(name="b", label="b", parents=["a"]), Job(name="c", label="c", parents=["b"]),
            Job(name="d", label="d", parents=["a"])]
    wf = Workflow(name="w", jobs=jobs)
    core = _core(wf)
    core.start(0)
    _run(core, [0], 1)
    _run(core, [1], 2, exit_code=1, error="payload")
    _run(core, [3], 2)
    assert core.done
    again = WorkflowCore(_snapshot_after(tmp_path, wf, core))
    ready = again.start(10, retry=True)
    assert ready == [1]                                                     # b again; c waits for b
    assert [again.attempt[i] for i in range(4)] == [1, 2, 2, 1]
    assert [_status(again, i) for i in range(4)] == ["finished", "defined", "pending", "finished"]


def _snapshot_after(tmp_path: Path, wf: Workflow, core: WorkflowCore) -> WorkflowSnapshot:
    """What a restarted manager loads: the workflow stored, then the core's changes (same ids as a fresh store's)."""
    store = open_store(f"sqlite://{tmp_path}/s.db")
    store.submit(build_campaign(Campaign(name="c", workflows=[wf]), load_catalog()))
    store.apply(core.drain_changes(5))
    snap = store.load_workflow(core.workflow_id)
    store.close()
    return snap


def test_partial_cancel_prunes_descendants_and_final_still_runs() -> None:
    jobs = [Job(name="a", label="a"), Job(name="b", label="b", parents=["a"]), Job(name="e", label="b", parents=["a"]),
            Job(name="c", label="c", parents=["b"]), Job(name="d", label="d", parents=["a"])]
    core = _core(Workflow(name="w", jobs=jobs, final_job=Job(name="final", label="f")))
    idx = {r.name: k for k, r in enumerate(core.rows)}
    core.start(0)
    assert sorted(_run(core, [idx["a"]], 1)) == sorted(idx[n] for n in "bed")
    core.queued([idx["b"], idx["e"]], ["USDF", "USDF"], 2)
    core.started([Started(core.first_id + idx["e"], 1, "p1", 2.0, 2.5)])
    held, ready = core.cancel(3, core.select(task_id=core.rows[idx["b"]].task_id))
    assert sorted(held) == sorted([(core.first_id + idx["b"], None), (core.first_id + idx["e"], "p1")])
    assert ready == [] and not core.cancelled                               # d still runs; not a workflow cancel
    assert _status(core, idx["b"]) == _status(core, idx["e"]) == "cancelled"
    assert _status(core, idx["c"]) == "closed" and core.diag[idx["c"]] == "ancestor b was cancelled"
    late = core.started([Started(core.first_id + idx["b"], 1, "p2", 3.0, 3.1)])  # a pilot took b before the cancel
    assert late == [(core.first_id + idx["b"], "p2")] and _status(core, idx["b"]) == "cancelled"
    killed = Outcome(core.first_id + idx["e"], 1, "p1", "USDF", 2, 2.5, 3.2, 137, "cancelled", "killed by cancel",
                     None, None)
    assert core.ended([killed]) == [] and _status(core, idx["e"]) == "cancelled"
    assert core.cancel(4, [idx["a"], idx["b"]]) == ([], [])                  # final jobs stay as they are
    assert _run(core, [idx["d"]], 5) == [idx["final"]]
    assert _run(core, [idx["final"]], 6) == []
    batch = core.drain_changes(7)
    assert core.done and batch.workflows[-1][1] == "SubFinished"
    assert (core.rows[idx["b"]].task_id, "aborted") in batch.tasks


def test_workflow_cancel_cancels_everything_including_the_final_job() -> None:
    jobs = [Job(name="a", label="a"), Job(name="b", label="b", parents=["a"])]
    core = _core(Workflow(name="w", jobs=jobs, final_job=Job(name="final", label="f")))
    core.start(0)
    core.queued([0], ["USDF"], 1)
    held, ready = core.cancel(2)
    assert held == [(core.first_id, None)] and ready == [] and core.cancelled
    assert {_status(core, i) for i in range(core.n)} == {"cancelled"}
    assert core.drain_changes(3).workflows[-1][1] == "Cancelled"
