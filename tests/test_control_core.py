"""Job control by hand, driven through the pure workflow core (no Ray): retry of selected jobs while
the workflow runs, hold/release, priority."""

from __future__ import annotations

from panray import Job, Workflow
from panray.core.messages import Outcome
from panray.core.workflow_core import WorkflowCore
from panray.statuses import JobStatus

from helpers import core_of

#: a -> b -> c, and x independent; the final job after all of them.
_JOBS = [Job(name="a", label="isr", command=["x"], max_attempts=1),
         Job(name="b", label="calib", command=["x"], parents=["a"]),
         Job(name="c", label="coadd", command=["x"], parents=["b"]),
         Job(name="x", label="isr", command=["x"], max_attempts=1)]


def _core() -> WorkflowCore:
    return core_of(Workflow(name="w", jobs=_JOBS, final_job=Job(name="fin", label="finalJob", command=["x"])))


def _end(core: WorkflowCore, idxs: list[int], t: float, *, error: str | None = None) -> list[int]:
    core.queued(idxs, ["USDF"] * len(idxs), t)
    return core.ended([Outcome(core.first_id + i, core.attempt[i], "p", "USDF", t, t, t + 1, 0 if error is None else 3,
                               error, None if error is None else "boom", None, None) for i in idxs])


def _st(core: WorkflowCore, i: int) -> str:
    return list(JobStatus)[core.status[i]].value


def test_rerun_of_a_failed_job_reopens_what_it_pruned_and_never_reruns_finished_ones() -> None:
    core = _core()
    a, b, c, x, fin = 0, 1, 2, 3, core.final_idx
    assert sorted(core.start(0.0)) == [a, x]
    _end(core, [x], 1.0)                                  # x finished
    _end(core, [a], 2.0, error="payload")                 # a fails for good (max_attempts 1): b, c pruned
    assert [_st(core, i) for i in (a, b, c, x)] == ["failed", "closed", "closed", "finished"]
    assert _st(core, fin) == "defined"                    # the final job's turn
    _end(core, [fin], 3.0)
    assert core.done

    again, ready = core.rerun(None, 4.0, by="alice", memory=4242)
    assert sorted(again) == [a, b, c] and ready == [a]    # x finished: never rerun
    assert _st(core, x) == "finished" and core.attempt[x] == 1
    assert [_st(core, i) for i in (a, b, c, fin)] == ["defined", "pending", "pending", "pending"]
    assert core.memory[a] == 4242 and core.attempt[a] == 2 and not core.done
    assert [(h.previous, h.status, h.cause) for h in core._history if h.job_id == core.first_id + a][-2:] == [
        ("failed", "pending", "retry by alice"), ("pending", "defined", "parents finished")]
    assert _end(core, [a], 5.0) == [b]                    # a fresh budget: it runs again and releases b
    assert _end(core, [b], 6.0) == [c]
    assert _end(core, [c], 7.0) == [fin]                  # the final job runs again, last


def test_rerun_keeps_a_pruned_job_closed_while_another_ancestor_stays_failed() -> None:
    jobs = [Job(name="p", label="l", command=["x"], max_attempts=1), Job(name="q", label="l", command=["x"], max_attempts=1),
            Job(name="r", label="m", command=["x"], parents=["p", "q"])]
    core = core_of(Workflow(name="w", jobs=jobs))
    core.start(0.0)
    _end(core, [0, 1], 1.0, error="payload")
    assert _st(core, 2) == "closed"
    again, ready = core.rerun(core.select(job_ids=[core.first_id]), 2.0, by="bob")   # only p
    assert again == [0] and ready == [0] and _st(core, 2) == "closed" and _st(core, 1) == "failed"
    _end(core, [0], 3.0)
    assert core.done                                      # r would wait forever for q: it stays closed


def test_rerun_skips_a_job_cancelled_below_one_that_failed_for_good_since() -> None:
    core = _core()
    a, b = 0, 1
    core.start(0.0)
    core.cancel(1.0, [b], by="alice")                     # b cancelled while it waits for a
    _end(core, [a], 2.0, error="payload")                 # then a fails for good
    assert core.rerun(core.select(job_ids=[core.first_id + b]), 3.0) == ([], [])   # b would wait forever
    assert _st(core, b) == "cancelled"


def test_rerun_leaves_jobs_not_ended_alone() -> None:
    core = _core()
    core.start(0.0)
    assert core.rerun(None, 1.0) == ([], [])              # nothing failed yet
    assert [_st(core, i) for i in range(4)] == ["defined", "pending", "pending", "defined"]


def test_hold_takes_queued_jobs_back_and_refuses_claims_until_released() -> None:
    core = _core()
    a, x = 0, 3
    core.start(0.0)
    core.queued([a, x], ["USDF", "FrDF"], 1.0)
    assert core.claim("pilot:USDF:0", [(core.first_id + a, 1)], 1.5) == [True]   # a is on a pilot: it runs on
    back = core.hold(2.0, by="alice")
    assert back == [x] and _st(core, x) == "defined" and core.attempt[x] == 1 and core.site[x] is None
    assert core._history[-1].cause == "hold by alice"
    assert core.claim("pilot:FrDF:0", [(core.first_id + x, 1)], 2.5) == [False]  # a stale dispatch of x
    assert core.held_state() is True and core.is_held(x)
    core.release_hold()
    assert not core.is_held(x) and core.held_state() == []
    assert core.claim("pilot:FrDF:0", [(core.first_id + x, 1)], 3.0) == [True]


def test_hold_of_one_task() -> None:
    core = _core()
    isr = core.rows[0].task_id
    core.start(0.0)
    assert core.hold(1.0, isr) == [] and core.held_state() == [isr]
    assert core.is_held(0) and core.is_held(3) and not core.is_held(1)
    core.release_hold(isr)
    assert not core.is_held(0)


def test_priority_is_kept_per_job() -> None:
    core = _core()
    core.set_priority(core.select(job_ids=[core.first_id + 2]), 50)
    assert list(core.priority)[:4] == [0, 0, 50, 0]
