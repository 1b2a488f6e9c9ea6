"""The monitor's reads of the state store, on SQLite and PostgreSQL (the ``store`` fixture runs both)."""

from __future__ import annotations

import pytest

from panray.diagnostics import normalise
from panray.statuses import JobStatus
from panray.store import ChangeBatch, DecisionRow, JobQuery, NewCampaign, StateStore, WorkflowQuery, monitor_sql

from test_store import attempt, new_workflow, state

J = JobStatus


def _two_workflows(store: StateStore) -> tuple[int, int, int]:
    """Workflow A (9 jobs over labels a, b, c, chained) and B (2 jobs); returns (A, first job of A, B)."""
    beta = new_workflow("beta", 2)
    beta.owner = "bob"
    a, b = store.submit(NewCampaign("c", "alice", [new_workflow("alpha", 9, ("a", "b", "c")), beta])).workflows
    return a.workflow_id, a.first_job_id, b.workflow_id


def test_job_page_filters_sorts_pages_and_counts(store: StateStore) -> None:
    wf, first, _ = _two_workflows(store)
    store.apply(ChangeBatch(jobs=[
        state(first + 0, J.FAILED, site="USDF", exit_code=3, error_class="payload", start_time=10.0, end_time=15.0),
        state(first + 3, J.FAILED, site="FrDF", exit_code=137, error_class="memory", start_time=10.0, end_time=90.0),
        state(first + 6, J.FINISHED, site="USDF", exit_code=0, start_time=10.0, end_time=11.0),
        state(first + 1, J.RUNNING, site="USDF", start_time=10.0),
    ]))
    page = store.job_page(wf, JobQuery(limit=4))
    assert page.total == 9 and [r.idx for r in page.rows] == [0, 1, 2, 3] and len(page.created) == 4
    assert all(c > 0 for c in page.created)
    page = store.job_page(wf, JobQuery(limit=4, offset=8))
    assert page.total == 9 and [r.idx for r in page.rows] == [8]
    assert [r.idx for r in store.job_page(wf, JobQuery(limit=3, after_idx=4)).rows] == [5, 6, 7]
    assert [r.idx for r in store.job_page(wf, JobQuery(limit=3, before_idx=4)).rows] == [1, 2, 3]
    assert [r.idx for r in store.job_page(wf, JobQuery(label="a", after_idx=0)).rows] == [3, 6]
    page = store.job_page(wf, JobQuery(status=("failed",)))
    assert page.total == 2 and [r.idx for r in page.rows] == [0, 3]
    assert [r.idx for r in store.job_page(wf, JobQuery(label="a")).rows] == [0, 3, 6]
    assert [r.idx for r in store.job_page(wf, JobQuery(site="USDF")).rows] == [0, 1, 6]
    assert [r.idx for r in store.job_page(wf, JobQuery(exit_code=137)).rows] == [3]
    assert [r.idx for r in store.job_page(wf, JobQuery(error_class="payload", site="USDF")).rows] == [0]
    assert [r.idx for r in store.job_page(wf, JobQuery(sort="-duration", limit=3)).rows] == [3, 0, 6]
    assert [r.name for r in store.job_page(wf, JobQuery(name="alpha-1")).rows] == ["alpha-1"]
    page = store.job_page(wf, JobQuery(name="alpha-", limit=2))
    assert (page.total, page.exact, [r.idx for r in page.rows]) == (9, True, [0, 1])
    page = store.job_page(wf, JobQuery(status=("cancelled",)))
    assert (page.rows, page.total) == ([], 0)


def test_name_prefix_totals_are_counted_only_so_far(store: StateStore, monkeypatch: pytest.MonkeyPatch) -> None:
    wf, _, _ = _two_workflows(store)
    monkeypatch.setattr(monitor_sql, "COUNT_CAP", 4)
    page = store.job_page(wf, JobQuery(name="alpha-", limit=2))
    assert (page.total, page.exact, [r.idx for r in page.rows]) == (4, False, [0, 1])
    assert store.job_page(wf, JobQuery(name="alpha-8")).exact


def test_task_stats_pss_and_error_groups_of_one_workflow_only(store: StateStore) -> None:
    wf, first, other = _two_workflows(store)
    other_job = store.jobs(other)[0].job_id
    store.apply(ChangeBatch(
        jobs=[state(first, J.FAILED, start_time=10.0, end_time=14.0, request_memory=3000),
              state(first + 3, J.FINISHED, start_time=10.0, end_time=12.0)],
        attempts=[attempt(first, 1, J.FAILED, diag="file /a/1.fits missing", max_pss_kb=7000),
                  attempt(first, 2, J.FAILED, diag="file /a/2.fits missing", max_pss_kb=9000),
                  attempt(first + 3, 1, J.FAILED, exit_code=137, error_class="memory", diag="oom", max_pss_kb=3000),
                  attempt(first + 3, 2, J.FINISHED, exit_code=0, error_class=None, diag=None, max_pss_kb=4000),
                  attempt(other_job, 1, J.FAILED, diag="not mine", max_pss_kb=99999)],
    ))
    tasks = store.tasks(wf)
    by_task = {(r.task_id, r.status): r for r in store.task_stats(wf)}
    task_a = tasks[0].task_id
    assert by_task[(task_a, "failed")].n == 1 and by_task[(task_a, "failed")].wall_seconds == 4.0
    assert by_task[(task_a, "failed")].max_request_memory == 3000
    assert by_task[(task_a, "finished")].wall_seconds == 2.0
    assert by_task[(task_a, "pending")].n == 1
    assert sum(r.n for r in by_task.values()) == 9
    assert store.task_max_pss(wf) == {task_a: 9000}
    groups = store.error_groups(wf)
    assert [(g.task_id, g.cause, g.attempts) for g in groups] == \
        [(task_a, "file <path> missing", 2), (task_a, "oom", 1)]  # "not mine" is the other workflow's
    assert store.error_groups(wf, limit=1) == groups[:1]                  # the largest first
    oom = groups[1]
    assert (oom.error_class, oom.exit_code, oom.example_job_id, oom.example_diag) == ("memory", 137, first + 3, "oom")
    assert (groups[0].example_job_id, groups[0].example_diag) == (first, "file /a/1.fits missing")
    assert store.jobs_max_pss([first, first + 3, first + 1]) == {first: 9000, first + 3: 4000}


def test_workflow_list_counts_and_label_edges(store: StateStore) -> None:
    wf, first, other = _two_workflows(store)
    store.apply(ChangeBatch(jobs=[state(first, J.RUNNING)], tasks=[(store.tasks(wf)[0].task_id, "running")]))
    rows, total = store.find_workflows(WorkflowQuery())
    assert total == 2 and [r.workflow_id for r in rows] == [other, wf]
    assert [r.name for r in store.find_workflows(WorkflowQuery(owner="bob"))[0]] == ["beta"]
    assert [r.name for r in store.find_workflows(WorkflowQuery(name="LPH"))[0]] == ["alpha"]
    assert store.find_workflows(WorkflowQuery(name="a%a"))[1] == 0  # "%" is no wildcard: matches no name
    assert store.find_workflows(WorkflowQuery(created_after=rows[0].created + 10))[1] == 0
    rows, total = store.find_workflows(WorkflowQuery(limit=1, offset=1))
    assert total == 2 and [r.workflow_id for r in rows] == [wf]
    assert store.workflow_job_counts([wf, other]) == {wf: {"running": 1, "pending": 8}, other: {"pending": 2}}
    assert store.workflow_task_counts([wf]) == {wf: {"running": 1, "registered": 2}}
    # chain 0 -> 1 -> ... over labels a, b, c in turn
    assert store.label_edges(wf) == [("a", "b"), ("b", "c"), ("c", "a")]
    assert store.label_edges(other) == [("a", "a")]


def test_recent_decisions_newest_first(store: StateStore) -> None:
    _, first, _ = _two_workflows(store)
    store.apply(ChangeBatch(decisions=[DecisionRow(first + i, 1, f'{{"site": "S{i}"}}', 100.0 + i) for i in range(5)]))
    assert [d.job_id for d in store.recent_decisions(limit=3)] == [first + 4, first + 3, first + 2]


def test_kept_task_aggregates_match_the_jobs_after_many_changes(store: StateStore) -> None:
    """The trigger-kept counts, wall time, memory request and PSS agree with a scan of the jobs."""
    import random

    wf, first, _ = _two_workflows(store)
    rng = random.Random(7)
    statuses = [s.value for s in J]
    diags = ["file /a/1.fits missing", "file /b/2.fits missing", "killed at 17 s", None]
    for flush in range(6):  # several flushes, each job seen more than once, some twice in one batch
        picks = [first + rng.randrange(9) for _ in range(12)]
        store.apply(ChangeBatch(
            jobs=[state(j, J(rng.choice(statuses)), start_time=10.0, end_time=10.0 + rng.randrange(50),
                        site=rng.choice(["USDF", "FrDF", None]), exit_code=rng.choice([0, 3, 137, None]),
                        error_class=rng.choice(["payload", "memory", None]),
                        request_memory=1000 * (flush + 1)) for j in picks],  # retries only ever ask for more
            # attempt records re-sent (same key) with another outcome replace the stored one
            attempts=[attempt(j, rng.randrange(1, 3), rng.choice([J.FAILED, J.FAILED, J.FINISHED]),
                              exit_code=rng.choice([1, 137]), error_class=rng.choice(["payload", "memory"]),
                              diag=rng.choice(diags), max_pss_kb=10**5 * flush + rng.randrange(10**5))
                      for j in picks[:4]],
        ))
    jobs = store.jobs(wf)
    for query in (JobQuery(), JobQuery(status=("failed", "finished")), JobQuery(site="FrDF"), JobQuery(exit_code=137),
                  JobQuery(error_class="memory", site="USDF"), JobQuery(label="b", status=("running",)),
                  JobQuery(task_id=store.tasks(wf)[2].task_id, exit_code=0)):
        page = store.job_page(wf, query)
        match = [j.job_id for j in jobs if (not query.status or j.status in query.status)
                 and all(v is None or getattr(j, k) == v for k, v in (("site", query.site), ("label", query.label),
                         ("exit_code", query.exit_code), ("error_class", query.error_class), ("task_id", query.task_id)))]
        assert (page.total, page.exact, [r.job_id for r in page.rows]) == (len(match), True, match), query
    by_site: dict[str, dict[str, int]] = {}
    for j in jobs:
        if j.site is not None:
            by_site.setdefault(j.site, {})[j.status] = by_site.get(j.site, {}).get(j.status, 0) + 1
    assert store.site_job_counts() == by_site  # the other workflow's jobs have no site
    failed = [a for j in jobs for a in store.attempts(j.job_id) if a.status == "failed"]
    task_of = {j.job_id: j.task_id for j in jobs}
    scanned: dict[tuple[int, str | None, int | None, str], list[int]] = {}
    for a in failed:
        scanned.setdefault((task_of[a.job_id], a.error_class, a.exit_code, normalise(a.diag)), []).append(a.job_id)
    kept = store.error_groups(wf)
    assert {(g.task_id, g.error_class, g.exit_code, g.cause): (g.attempts, g.example_job_id) for g in kept} == \
        {key: (len(ids), min(ids)) for key, ids in scanned.items()}
    assert [g.attempts for g in kept] == sorted((g.attempts for g in kept), reverse=True)
    expected: dict[tuple[int, str], tuple[int, float]] = {}
    for j in jobs:
        n, w = expected.get((j.task_id, j.status), (0, 0.0))
        wall = (j.end_time - j.start_time) if j.start_time is not None and j.end_time is not None else 0.0
        expected[(j.task_id, j.status)] = (n + 1, w + wall)
    kept = {(r.task_id, r.status): (r.n, r.wall_seconds) for r in store.task_stats(wf)}
    assert kept == expected
    largest: dict[int, int] = {}
    for r in store.task_stats(wf):
        largest[r.task_id] = max(largest.get(r.task_id, 0), r.max_request_memory)
    assert largest == \
        {t.task_id: max(j.request_memory for j in jobs if j.task_id == t.task_id) for t in store.tasks(wf)}
    pss: dict[int, int] = {}
    for j in jobs:
        for a in store.attempts(j.job_id):
            if a.max_pss_kb is not None:
                pss[j.task_id] = max(pss.get(j.task_id, 0), a.max_pss_kb)
    assert store.task_max_pss(wf) == pss
