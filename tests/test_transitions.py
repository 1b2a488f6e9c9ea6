"""The one transition path: every status writer goes through panray.transitions, with causes."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from panray import Campaign, ClusterRule, Job, Workflow
from panray.core.prompt_core import JobResult, TaskConfig
from panray.core.prompt_task import VisitReport, write_visit
from panray.core.messages import Outcome, Started
from panray.core.workflow_core import WorkflowCore
from panray.exceptions import IllegalTransitionError
from panray.statuses import JobStatus
from panray.sites import load_catalog
from panray.store import ChangeBatch, StateStore, SubmittedCampaign
from panray.store.base import HistoryRow
from panray.submission import build_campaign
from panray.transitions import ATTEMPTS, JOBS, QUANTA, TASKS, WORKFLOWS, transition

from helpers import core_of

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("panray", "actors", "dag", "sites", "logging_bridge")
STATUS_NAMES = {"status", "task_status", "workflow_status", "_workflow_status"}
#: Not a job, task, quantum or workflow status: an operator sets a site's status by hand.
NOT_ENTITY_STATUSES = {("actors/brokerage.py", "self.status[site]")}


def _assigned_statuses(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, target) of every assignment to a status outside an ``__init__`` (which loads them)."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST, in_init: bool) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_init = node.name == "__init__"
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = [t for tgt in node.targets for t in (tgt.elts if isinstance(tgt, ast.Tuple) else [tgt])]
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)) and getattr(node, "value", None) is not None:
            targets = [node.target]
        for t in targets:
            if isinstance(t, ast.Subscript):
                base = t.value
                name = base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", "")
                if name in STATUS_NAMES:
                    found.append((t.lineno, ast.unparse(t)))
            elif isinstance(t, ast.Attribute) and t.attr in STATUS_NAMES and not in_init:
                found.append((t.lineno, ast.unparse(t)))
        for child in ast.iter_child_nodes(node):
            visit(child, in_init)

    visit(tree, False)
    return found


def test_only_the_transition_module_assigns_statuses() -> None:
    offenders = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if path == ROOT / "panray" / "transitions.py":
                continue
            rel = str(path.relative_to(ROOT))
            for line, target in _assigned_statuses(ast.parse(path.read_text(), str(path))):
                if (rel, target) not in NOT_ENTITY_STATUSES:
                    offenders.append(f"{rel}:{line}: {target} = ...")
    assert offenders == [], "statuses change only through panray.transitions:\n" + "\n".join(offenders)


def test_the_ast_check_finds_a_direct_write() -> None:
    tree = ast.parse("class C:\n    def __init__(self):\n        self.status = []\n"
                     "    def bad(self, i):\n        self.status[i] = 3\n        self.workflow_status = 'x'\n")
    assert [t for _, t in _assigned_statuses(tree)] == ["self.status[i]", "self.workflow_status"]


def _ok(rows: list[HistoryRow]) -> None:
    """Each row names the status it left and why, and the move is one the tables allow."""
    assert rows
    for r in rows:
        assert r.previous in {s.value for s in JobStatus} and r.cause, r
        old, new = JobStatus(r.previous), JobStatus(r.status)
        assert JOBS.allows(old, new) or ATTEMPTS.allows(old, new), r


def _run(core: WorkflowCore, idxs: list[int], t: float, code: int = 0) -> list[int]:
    core.queued(idxs, ["USDF"] * len(idxs), t)
    core.started([Started(core.first_id + i, core.attempt[i], "p", t, t) for i in idxs])
    return core.ended([Outcome(core.first_id + i, core.attempt[i], "p", "USDF", t, t, t + 1, code,
                               None if code == 0 else "payload", None if code == 0 else "boom", None, None)
                       for i in idxs])


def _chain() -> Workflow:
    return Workflow(name="w", jobs=[Job(name="a", label="a", command=["x"], max_attempts=2),
                                    Job(name="b", label="b", command=["x"], parents=["a"])],
                    final_job=Job(name="final", label="f", command=["x"]))


def test_core_writer_records_previous_status_and_cause() -> None:
    core = core_of(_chain())
    assert core.start(0.0) == [0]
    assert _run(core, [0], 1.0, code=3) == [0]                             # retried by the retry rule
    assert _run(core, [0], 3.0) == [1]
    rows = core.drain_changes(5.0).history
    _ok(rows)
    a = core.first_id
    assert [(r.attempt_nr, r.previous, r.status, r.cause) for r in rows if r.job_id == a] == [
        (1, "pending", "defined", "parents finished"), (1, "defined", "assigned", "brokerage"),
        (1, "assigned", "activated", "brokerage"), (1, "activated", "sent", "pilot report"),
        (1, "sent", "starting", "pilot report"), (1, "starting", "running", "pilot report"),
        (1, "running", "failed", "pilot report"),
        (2, "failed", "defined", "retry rule"),                                # a new attempt, a new row
        (2, "defined", "assigned", "brokerage"), (2, "assigned", "activated", "brokerage"),
        (2, "activated", "sent", "pilot report"), (2, "sent", "starting", "pilot report"),
        (2, "starting", "running", "pilot report"), (2, "running", "finished", "pilot report"),
    ]
    assert [(r.previous, r.status, r.cause) for r in rows if r.job_id == a + 1] == [
        ("pending", "defined", "parents finished")]


def test_cancel_and_retry_writers_name_the_user() -> None:
    core = core_of(_chain())
    core.start(0.0)
    core.queued([0], ["USDF"], 1.0)
    held, _ = core.cancel(2.0, by="alice")
    assert held == [(core.first_id, None)] and core.done
    rows = core.drain_changes(3.0).history
    _ok(rows)
    assert {(r.previous, r.status, r.cause) for r in rows if r.status == "cancelled"} == {
        ("activated", "cancelled", "cancel by alice"), ("pending", "cancelled", "cancel by alice")}
    snap = core_of(_chain())
    snap.start(0.0)
    assert _run(snap, [0], 1.0, code=1) == [2]                    # exit 1: never retried, b pruned, final due
    assert _run(snap, [2], 2.0) == []
    rows = snap.drain_changes(3.0).history
    _ok(rows)
    assert ("pending", "closed", "prune from a") in {(r.previous, r.status, r.cause) for r in rows}
    assert snap.start(4.0, retry=True, by="bob") == [0]
    rows = snap.drain_changes(5.0).history
    _ok(rows)
    assert [(r.attempt_nr, r.previous, r.status, r.cause) for r in rows if r.job_id == snap.first_id] == [
        (2, "failed", "pending", "retry by bob"), (2, "pending", "defined", "parents finished")]
    assert {(r.previous, r.status, r.cause) for r in rows if r.job_id == snap.first_id + 1} == {
        ("closed", "pending", "retry by bob")}


def test_clustered_core_writer_records_causes() -> None:
    jobs = [Job(name=f"{label}:{k}", label=label, tags={"k": k}, command=["x"],
                parents=[f"a:{k}"] if label == "b" else [])
            for k in (1, 2) for label in ("a", "b")]
    core = core_of(Workflow(name="w", jobs=jobs, clustering=[ClusterRule(name="ab", labels=["a", "b"],
                                                                          dimensions=["k"])]))
    ready = core.start(0.0)
    assert len(ready) == 2
    i = ready[0]
    core.queued([i], ["USDF"], 1.0)
    core.ended([Outcome(core.first_id + i, 1, "p", "USDF", 1.0, 1.0, 2.0, 1, "payload", None, None, None,
                        ((0, 1, 1.0, 2.0),))])
    batch = core.drain_changes(3.0)
    _ok(batch.history)
    ended = [r for r in batch.history if r.job_id == core.first_id + i]
    assert (ended[-1].previous, ended[-1].status, ended[-1].cause) == ("running", "failed", "pilot report")
    assert sorted((q.status, q.diag) for q in batch.quanta) == [
        ("closed", f"ancestor quantum a:{1 if 'k=1' in core.rows[i].name else 2} failed for good"), ("failed", "exit code 1")]


def test_prompt_writer_goes_through_the_core_in_one_transaction(store: StateStore) -> None:
    jobs = [JobResult(0, "pp0", True, 10.0, 10.1, 10.2, 11.0, 0, None),
            JobResult(1, "pp1", False, 10.0, 10.1, 10.3, 11.5, 4, "exit code 4")]
    write_visit(store, VisitReport("LSSTCam", 7, jobs, [], []), "USDF", TaskConfig())
    [wf] = store.workflows()
    assert wf.status == "SubFinished" and [t.status for t in store.tasks(wf.workflow_id)] == ["finished"]
    ok, bad = store.jobs(wf.workflow_id)
    assert (ok.status, bad.status, bad.error_class, bad.exit_code) == ("finished", "failed", "payload", 4)
    for job, last in ((ok, "finished"), (bad, "failed")):
        rows = store.history(job.job_id)
        _ok(rows)
        assert [r.status for r in rows] == ["defined", "assigned", "activated", "sent", "starting", "running", last]
        assert rows[-1].cause == "pilot report" and rows[-1].time == (11.0 if last == "finished" else 11.5)


def test_a_failing_then_stores_nothing_of_the_submit(store: StateStore) -> None:
    campaign = build_campaign(Campaign(name="c", workflows=[_chain()]), load_catalog())

    def broken(sub: SubmittedCampaign) -> ChangeBatch:
        raise RuntimeError(f"core failed for workflow {sub.workflows[0].workflow_id}")

    with pytest.raises(RuntimeError, match="core failed"):
        store.submit(campaign, then=broken)
    assert store.workflows() == []


def test_a_forbidden_move_raises_with_the_job_id() -> None:
    core = core_of(_chain())
    with pytest.raises(IllegalTransitionError, match=f"job {core.first_id + 1}: pending -> running"):
        core._move(1, JOBS.code(JobStatus.RUNNING), 1.0, "pilot report")
    with pytest.raises(IllegalTransitionError, match="job 9: finished -> defined"):
        transition(JOBS, bytearray([JOBS.code(JobStatus.FINISHED)]), 0, JOBS.code(JobStatus.DEFINED), 9, 1, 0.0,
                   "x", [])
    with pytest.raises(IllegalTransitionError, match="quantum 3: finished -> pending"):
        transition(QUANTA, bytearray([JOBS.code(JobStatus.FINISHED)]), 0, JOBS.code(JobStatus.PENDING), 3, 1, 0.0,
                   "x", None)
    with pytest.raises(IllegalTransitionError, match="task 5: running -> registered"):
        transition(TASKS, {5: "running"}, 5, "registered", 5, 0, 0.0, "x", None)
    with pytest.raises(IllegalTransitionError, match="workflow 2: Transforming -> New"):
        transition(WORKFLOWS, {2: "Transforming"}, 2, "New", 2, 0, 0.0, "x", None)


def test_a_path_of_moves_is_checked_whole_before_anything_is_written() -> None:
    from panray.transitions import transition_path

    code = JOBS.code
    status = bytearray([code(JobStatus.ACTIVATED)])
    history: list[HistoryRow] = []
    path = tuple(code(s) for s in (JobStatus.SENT, JobStatus.STARTING, JobStatus.RUNNING, JobStatus.FINISHED))
    old = transition_path(JOBS, status, 0, path, (1.0, 2.0, 2.0, 3.0), 42, 1, "pilot report", history)
    assert old == code(JobStatus.ACTIVATED) and status[0] == code(JobStatus.FINISHED)
    assert [(h.previous, h.status, h.time) for h in history] == [
        ("activated", "sent", 1.0), ("sent", "starting", 2.0), ("starting", "running", 2.0), ("running", "finished", 3.0)]
    status[0] = code(JobStatus.DEFINED)
    bad = (code(JobStatus.ASSIGNED), code(JobStatus.RUNNING))  # assigned -> running skips the queue and the pilot
    with pytest.raises(IllegalTransitionError, match="assigned.*running"):
        transition_path(JOBS, status, 0, bad, (4.0, 4.0), 42, 1, "pilot report", history)
    assert status[0] == code(JobStatus.DEFINED) and len(history) == 4, "a refused path writes nothing"
