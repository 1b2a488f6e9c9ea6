"""Self-healing without Ray: the supervisor's core, the queue's reservations, timeouts and brokerage."""

from __future__ import annotations

from panray.actors.site_queue import SiteQueueCore
from panray.core.messages import Dispatch, Outcome, Started
from panray.core.outbox import Outbox
from panray.core.supervisor_core import DEAD, SILENT, SupervisorCore
from panray.core.workflow_core import CoreSettings, WorkflowCore
from panray.models import Campaign, Job, Workflow
from panray.sites import JobRequest, SiteLoad, broker, load_catalog
from panray.store import StateStore
from panray.submission import build_campaign

P0, P1 = "pilot:UKDF:0", "pilot:UKDF:1"


def _dispatch(job_id: int, manager: str = "m", payload: str = "x") -> Dispatch:
    return Dispatch(job_id, 1, 1, 1, "isr", payload, "{}", 2048, 1, "UKDF", manager)


def test_a_dead_pilot_is_forgotten_once_restarted_until_it_answers_and_leaves_the_site_view() -> None:
    core = SupervisorCore({"UKDF": [P0, P1]})
    first = core.observe({P0: P0 + "#a", P1: P1 + "#a"})
    assert first.forget == [("UKDF", P0, P0 + "#a"), ("UKDF", P1, P1 + "#a")], "only these incarnations count"
    assert (first.start, first.views) == ([], {"UKDF": [P0, P1]})
    same = core.observe({P0: P0 + "#a", P1: P1 + "#a"})
    assert (same.forget, same.views) == ([], {}), "brokerage is told only changes"

    both = core.observe({P0: DEAD, P1: DEAD})
    assert both.forget == [("UKDF", P0, None), ("UKDF", P1, None)]
    assert both.start == [("UKDF", P0), ("UKDF", P1)]
    assert both.views == {"UKDF": []}, "a site without live pilots takes no work"
    again = core.observe({P0: DEAD, P1: SILENT})
    assert again.forget == [], "forgotten once at the queue"
    assert again.start == [("UKDF", P0)], "the dead handle still held the name: start again"
    assert again.views == {}

    back = core.observe({P0: P0 + "#b"})
    assert (back.forget, back.start, back.views) == ([("UKDF", P0, P0 + "#b")], [], {"UKDF": [P0]})
    assert core.observe({P0: DEAD}).forget == [("UKDF", P0, None)], "a second death is forgotten again"


def test_a_site_without_nodes_gets_no_replacement_pilots_until_its_node_is_back() -> None:
    core = SupervisorCore({"UKDF": [P0, P1], "FrDF": ["pilot:FrDF:0"]})
    core.observe({P0: P0 + "#a", P1: P1 + "#a", "pilot:FrDF:0": "pilot:FrDF:0#a"})
    gone = core.observe({P0: DEAD, P1: DEAD, "pilot:FrDF:0": DEAD}, with_nodes={"FrDF"})
    assert gone.forget == [("UKDF", P0, None), ("UKDF", P1, None), ("FrDF", "pilot:FrDF:0", None)]
    assert gone.start == [("FrDF", "pilot:FrDF:0")], "nothing could run a UKDF pilot now"
    assert gone.views == {"UKDF": [], "FrDF": []}
    assert core.observe({P0: DEAD, P1: DEAD}, with_nodes={"FrDF", "UKDF"}).start == [("UKDF", P0), ("UKDF", P1)]


def test_a_pilot_replaced_behind_the_supervisors_back_forgets_its_old_incarnation() -> None:
    core = SupervisorCore({"UKDF": [P0]})
    core.observe({P0: P0 + "#a"})
    assert core.observe({P0: P0 + "#b"}).forget == [("UKDF", P0, P0 + "#b")]


def test_a_late_site_joins_the_supervision() -> None:
    core = SupervisorCore()
    assert core.observe({}).views == {}
    core.add({"FrDF": ["pilot:FrDF:0"]})
    assert core.observe({"pilot:FrDF:0": "pilot:FrDF:0#a"}).views == {"FrDF": ["pilot:FrDF:0"]}


def test_queue_reserves_what_a_pilot_took_until_it_ended_and_gives_it_back_when_the_pilot_dies() -> None:
    q = SiteQueueCore("UKDF")
    old, new, other = P0 + "#a", P0 + "#b", P1 + "#a"
    q.put([_dispatch(k) for k in range(1, 7)] + [_dispatch(9, "other")])
    taken = q.take(old, 3)
    assert [d.job_id for d in taken] == [1, 2, 3]
    assert q.stats() == (4, 3, 1)
    q.take(other, 1)
    assert q.take(old, 1, ended=[("m", 1), ("m", 2)]) == [_dispatch(5)]
    assert q.stats() == (2, 3, 2), "running = taken and not reported ended"
    q.take(new, 1)
    gone = q.forget_pilot(P0, keep=new)
    assert sorted(d.job_id for d in gone) == [3, 5], "the old incarnation's jobs, not its replacement's"
    assert q.stats() == (1, 2, 2), "a dead pilot's slots no longer count as running"
    assert q.take(old, 4) == [], "a dead incarnation's late pull takes nothing"
    assert q.forget_pilot(P0, keep=new) == []
    assert [d.job_id for d in q.forget_pilot(P0)] == [6], "the replacement died too"


def _core(store: StateStore, n: int = 2, **settings: float) -> WorkflowCore:
    wf = Workflow(name="heal", jobs=[Job(name=f"j{k}", label="isr", command=["true"]) for k in range(n)])
    [sub] = store.submit(build_campaign(Campaign(name="c", workflows=[wf]), load_catalog())).workflows
    return WorkflowCore(store.load_workflow(sub.workflow_id), CoreSettings(**settings), manager="m")


def test_jobs_queued_at_a_site_without_pilots_are_taken_back_after_the_timeout_as_new_attempts(
        store: StateStore) -> None:
    core = _core(store, activated_timeout=10.0)
    assert core.start(0.0) == [0, 1]
    core.queued([0], ["UKDF"], 1.0)
    core.queued([1], ["FrDF"], 1.0)
    assert core.expire(5.0, frozenset({"UKDF"})) == [], "not yet"
    assert core.expire(20.0) == [], "UKDF has pilots: its queue only waits"
    assert core.expire(20.0, frozenset({"UKDF"})) == [0]
    assert (core.counts(), core.attempt[0], core.attempt[1]) == ({"defined": 1, "activated": 1}, 2, 1)
    core.started([Started(core.first_id, 1, "pilot:UKDF:0", 21.0, 21.0)])
    assert core.counts() == {"defined": 1, "activated": 1}, "the stale attempt's pilot report is ignored"


def test_a_system_error_retry_avoids_the_site_that_lost_the_job_only_while_another_can_take_it(
        store: StateStore) -> None:
    core = _core(store, n=1)
    core.start(0.0)
    core.queued([0], ["UKDF"], 1.0)
    core.started([Started(core.first_id, 1, "pilot:UKDF:0", 1.0, 1.0)])
    assert core.lost({"pilot:UKDF:0"}, set(), 2.0) == [0]
    assert core.avoid == {0: "UKDF"}
    sites = [SiteLoad("UKDF", share=0.25, live_pilots=2), SiteLoad("FrDF", share=0.4, live_pilots=2, n_queued=5)]
    [d] = broker([JobRequest(avoid_site=core.avoid[0])], sites, explain=True)
    assert d.site == "FrDF" and "just lost" in d.filtered["UKDF"]
    [alone] = broker([JobRequest(avoid_site="UKDF")], sites[:1])
    assert alone.site == "UKDF", "the only candidate still takes it"
    core.queued([0], ["FrDF"], 3.0)
    assert core.avoid == {}
    core.started([Started(core.first_id, 2, "pilot:FrDF:0", 3.0, 3.0)])
    core.ended([Outcome(core.first_id, 2, "pilot:FrDF:0", "FrDF", 3.0, 3.0, 4.0, 0, None, None, None, None)])
    assert core.done


def test_a_pilot_may_start_only_the_current_attempt_of_a_job_no_other_pilot_holds(store: StateStore) -> None:
    core = _core(store, n=2)
    core.start(0.0)
    core.queued([0, 1], ["UKDF", "UKDF"], 1.0)
    first, second = core.first_id, core.first_id + 1
    assert core.requeue([(second, 1)], 2.0) == [1]
    assert core.claim("pilot:UKDF:0", [(first, 1), (second, 1), (second, 2), (9999, 1)], 3.0) == [
        True, False, True, False]
    assert core.counts() == {"sent": 2}
    assert core.claim("pilot:UKDF:1", [(first, 1)], 3.5) == [False], "a second claim of one attempt is refused"
    assert core.pilot[0] == core.pilot[1] == "pilot:UKDF:0"
    assert core.requeue([(first, 1)], 4.0) == [], "a claimed attempt is never taken back"
    assert core.placements() == ({"pilot:UKDF:0"}, set())


def test_a_restarted_manager_adopts_what_live_pilots_run_and_hold_and_reruns_nothing_finished(
        store: StateStore) -> None:
    """The store lags the lost manager: it says activated for jobs that ran, ended or were re-attempted."""
    core = _core(store, n=4)
    core.start(0.0)
    core.queued([0, 1, 2, 3], ["UKDF"] * 4, 1.0)
    store.apply(core.drain_changes(1.0))
    restarted = WorkflowCore(store.load_workflow(core.workflow_id), CoreSettings(), manager="m")
    first = restarted.first_id
    held = [(first, 1, "pilot:UKDF:0"), (first + 1, 2, "pilot:UKDF:1")]  # job 1: the lost manager's attempt 2
    ended = [Outcome(first + 2, 1, "pilot:UKDF:0", "UKDF", 1.0, 1.5, 2.0, 0, None, None, None, None)]
    assert restarted.adopt(held, [Started(first + 1, 2, "pilot:UKDF:1", 1.2, 1.3)], ended, 3.0) == []
    assert restarted.start(3.0) == [3], "only the job no pilot holds is released again"
    assert list(restarted.attempt) == [1, 2, 1, 2]
    assert restarted.counts() == {"sent": 1, "running": 1, "finished": 1, "defined": 1}
    assert (restarted.pilot[0], restarted.pilot[1]) == ("pilot:UKDF:0", "pilot:UKDF:1")
    assert restarted.claim("pilot:UKDF:1", [(first, 1)], 3.5) == [False], "job 0 stays with its pilot"


def test_the_outbox_keeps_reports_until_acknowledged_and_resends_them_as_one_batch() -> None:
    box = Outbox()
    s1, s2 = Started(1, 1, "p", 0.0, 1.0), Started(2, 1, "p", 0.0, 1.0)
    o1 = Outcome(1, 1, "p", "UKDF", 0.0, 1.0, 2.0, 0, None, None, None, None)
    box.add_started("m", s1)
    assert box.flush() == {"m": (1, [s1], [])}
    box.add_started("m", s2)
    box.add_ended("m", [o1])
    assert box.take_ended_keys() == [("m", 1)]
    assert box.held("m") == ([s1, s2], [o1]), "new reports count as held too"
    assert box.flush() == {"m": (2, [s2], [o1])}
    assert box.flush() == {}
    box.ack("m", 1)
    assert box.resend("m") == (2, [s2], [o1]) and box.waiting() == ["m"]
    box.ack("m", 2)
    assert box.resend("m") is None and box.waiting() == [] and box.held("m") == ([], [])
    box.add_ended("gone", [o1])
    box.flush()
    box.drop("gone")
    assert box.waiting() == [] and box.held("gone") == ([], []), "a manager gone for good is not waited for"


def test_an_adopted_newer_attempt_belongs_to_the_pilot_that_runs_it(store: StateStore) -> None:
    core = _core(store, n=1)
    core.start(0.0)
    core.queued([0], ["UKDF"], 1.0)
    core.started([Started(core.first_id, 1, "pilot:UKDF:0", 1.0, 1.0)])
    store.apply(core.drain_changes(1.0))  # stored: attempt 1 running on pilot:UKDF:0
    restarted = WorkflowCore(store.load_workflow(core.workflow_id), CoreSettings(), manager="m")
    restarted.adopt([(restarted.first_id, 2, "pilot:FrDF:1")], [], [], 2.0)
    assert restarted.start(2.0) == []
    assert (restarted.attempt[0], restarted.pilot[0]) == (2, "pilot:FrDF:1")
    assert restarted.placements() == ({"pilot:FrDF:1"}, set()), "the liveness check watches the right pilot"


def test_jobs_a_dead_pilot_had_claimed_fail_when_its_queue_gives_them_back(store: StateStore) -> None:
    core = _core(store, n=2)
    core.start(0.0)
    core.queued([0, 1], ["UKDF", "UKDF"], 1.0)
    first = core.first_id
    assert core.claim("pilot:UKDF:0", [(first, 1)], 1.5) == [True]
    assert core.requeue([(first, 1), (first + 1, 1)], 2.0) == [1], "without a lost pilot only queued jobs return"
    assert core.requeue([(first, 1)], 2.5, lost_pilot="pilot:UKDF:0") == [0]
    assert (core.attempt[0], core.error_class[0], core.avoid) == (2, None, {0: "UKDF"})
    [attempt] = core._attempts
    assert (attempt.status, attempt.error_class, attempt.diag.split(";")[0]) == ("failed", "system", "pilot pilot:UKDF:0 lost")
