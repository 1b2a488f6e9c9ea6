"""Data locality, re-brokering and recorded decisions without Ray: the core, the queue and the store."""

from __future__ import annotations

import json

from panray.core.messages import Dispatch, Outcome, Started
from panray.core.locality import DataLocality
from panray.actors.site_queue import SiteQueueCore
from panray.core.workflow_core import WorkflowCore
from panray.models import Campaign, Job, Workflow
from panray.sites import load_catalog
from panray.store import ChangeBatch, DecisionRow, StateStore
from panray.submission import build_campaign


def _submit(store: StateStore) -> WorkflowCore:
    """a (outputs x, y) -> b (inputs x, y, z); z comes from outside the workflow."""
    wf = Workflow(name="loc", jobs=[
        Job(name="a", label="isr", command=["true"], outputs=["x", "y"]),
        Job(name="b", label="calibrate", command=["true"], parents=["a"], inputs=["x", "y", "z"]),
    ])
    [sub] = store.submit(build_campaign(Campaign(name="c", workflows=[wf]), load_catalog())).workflows
    return WorkflowCore(store.load_workflow(sub.workflow_id), manager="m")


def _finish(core: WorkflowCore, i: int, site: str, t: float) -> list[int]:
    job_id = core.first_id + i
    core.queued([i], [site], t)
    core.started([Started(job_id, 1, "p", t, t)])
    return core.ended([Outcome(job_id, 1, "p", site, t, t, t, 0, None, None, None, None)])


def test_fractions_ignore_outside_inputs_and_transfers_name_source_and_destination() -> None:
    loc = DataLocality(1)
    loc.produced('["x","y"]', "UKDF")
    assert loc.fractions('["x","y","z"]') == {"UKDF": 2 / 3}
    assert loc.fractions("[]") == {}
    loc.placed(9, 2, '["x","z"]', "UKDF", 1.0)
    assert loc.transfers == []
    loc.placed(9, 2, '["x","z"]', "FrDF", 1.0)
    assert [(t.dataset, t.source, t.destination, t.attempt_nr) for t in loc.transfers] == [("x", "UKDF", "FrDF", 2)]


def test_outputs_are_stored_where_they_were_made_and_reloaded_on_restart(store: StateStore) -> None:
    core = _submit(store)
    ready = core.start(1.0)
    assert ready == [0]
    assert _finish(core, 0, "UKDF", 2.0) == [1]
    assert core.input_sites(1) == {"UKDF": 2 / 3}
    core.queued([1], ["FrDF"], 3.0)
    store.apply(core.drain_changes(3.0))
    b = core.first_id + 1
    assert [(t.dataset, t.source, t.destination) for t in store.transfers(b)] == [
        ("x", "UKDF", "FrDF"), ("y", "UKDF", "FrDF")]
    restarted = WorkflowCore(store.load_workflow(core.workflow_id), manager="m")
    assert restarted.input_sites(1) == {"UKDF": 2 / 3}, "rebuilt from finished jobs, no extra read"


def test_requeue_moves_activated_jobs_back_to_defined_and_ignores_stale_attempts(store: StateStore) -> None:
    core = _submit(store)
    core.start(1.0)
    core.queued([0], ["FrDF"], 1.0)
    job_id = core.first_id
    assert core.requeue([(job_id, 2)], 2.0) == []
    assert core.requeue([(job_id, 1)], 2.0) == [0]
    assert core.site[0] is None and core.counts() == {"defined": 1, "pending": 1}
    assert core.attempt[0] == 2, "a job taken back is released as a new attempt"
    assert core.requeue([(job_id, 2)], 2.0) == [], "only an activated job goes back"


def test_lost_pilot_fails_its_jobs_as_system_errors_and_lost_queue_gives_jobs_back(store: StateStore) -> None:
    core = _submit(store)
    core.start(1.0)
    core.queued([0], ["UKDF"], 1.0)
    assert core.placements() == (set(), {"UKDF"})
    assert core.lost(set(), {"UKDF"}, 2.0) == [0]
    assert core.attempt[0] == 2, "taken back from a lost queue: a new attempt, the old dispatch is stale"
    core.queued([0], ["FrDF"], 2.0)
    core.started([Started(core.first_id, 1, "pilot:UKDF:0", 2.0, 2.5)])
    assert core.placements() == (set(), {"FrDF"}), "a report of the stale attempt changes nothing"
    core.started([Started(core.first_id, 2, "pilot:FrDF:0", 2.0, 2.5)])
    assert core.placements() == ({"pilot:FrDF:0"}, set())
    assert core.lost({"pilot:FrDF:0"}, set(), 3.0) == [0]
    store.apply(core.drain_changes(3.0))
    [attempt] = store.attempts(core.first_id)
    assert (attempt.attempt_nr, attempt.status, attempt.error_class, attempt.site) == (2, "failed", "system", "FrDF")
    assert "pilot:FrDF:0 lost" in (attempt.diag or "")
    assert core.attempt[0] == 3


def test_site_queue_drain_takes_every_job() -> None:
    q = SiteQueueCore("FrDF")
    jobs = [Dispatch(i, 1, 1, 1, "isr", "", "{}", 2048, 1, "FrDF", f"m{i % 2}") for i in range(5)]
    q.put(jobs)
    assert q.drain() == jobs and q.stats()[0] == 0


def test_decisions_and_site_statuses_round_trip(store: StateStore) -> None:
    record = {"site": "FrDF", "weights": {"FrDF": 1.0, "USDF": 0.9}, "filtered": {"UKDF": "no live pilots"}}
    store.apply(ChangeBatch(decisions=[DecisionRow(5, 1, json.dumps(record), 1.0)]))
    assert [json.loads(r.decision) for r in store.decisions(5)] == [record]
    assert store.site_statuses() == {}
    store.set_site_status("UKDF", "offline")
    store.set_site_status("UKDF", "brokeroff")
    assert store.site_statuses() == {"UKDF": "brokeroff"}
