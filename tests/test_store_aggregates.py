"""The monitor's kept aggregates against a full recount, and the move of schema version 4 stores to
per-batch aggregates and history paths (both backends: the ``store`` fixture runs each)."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from panray.diagnostics import normalise
from panray.statuses import JobStatus
from panray.store import SCHEMA_VERSION, ChangeBatch, HistoryRow, JobQuery, NewCampaign, StateStore, open_store
from panray.store.monitor_sql import NO_EXIT

from test_store import _back_to_version_4, attempt, new_workflow, raw_sql, state

J = JobStatus
_SITES = (None, "USDF", "FrDF")
_DIAGS = ("no /a/1.fits", "no /b/22.fits", "killed at 4000 MB", None)
_STATUSES = ("pending", "running", "finished", "failed", "cancelled")


def _kept(store: StateStore, wf: int) -> dict[str, Any]:
    """What the monitor reads from the kept aggregates."""
    return {
        "stats": {(r.task_id, r.status): (r.n, r.max_request_memory, r.wall_seconds) for r in store.task_stats(wf)},
        "pss": store.task_max_pss(wf),
        "errors": {(g.task_id, g.error_class, g.exit_code, g.cause): (g.attempts, g.example_job_id)
                   for g in store.error_groups(wf)},
        "pages": {(s, site): store.job_page(wf, JobQuery(status=(s,), site=site)).total
                  for s in _STATUSES for site in ("USDF", "FrDF")},
        "sites": store.site_job_counts(),
    }


def _recounted(store: StateStore, wf: int) -> dict[str, Any]:
    """The same figures counted from every stored job and attempt."""
    jobs = store.jobs(wf)
    stats: dict[tuple[int, str], list[Any]] = {}
    for j in jobs:
        k = stats.setdefault((j.task_id, j.status), [0, 0, 0.0])
        k[0] += 1
        k[1] = max(k[1], j.request_memory)
        if j.start_time is not None and j.end_time is not None:
            k[2] += j.end_time - j.start_time
    pss: dict[int, int] = {}
    errors: dict[tuple[Any, ...], list[int]] = {}
    for j in jobs:
        for a in store.attempts(j.job_id):
            if a.max_pss_kb is not None:
                pss[j.task_id] = max(pss.get(j.task_id, 0), a.max_pss_kb)
            if a.status == "failed":
                g = errors.setdefault((j.task_id, a.error_class, a.exit_code, normalise(a.diag) or "(no diagnostic)"),
                                      [0, a.job_id])
                g[0] += 1
                g[1] = min(g[1], a.job_id)
    sites: dict[str, dict[str, int]] = {}
    for (site, status), n in Counter((j.site, j.status) for j in jobs if j.site).items():
        sites.setdefault(site, {})[status] = n
    pages = {(s, site): sum(1 for j in jobs if j.status == s and j.site == site)
             for s in _STATUSES for site in ("USDF", "FrDF")}
    return {"stats": stats, "pss": pss, "errors": errors, "pages": pages, "sites": sites}


def _assert_exact(store: StateStore, wf: int) -> None:
    """Counts equal the recount; the kept maxima (largest memory request and PSS *so far*) and an
    error group's example (its lowest job *so far*) are at least what the stored rows show now."""
    kept, now = _kept(store, wf), _recounted(store, wf)
    assert {k: v[0] for k, v in kept["stats"].items()} == {k: v[0] for k, v in now["stats"].items()}
    for key, (n, memory, wall) in now["stats"].items():
        assert kept["stats"][key][1] >= memory and kept["stats"][key][2] == pytest.approx(wall), key
    assert {k: v[0] for k, v in kept["errors"].items()} == {k: v[0] for k, v in now["errors"].items()}
    assert all(kept["errors"][k][1] <= v[1] for k, v in now["errors"].items())
    assert all(kept["pss"][t] >= kb for t, kb in now["pss"].items())
    assert kept["pages"] == now["pages"] and kept["sites"] == now["sites"]


def _random_batches(rng: random.Random, first: int, n: int, rounds: int) -> list[ChangeBatch]:
    """Batches of moves, failures with attempts (some re-sent with another outcome), retries with
    more memory, and cancels, as writers send them: an attempt's record may come twice in a batch."""
    attempt_nr = {first + i: 1 for i in range(n)}
    batches = []
    for _ in range(rounds):
        b = ChangeBatch()
        for job_id in rng.sample(range(first, first + n), rng.randint(1, n)):
            nr, site = attempt_nr[job_id], rng.choice(_SITES)
            kind = rng.random()
            start = rng.choice((None, rng.uniform(0, 100)))
            end = None if start is None else start + rng.uniform(0, 50)
            memory = rng.choice((1000, 2000, 4000, 8000))
            if kind < 0.3:
                b.jobs.append(state(job_id, J.RUNNING, attempt_nr=nr, site=site, start_time=start, request_memory=memory))
            elif kind < 0.5:
                b.jobs.append(state(job_id, J.FINISHED, attempt_nr=nr, site=site, start_time=start, end_time=end,
                                    exit_code=0, request_memory=memory))
                b.attempts.append(attempt(job_id, nr, J.FINISHED, site=site, exit_code=0, error_class=None, diag=None,
                                          max_pss_kb=rng.choice((None, rng.randint(1, 10**6)))))
            elif kind < 0.75:
                diag, exit_code = rng.choice(_DIAGS), rng.choice((1, 137, None))
                b.jobs.append(state(job_id, J.FAILED, attempt_nr=nr, site=site, start_time=start, end_time=end,
                                    exit_code=exit_code, error_class="payload", diag=diag, request_memory=memory))
                b.attempts.append(attempt(job_id, nr, J.FAILED, site=site, exit_code=exit_code, diag=diag,
                                          max_pss_kb=rng.choice((None, rng.randint(1, 10**6)))))
                if rng.random() < 0.3:  # the attempt's record sent again, changed (a later report)
                    b.attempts.append(attempt(job_id, nr, J.FAILED, site=site, exit_code=1, diag=rng.choice(_DIAGS)))
            elif kind < 0.9:  # retried: a new attempt with more memory
                attempt_nr[job_id] = nr + 1
                b.jobs.append(state(job_id, J.PENDING, attempt_nr=nr + 1, request_memory=memory * 2))
            else:
                b.jobs.append(state(job_id, J.CANCELLED, attempt_nr=nr, site=site, error_class="cancelled",
                                    request_memory=memory))
            if rng.random() < 0.2:  # a failed attempt of an earlier round re-sent as finished
                b.attempts.append(attempt(job_id, max(1, nr - 1), J.FINISHED, exit_code=0, error_class=None, diag=None))
        batches.append(b)
    return batches


def test_aggregates_equal_a_full_recount_after_random_batches(store: StateStore) -> None:
    [w] = store.submit(NewCampaign("c", "alice", [new_workflow("w", 60, ("a", "b", "c"))])).workflows
    rng = random.Random(18)
    for batch in _random_batches(rng, w.first_job_id, 60, 25):
        store.apply(batch)
        _assert_exact(store, w.workflow_id)
    assert any(n > 1 for n, _ in _kept(store, w.workflow_id)["errors"].values()), "the mix grouped some failures"
    assert len(_kept(store, w.workflow_id)["stats"]) >= 9, "the mix spread jobs over tasks and statuses"


def test_a_version_4_store_is_migrated_with_exact_counts(store: StateStore, store_url: str) -> None:
    """A store whose aggregates triggers kept (version 4) loses the triggers, keeps its history and
    counts, and counts exactly from then on."""
    [w] = store.submit(NewCampaign("c", "alice", [new_workflow("w", 30, ("a", "b"))])).workflows
    rng = random.Random(4)
    before, after = _random_batches(rng, w.first_job_id, 30, 6), _random_batches(rng, w.first_job_id, 30, 6)
    for batch in before:
        store.apply(batch)
    old = HistoryRow(w.first_job_id, 1, "defined", 1.0, "pending", "release")
    store.apply(ChangeBatch(history=[old]))
    store.close()
    _back_to_version_4(store_url)
    _add_version_4_triggers(store_url)
    again = open_store(store_url)
    try:
        assert again.history(w.first_job_id) == [old]
        _assert_exact(again, w.workflow_id)
        for batch in after:
            again.apply(batch)
            _assert_exact(again, w.workflow_id)  # a version 4 trigger left behind would add 1000s
        moves = [HistoryRow(w.first_job_id, 1, "assigned", 2.0, "defined", "brokerage"),
                 HistoryRow(w.first_job_id, 1, "activated", 3.0, "assigned", "queued")]
        again.apply(ChangeBatch(history=moves))
        assert again.history(w.first_job_id) == [old, *moves]
    finally:
        again.close()
    reopened = open_store(store_url)  # migrated once: the version is now current
    try:
        assert reopened.history(w.first_job_id)[0] == old
    finally:
        reopened.close()
    assert SCHEMA_VERSION == 5


def _add_version_4_triggers(url: str) -> None:
    """Stand-ins of version 4's triggers, by their names: each would spoil the counts if it stayed."""
    spoil = f"UPDATE task_job_stats SET n = n + 1000 WHERE exit_code = {NO_EXIT}"
    if url.startswith("sqlite"):
        for name, event in (("jobs_stats_update", "UPDATE ON jobs"), ("attempts_errors_insert", "INSERT ON attempts")):
            raw_sql(url, f"CREATE TRIGGER {name} AFTER {event} BEGIN {spoil}; END")
        return
    raw_sql(url, "CREATE FUNCTION panray_task_job_stats() RETURNS trigger LANGUAGE plpgsql AS"
                 f" $f$ BEGIN {spoil}; RETURN NULL; END $f$")
    raw_sql(url, "CREATE TRIGGER jobs_stats_update AFTER UPDATE ON jobs FOR EACH STATEMENT"
                 " EXECUTE FUNCTION panray_task_job_stats()")
