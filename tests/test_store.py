"""The state store, on SQLite and PostgreSQL alike (the ``store`` fixture runs each test on both)."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from contextlib import closing
from pathlib import Path

import psycopg
import pytest

from panray.exceptions import ConfigError, NotFoundError, PanrayError
from panray.statuses import JobStatus, TaskStatus, WorkflowStatus
from panray.store import (
    SCHEMA_VERSION,
    AttemptRow,
    AuditRow,
    ChangeBatch,
    HistoryRow,
    JobQuery,
    JobState,
    NewCampaign,
    NewJob,
    NewTask,
    NewWorkflow,
    StateStore,
    open_store,
)

J = JobStatus


def new_workflow(name: str, n_jobs: int, labels: tuple[str, ...] = ("a",)) -> NewWorkflow:
    """``n_jobs`` jobs spread over ``labels`` (one task each), each job the child of the one before."""
    jobs = [
        NewJob(
            idx=i, name=f"{name}-{i}", label=labels[i % len(labels)], task_idx=i % len(labels), kind="job",
            payload=f"cmd{i}", environment='{"A": "1"}', request_memory=1000 + i, request_cpus=1 + i % 2,
            max_attempts=3, site_pin="SITE" if i == 0 else None, queue=None, priority=i % 5,
            inputs='["in"]', outputs='["out"]', tags=f'{{"i": {i}}}', retry='{"memory_multiplier": 2}',
        )  # fmt: skip
        for i in range(n_jobs)
    ]
    tasks = [NewTask(label, 0, sum(1 for j in jobs if j.label == label)) for label in labels]
    return NewWorkflow(name, "alice", "USDF", tasks, jobs, [(i, i - 1) for i in range(1, n_jobs)], '{"x": 1}')


def state(job_id: int, status: J, *, attempt_nr: int = 1, t: float = 100.0, **kw: object) -> JobState:
    fields: dict[str, object] = dict(
        job_id=job_id, status=status.value, attempt_nr=attempt_nr, site=None, pilot=None, start_time=None,
        end_time=None, exit_code=None, error_class=None, diag=None, request_memory=1000, modification_time=t,
    )  # fmt: skip
    fields.update(kw)
    return JobState(**fields)  # type: ignore[arg-type]


def attempt(job_id: int, nr: int, status: J, **kw: object) -> AttemptRow:
    fields: dict[str, object] = dict(
        job_id=job_id, attempt_nr=nr, status=status.value, site="S", pilot="p1", start_time=1.0, end_time=2.0,
        exit_code=1, error_class="payload", diag="boom", request_memory=1000, max_pss_kb=5000, log_url=None,
    )  # fmt: skip
    fields.update(kw)
    return AttemptRow(**fields)  # type: ignore[arg-type]


def _hist(job_id: int, attempt_nr: int, status: str, t: float, previous: str = "pending") -> HistoryRow:
    return HistoryRow(job_id, attempt_nr, status, t, previous, "test")


def raw_sql(url: str, text: str) -> None:
    """Reach past the store, as an operator or another panray version would."""
    if url.startswith("sqlite://"):
        with closing(sqlite3.connect(url[len("sqlite://") :])) as conn:
            conn.execute(text)
            conn.commit()
    else:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(text)


def test_submit_reads_back_ids_tasks_jobs_edges(store: StateStore) -> None:
    campaign = NewCampaign("c1", "alice", [new_workflow("w1", 3, ("a", "b")), new_workflow("w2", 4)])
    sub = store.submit(campaign)
    w1, w2 = sub.workflows
    assert w2.workflow_id == w1.workflow_id + 1
    assert w2.first_job_id == w1.first_job_id + 3
    assert w2.first_task_id == w1.first_task_id + 2

    snap = store.load_workflow(w1.workflow_id)
    assert snap.workflow.campaign_id == sub.campaign_id
    assert (snap.workflow.name, snap.workflow.owner, snap.workflow.home_site) == ("w1", "alice", "USDF")
    assert snap.workflow.status == WorkflowStatus.NEW.value and snap.workflow.cancelled is False
    assert snap.workflow.ended is None and snap.workflow.settings == '{"x": 1}'
    assert [(t.task_id, t.label, t.n_jobs, t.status) for t in snap.tasks] == [
        (w1.first_task_id, "a", 2, "registered"),
        (w1.first_task_id + 1, "b", 1, "registered"),
    ]
    assert [j.job_id for j in snap.jobs] == [w1.first_job_id + i for i in range(3)]
    for row, new in zip(snap.jobs, campaign.workflows[0].jobs, strict=True):
        assert row.task_id == w1.first_task_id + new.task_idx
        assert (row.status, row.attempt_nr, row.site, row.exit_code) == ("pending", 1, None, None)
        assert row[4:7] == (new.name, new.label, new.kind)
        assert (row.payload, row.environment, row.request_memory, row.request_cpus) == new[5:9]
        assert (row.max_attempts, row.site_pin, row.queue, row.priority) == new[9:13]
        assert (row.inputs, row.outputs, row.tags, row.retry) == new[13:]
    assert sorted(snap.edges) == [(1, 0), (2, 1)]
    assert sorted(store.load_workflow(w2.workflow_id).edges) == [(1, 0), (2, 1), (3, 2)]
    assert [w.name for w in store.workflows(campaign_id=sub.campaign_id)] == ["w2", "w1"]
    assert store.tasks(w2.workflow_id) == store.load_workflow(w2.workflow_id).tasks


def test_ids_of_two_submits_do_not_overlap(store: StateStore) -> None:
    a = store.submit(NewCampaign("c1", "alice", [new_workflow("w", 5)]))
    b = store.submit(NewCampaign("c2", "bob", [new_workflow("w", 5)]))
    assert b.campaign_id != a.campaign_id
    assert b.workflows[0].workflow_id != a.workflows[0].workflow_id
    ids = [j.job_id for s in (a, b) for j in store.jobs(s.workflows[0].workflow_id)]
    assert len(set(ids)) == 10
    assert {t.task_id for t in store.tasks(a.workflows[0].workflow_id)}.isdisjoint(
        t.task_id for t in store.tasks(b.workflows[0].workflow_id)
    )
    assert [w.campaign_id for w in store.workflows()] == [b.campaign_id, a.campaign_id]


def test_apply_writes_jobs_attempts_history_and_counts(store: StateStore) -> None:
    w = store.submit(NewCampaign("c", "alice", [new_workflow("w", 4, ("a", "b"))])).workflows[0]
    first, task_a, task_b = w.first_job_id, w.first_task_id, w.first_task_id + 1
    store.apply(ChangeBatch(
        jobs=[state(first, J.DEFINED), state(first + 1, J.DEFINED)],
        history=[_hist(first, 1, "defined", 1.0), _hist(first + 1, 1, "defined", 1.0)],
        tasks=[(task_a, TaskStatus.READY.value), (task_b, TaskStatus.READY.value)],
        workflows=[(w.workflow_id, WorkflowStatus.TRANSFORMING.value, None)],
    ))  # fmt: skip
    store.apply(ChangeBatch(
        jobs=[state(first, J.RUNNING, site="S", pilot="p1", start_time=1.5),
              state(first + 1, J.FAILED, site="S", end_time=2.0, exit_code=1, error_class="payload", diag="boom")],
        history=[_hist(first, 1, "running", 1.5), _hist(first + 1, 1, "failed", 2.0)],
        attempts=[attempt(first + 1, 1, J.FAILED)],
    ))  # fmt: skip

    running = store.job(first)
    assert (running.status, running.site, running.pilot, running.start_time) == ("running", "S", "p1", 1.5)
    failed = store.job(first + 1)
    assert (failed.status, failed.exit_code, failed.error_class, failed.diag) == ("failed", 1, "payload", "boom")
    assert store.job(first + 2).status == "pending"
    assert store.history(first) == [_hist(first, 1, "defined", 1.0), _hist(first, 1, "running", 1.5)]
    assert store.attempts(first + 1) == [attempt(first + 1, 1, J.FAILED)]
    assert store.job_counts(w.workflow_id) == {task_a: {"running": 1, "pending": 1}, task_b: {"failed": 1, "pending": 1}}
    assert [j.job_id for j in store.jobs(w.workflow_id, status=["pending", "failed"])] == [first + 1, first + 2, first + 3]
    assert [j.job_id for j in store.jobs(w.workflow_id, status=[J.PENDING], limit=1)] == [first + 2]
    assert store.jobs(w.workflow_id, status=[]) == []
    assert [t.status for t in store.tasks(w.workflow_id)] == ["ready", "ready"]
    assert [x.workflow_id for x in store.workflows(active_only=True)] == [w.workflow_id]

    # A retry: the attempt record of attempt 1 is re-sent with a correction, attempt 2 starts.
    store.apply(ChangeBatch(
        jobs=[state(first + 1, J.DEFINED, attempt_nr=2, request_memory=2000)],
        history=[_hist(first + 1, 2, "defined", 3.0)],
        attempts=[attempt(first + 1, 1, J.FAILED, max_pss_kb=9000, log_url="gs://log")],
        workflows=[(w.workflow_id, WorkflowStatus.FAILED.value, 9.0)],
    ))  # fmt: skip
    assert store.attempts(first + 1) == [attempt(first + 1, 1, J.FAILED, max_pss_kb=9000, log_url="gs://log")]
    retried = store.job(first + 1)
    assert (retried.status, retried.attempt_nr, retried.request_memory) == ("defined", 2, 2000)
    assert [h.status for h in store.history(first + 1)] == ["defined", "failed", "defined"]
    wf = store.workflows()[0]
    assert (wf.status, wf.ended) == ("Failed", 9.0)
    assert store.workflows(active_only=True) == []


def test_a_job_twice_in_one_batch_keeps_the_last_state(store: StateStore) -> None:
    first = store.submit(NewCampaign("c", "alice", [new_workflow("w", 2)])).workflows[0].first_job_id
    store.apply(ChangeBatch(jobs=[state(first, J.DEFINED), state(first, J.ASSIGNED, site="S2")]))
    assert (store.job(first).status, store.job(first).site) == ("assigned", "S2")


@pytest.mark.parametrize("where", ["jobs", "history", "attempts", "tasks", "workflows"])
def test_a_bad_status_rejects_the_whole_batch(store: StateStore, where: str) -> None:
    w = store.submit(NewCampaign("c", "alice", [new_workflow("w", 2)])).workflows[0]
    first = w.first_job_id
    good = ChangeBatch(
        jobs=[state(first, J.DEFINED)],
        history=[_hist(first, 1, "defined", 1.0)],
        attempts=[attempt(first + 1, 1, J.FAILED)],
        tasks=[(w.first_task_id, "ready")],
        workflows=[(w.workflow_id, "Transforming", None)],
    )
    bad = {
        "jobs": [state(first + 1, J.DEFINED)._replace(status="bogus")],
        "history": [_hist(first + 1, 1, "bogus", 1.0)],
        "attempts": [attempt(first, 1, J.FAILED)._replace(status="bogus")],
        "tasks": [(w.first_task_id, "bogus")],
        "workflows": [(w.workflow_id, "bogus", None)],
    }[where]
    getattr(good, where).extend(bad)
    with pytest.raises(PanrayError, match="rejected"):
        store.apply(good)
    assert [j.status for j in store.jobs(w.workflow_id)] == ["pending", "pending"]
    assert store.history(first) == [] and store.attempts(first + 1) == []
    assert store.tasks(w.workflow_id)[0].status == "registered"
    assert store.workflows()[0].status == "New"
    store.apply(ChangeBatch(jobs=[state(first, J.DEFINED)]))  # the store is usable after the rollback
    assert store.job(first).status == "defined"


def test_unknown_ids_raise_not_found_and_store_nothing(store: StateStore) -> None:
    w = store.submit(NewCampaign("c", "alice", [new_workflow("w", 2)])).workflows[0]
    first = w.first_job_id
    with pytest.raises(NotFoundError, match=str(first + 999)):
        store.apply(ChangeBatch(jobs=[state(first, J.DEFINED), state(first + 999, J.DEFINED)],
                                history=[_hist(first, 1, "defined", 1.0)]))  # fmt: skip
    assert store.job(first).status == "pending" and store.history(first) == []
    with pytest.raises(NotFoundError):
        store.apply(ChangeBatch(tasks=[(w.first_task_id + 999, "ready")]))
    with pytest.raises(NotFoundError):
        store.apply(ChangeBatch(workflows=[(w.workflow_id + 999, "Failed", 1.0)]))
    with pytest.raises(NotFoundError):
        store.load_workflow(w.workflow_id + 999)
    with pytest.raises(NotFoundError):
        store.job(first + 999)
    with pytest.raises(NotFoundError):
        store.set_cancelled(w.workflow_id + 999, True)


def test_set_cancelled_marks_and_clears(store: StateStore) -> None:
    wid = store.submit(NewCampaign("c", "alice", [new_workflow("w", 1)])).workflows[0].workflow_id
    store.set_cancelled(wid, True)
    assert store.load_workflow(wid).workflow.cancelled is True
    store.set_cancelled(wid, False)
    assert store.workflows()[0].cancelled is False


def test_workflow_reads_one_row(store: StateStore) -> None:
    wids = [w.workflow_id for w in store.submit(NewCampaign("c", "alice", [new_workflow("w", 1),
                                                                          new_workflow("v", 1)])).workflows]
    assert store.workflow(wids[1]).name == "v" and store.workflow(wids[0]).owner == "alice"
    with pytest.raises(NotFoundError, match=f"workflow {wids[1] + 1} "):
        store.workflow(wids[1] + 1)


def _back_to_version_4(url: str) -> None:
    """Take away what version 5 added: the history's paths of moves."""
    raw_sql(url, "ALTER TABLE job_history DROP COLUMN path")
    raw_sql(url, "UPDATE schema_version SET version = 4")


def _back_to_version_3(url: str) -> None:
    """Take away what versions 4 and 5 added: the error aggregate, attempt causes, an index, history paths."""
    _back_to_version_4(url)
    raw_sql(url, "DROP TABLE task_error_stats")
    raw_sql(url, "DROP TABLE label_edges")
    raw_sql(url, "DROP INDEX jobs_workflow_duration")
    raw_sql(url, "ALTER TABLE attempts DROP COLUMN cause")
    raw_sql(url, "UPDATE schema_version SET version = 3")


def test_a_version_2_store_is_migrated(store: StateStore, store_url: str) -> None:
    """A store made before the history had previous status and cause opens, keeps its rows, gains both."""
    [w] = store.submit(NewCampaign("c", "alice", [new_workflow("w", 1)])).workflows
    store.apply(ChangeBatch(history=[_hist(w.first_job_id, 1, "defined", 1.0)]))
    store.close()
    _back_to_version_3(store_url)
    raw_sql(store_url, "ALTER TABLE job_history DROP COLUMN cause")
    raw_sql(store_url, "ALTER TABLE job_history DROP COLUMN previous")
    for table in ("batch_marks", "audit", "task_job_stats", "task_max_pss"):  # what version 2 did not have
        raw_sql(store_url, f"DROP TABLE {table}")
    for index in ("jobs_workflow_label", "jobs_workflow_site", "brokerage_decisions_time"):
        raw_sql(store_url, f"DROP INDEX {index}")
    raw_sql(store_url, "UPDATE schema_version SET version = 2")
    again = open_store(store_url)
    try:
        assert again.history(w.first_job_id) == [HistoryRow(w.first_job_id, 1, "defined", 1.0, "", "")]
        assert {(r.status, r.n) for r in again.task_stats(w.workflow_id)} == {("pending", 1)}  # filled from jobs
        row = HistoryRow(w.first_job_id, 1, "assigned", 2.0, "defined", "brokerage")
        again.apply(ChangeBatch(history=[row]))
        assert again.history(w.first_job_id)[-1] == row
    finally:
        again.close()
    reopened = open_store(store_url)  # migrated once: the version is now current
    reopened.close()


def test_a_version_3_store_gains_the_error_aggregates(store: StateStore, store_url: str) -> None:
    """Failed attempts stored before version 4 are grouped by cause once migrated, and kept after."""
    [w] = store.submit(NewCampaign("c", "alice", [new_workflow("w", 3)])).workflows
    j = w.first_job_id
    store.apply(ChangeBatch(jobs=[state(j, J.FAILED, site="USDF", exit_code=1)],
                            attempts=[attempt(j, 1, J.FAILED, diag="no /a/1.fits"), attempt(j + 1, 1, J.FAILED, diag="no /b/2.fits")]))
    store.close()
    _back_to_version_3(store_url)
    again = open_store(store_url)
    try:
        assert [(g.cause, g.attempts, g.example_job_id) for g in again.error_groups(w.workflow_id)] == \
            [("no <path>", 2, j)]
        assert again.job_page(w.workflow_id, JobQuery(site="USDF", exit_code=1)).total == 1
        again.apply(ChangeBatch(attempts=[attempt(j + 2, 1, J.FAILED, diag="no /c/3.fits")]))
        assert [g.attempts for g in again.error_groups(w.workflow_id)] == [3]
    finally:
        again.close()


def test_schema_version_is_recorded_and_checked(store: StateStore, store_url: str) -> None:
    again = open_store(store_url)  # an existing database at this version opens
    again.close()
    raw_sql(store_url, f"UPDATE schema_version SET version = {SCHEMA_VERSION + 1}")
    with pytest.raises(PanrayError, match=f"schema version \\[{SCHEMA_VERSION + 1}\\]"):
        open_store(store_url)


def test_open_store_refuses_unknown_urls() -> None:
    with pytest.raises(ConfigError):
        open_store("mysql://x/y")
    with pytest.raises(ConfigError):
        open_store("sqlite://relative/path.db")


def test_two_threads_share_one_store(store: StateStore) -> None:
    w = store.submit(NewCampaign("c", "alice", [new_workflow("w", 200)])).workflows[0]
    errors: list[BaseException] = []

    def write(offset: int) -> None:
        try:
            for i in range(offset, 200, 2):
                job_id = w.first_job_id + i
                store.apply(ChangeBatch(jobs=[state(job_id, J.DEFINED)], history=[_hist(job_id, 1, "defined", 1.0)]))
                store.job_counts(w.workflow_id)
        except BaseException as exc:  # reported to the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.job_counts(w.workflow_id) == {w.first_task_id: {"defined": 200}}


def _submit_many(url: str, tag: str, n_workflows: int, n_jobs: int) -> None:
    """A separate workflow-manager process writing to the same SQLite file."""
    store = open_store(url)
    try:
        for k in range(n_workflows):
            sub = store.submit(NewCampaign(f"{tag}{k}", tag, [new_workflow(f"{tag}{k}", n_jobs)]))
            first = sub.workflows[0].first_job_id
            store.apply(ChangeBatch(
                jobs=[state(first + i, J.DEFINED) for i in range(n_jobs)],
                history=[_hist(first + i, 1, "defined", 1.0) for i in range(n_jobs)],
            ))  # fmt: skip
    finally:
        store.close()


def test_sqlite_writers_in_two_processes_lose_nothing(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/shared.db"
    open_store(url).close()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_submit_many, args=(url, tag, 30, 40)) for tag in ("p", "q")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]

    store = open_store(url)
    workflows = store.workflows()
    assert len(workflows) == 60 and len({w.workflow_id for w in workflows}) == 60
    job_ids: set[int] = set()
    for w in workflows:
        snap = store.load_workflow(w.workflow_id)
        ids = [j.job_id for j in snap.jobs]
        assert ids == list(range(ids[0], ids[0] + 40)), "a workflow's ids are contiguous"
        assert {j.status for j in snap.jobs} == {"defined"}
        assert all(j.name.startswith(w.name) for j in snap.jobs)
        job_ids.update(ids)
    assert len(job_ids) == 60 * 40
    assert all(len(store.history(i)) == 1 for i in list(job_ids)[::97])
    store.close()


def test_volume_submit_and_three_large_batches(store: StateStore) -> None:
    n = 50_000
    w = store.submit(NewCampaign("big", "alice", [new_workflow("big", n, ("a", "b", "c", "d"))])).workflows[0]
    first = w.first_job_id
    flow = [(J.DEFINED, None), (J.RUNNING, "S"), (J.FINISHED, "S")]
    for step, (status, site) in enumerate(flow):
        t = float(step)
        store.apply(ChangeBatch(
            jobs=[state(first + i, status, site=site, t=t) for i in range(n)],
            history=[_hist(first + i, 1, s.value, t) for i in range(n) for s in (status, J.SENT, J.STARTING)],
        ))  # fmt: skip
    counts = store.job_counts(w.workflow_id)
    assert sum(c.get("finished", 0) for c in counts.values()) == n
    snap = store.load_workflow(w.workflow_id)
    assert len(snap.jobs) == n and len(snap.edges) == n - 1
    assert {j.site for j in snap.jobs} == {"S"}
    assert [h.status for h in store.history(first + n - 1)] == [
        s for status, _ in flow for s in (status.value, "sent", "starting")
    ]


def test_jobs_filter_by_label_and_site_and_page(store: StateStore) -> None:
    wf = new_workflow("w", 10, labels=("a", "b"))
    first = store.submit(NewCampaign("c", "alice", [wf])).workflows[0]
    wf_id, j0 = first.workflow_id, first.first_job_id
    store.apply(ChangeBatch(jobs=[state(j0 + i, J.DEFINED, site="FrDF" if i < 4 else "UKDF") for i in range(10)]))
    assert [j.idx for j in store.jobs(wf_id, label="b")] == [1, 3, 5, 7, 9]
    assert [j.idx for j in store.jobs(wf_id, label="b", site="FrDF")] == [1, 3]
    assert [j.idx for j in store.jobs(wf_id, limit=3, offset=4)] == [4, 5, 6]
    assert [j.idx for j in store.jobs(wf_id, offset=8)] == [8, 9]
    assert store.jobs(wf_id, status=["defined"], label="a", offset=5) == []


def test_audit_rows_newest_first_and_outcome_checked(store: StateStore) -> None:
    rows = [AuditRow(1.0, "alice", "submit", "campaign 'c'", "ok", ""),
            AuditRow(2.0, "bob", "cancel", "workflow 1", "refused", "only the owner (alice) or role production ...")]
    store.record_audit(rows)
    assert store.audit() == rows[::-1]
    assert store.audit(user="alice", limit=5) == rows[:1]
    with pytest.raises(PanrayError, match="rejected the batch"):
        store.record_audit([AuditRow(3.0, "eve", "cancel", "workflow 1", "ok", ""),
                            AuditRow(3.0, "eve", "cancel", "workflow 1", "maybe", "")])
    assert len(store.audit()) == 2  # nothing of the refused batch
