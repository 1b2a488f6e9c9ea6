"""Prompt processing: hashing and caches without Ray, then the USDF pool on a one-node cluster."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import panray  # noqa: F401  (before ray: loopback only)
from panray import prompt
from panray.actors.prompt_pool import prompt_pilot_name
from panray.config import Settings
from panray.core.prompt_core import CalibKey, PilotConfig, PilotCore, Push, RendezvousRing, TaskConfig
from panray.core.prompt_task import DispatchCore, percentiles
from panray.exceptions import PanrayError, PromptPoolError, UnknownDetectorError, UnknownInstrumentError
from panray.store import open_store

PILOTS = [prompt_pilot_name("USDF", k) for k in range(4)]
ALL = list(range(189))

# -- without Ray -------------------------------------------------------------------------------


def test_ring_is_deterministic_and_spreads_detectors() -> None:
    a, b = RendezvousRing(PILOTS).assign(ALL), RendezvousRing(reversed(PILOTS)).assign(ALL)
    assert a == b
    assert sorted(d for ds in a.values() for d in ds) == ALL
    assert set(a) == set(PILOTS) and min(len(ds) for ds in a.values()) >= 30


def test_ring_moves_only_the_keys_it_must() -> None:
    ring = RendezvousRing(PILOTS)
    before = {d: ring.owner(d) for d in ALL}
    ring.remove(PILOTS[1])
    after = {d: ring.owner(d) for d in ALL}
    moved = {d for d in ALL if before[d] != after[d]}
    assert moved == {d for d in ALL if before[d] == PILOTS[1]}
    assert PILOTS[1] not in after.values()
    ring.add(PILOTS[1])
    assert {d: ring.owner(d) for d in ALL} == before


def test_empty_ring_and_core_without_pilots_refuse() -> None:
    with pytest.raises(LookupError):
        RendezvousRing().owner(0)
    core = DispatchCore("LSSTCam", PILOTS[:1])
    assert core.plan([3, 4]) == {PILOTS[0]: [3, 4]}
    with pytest.raises(PromptPoolError, match=r"no live prompt pilots for LSSTCam; lost: prompt-pilot:USDF:0"):
        core.pilot_lost(PILOTS[0], [3, 4])
    assert core.remapped == 2


def test_dispatch_core_remaps_a_lost_pilots_detectors_to_survivors() -> None:
    core = DispatchCore("LSSTCam", PILOTS)
    plan = core.plan(ALL)
    moved = core.pilot_lost(PILOTS[2], plan[PILOTS[2]])
    assert PILOTS[2] not in moved and sorted(d for ds in moved.values() for d in ds) == plan[PILOTS[2]]
    assert core.stats().lost_pilots == [PILOTS[2]] and core.remapped == len(plan[PILOTS[2]])
    assert all(core.plan(ds) == {p: ds} for p, ds in plan.items() if p != PILOTS[2])


def _counting_loader(key: CalibKey, calib_dir: Path) -> str:
    return f"{key.instrument}/{key.detector}/{key.calib_version}"


def _failing_payload(key: CalibKey, visit: int, calib: Any) -> int:
    if key.detector == 2:
        raise RuntimeError("bad pixel")
    return 3 if key.detector == 1 else 0


def _push(dets: tuple[int, ...], version: str = "v1", payload: Any = "panray.core.prompt_core:noop_payload") -> Push:
    return Push("LSSTCam", 7, version, 0.0, dets, payload, "", 1000)


def test_pilot_core_caches_by_detector_and_calibration_version(tmp_path: Path) -> None:
    core = PilotCore("p", "USDF", PilotConfig(loader=_counting_loader, calib_dir=str(tmp_path)))
    assert [r.hit for r in core.run(_push((0, 1)))] == [False, False]
    assert [r.hit for r in core.run(_push((0, 1, 2)))] == [True, True, False]
    assert [r.hit for r in core.run(_push((0,), version="v2"))] == [False]
    assert (core.hits, core.misses) == (2, 4)
    assert all(r.error is None and r.exit_code == 0 for r in core.run(_push((0, 1))))


def test_pilot_core_turns_payload_failures_into_results(tmp_path: Path) -> None:
    core = PilotCore("p", "USDF", PilotConfig(calib_dir=str(tmp_path), slots=2))
    out = {r.detector: r for r in core.run(_push((0, 1, 2), payload=_failing_payload))}
    assert (out[0].exit_code, out[0].error) == (0, None)
    assert (out[1].exit_code, out[1].error) == (3, "payload returned 3")
    assert out[2].exit_code is None and out[2].error == "RuntimeError: bad pixel"
    assert (tmp_path / "LSSTCam" / "v1" / "det002.calib").stat().st_size > 0  # the default loader's file


@pytest.mark.parametrize(
    ("instrument", "detectors", "error", "message"),
    [
        ("HSC", [0], UnknownInstrumentError, "unknown instrument 'HSC'; known instruments: LATISS, LSSTCam, LSSTComCam"),
        ("LSSTCam", [0, 189], UnknownDetectorError, "unknown LSSTCam detector 189; valid detectors are 0..188"),
        ("LSSTCam", [-1, "3"], UnknownDetectorError, "unknown LSSTCam detectors -1, '3'; valid detectors are 0..188"),
        ("LATISS", [1], UnknownDetectorError, "unknown LATISS detector 1; valid detectors are 0..0"),
        ("LSSTCam", [4, 4], PanrayError, "LSSTCam detectors named more than once: 4"),
    ],
)
def test_bad_notifications_name_the_value_and_the_range(instrument: str, detectors: list[Any], error: type,
                                                        message: str) -> None:
    with pytest.raises(error) as err:
        prompt.notify(visit=1, detectors=detectors, instrument=instrument)  # fails before any Ray call
    assert str(err.value) == message


def test_percentiles_are_nearest_rank() -> None:
    assert percentiles(range(1, 101)) == (50, 95, 99, 100)
    assert percentiles([5.0]) == (5.0, 5.0, 5.0, 1)


# -- on a cluster ------------------------------------------------------------------------------


def gated_payload(key: CalibKey, visit: int, calib: Any) -> int:
    """Blocks in the pilot until the test's gate opens (it never opens for the pilot being killed)."""
    import ray

    me = ray.get_runtime_context().get_actor_id()
    ray.get(ray.get_actor("test-gate", namespace="panray").arrive.remote(me))
    return 0


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    import ray

    settings = Settings(home=tmp_path_factory.mktemp("prompt"))
    tests_dir = str(Path(__file__).parent)
    if ray.is_initialized():  # the session's 3-site cluster: this module needs its own one-node Ray
        ray.shutdown()
    ray.init(address="local", num_cpus=2, resources={"site:USDF": 1000}, namespace="panray",
             include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": tests_dir}})
    try:
        prompt.start(settings)
        yield settings
    finally:
        ray.shutdown()


def test_affinity_is_stable_and_the_second_visit_hits_the_cache(pool: Settings) -> None:
    first = prompt.notify(visit=100, calib_version="affinity")
    second = prompt.notify(visit=101, calib_version="affinity")
    assert len(first.jobs) == len(second.jobs) == 189 and not first.failed and not second.failed
    assert first.placement == second.placement
    assert first.placement == {d: p for p, ds in RendezvousRing(PILOTS).assign(ALL).items() for d in ds}
    assert (first.misses, second.hits) == (189, 189)
    assert prompt.flush()
    stats = prompt.stats("LSSTCam")[0]
    assert stats.visits >= 2 and stats.unrecorded == 0 and stats.record_ms.n >= 378 and not stats.record_errors


def test_visits_are_recorded_in_the_state_store(pool: Settings) -> None:
    prompt.notify(visit=102, detectors=[5, 6, 7], calib_version="affinity")
    assert prompt.flush()
    store = open_store(pool.resolved_db_url)
    try:
        [wf] = [w for w in store.workflows() if w.name == "prompt-LSSTCam-visit-102"]
        assert wf.status == "Finished" and wf.home_site == "USDF"
        jobs = store.jobs(wf.workflow_id)
        assert [json.loads(j.tags)["detector"] for j in jobs] == [5, 6, 7]
        assert {j.status for j in jobs} == {"finished"} and all(j.pilot in PILOTS for j in jobs)
        history = store.history(jobs[0].job_id)  # the workflow core's path, each move with its cause
        assert [(h.previous, h.status) for h in history] == [
            ("pending", "defined"), ("defined", "assigned"), ("assigned", "activated"), ("activated", "sent"),
            ("sent", "starting"), ("starting", "running"), ("running", "finished")]
        assert history[-1].cause == "pilot report"
    finally:
        store.close()


def test_subprocess_payload_runs_through_the_payload_runner(pool: Settings) -> None:
    prompt.start(pool, tasks={"LSSTComCam": TaskConfig(command='echo "det=$PANRAY_DETECTOR visit=$PANRAY_VISIT"')})
    report = prompt.notify(visit=9, detectors=[0, 8], instrument="LSSTComCam")
    assert not report.failed and [j.exit_code for j in report.jobs] == [0, 0]
    out = pool.work_dir / "prompt" / "prompt_LSSTComCam_9" / "8.1" / "payload.stdout"
    assert out.read_text() == "det=8 visit=9\n"


def test_prompt_and_batch_work_never_mix(pool: Settings) -> None:
    import ray

    from panray.actors.brokerage import Brokerage
    from panray.actors.names import pilot_name, queue_name
    from panray.core.messages import Dispatch
    from panray.actors.site_queue import SiteQueue
    from panray.sites import load_catalog

    catalog = load_catalog()
    queue = SiteQueue.options(name=queue_name("USDF"), resources={"site:USDF": 1}).remote("USDF")
    batch = [Dispatch(j, 1, 1, 1, "isr", "", "{}", 1000, 1, "USDF", "workflow-manager:1") for j in range(50)]
    assert ray.get(queue.put.remote(batch)) == 50
    brokerage = Brokerage.remote(catalog)
    batch_pilots = [pilot_name("USDF", k) for k in range(catalog.get("USDF").pilots)]
    ray.get(brokerage.register_pilots.remote("USDF", batch_pilots))

    report = prompt.notify(visit=103, calib_version="affinity")
    assert len(report.jobs) == 189 and set(report.placement.values()) <= set(PILOTS)
    assert ray.get(queue.stats.remote()) == (50, 0, 0)  # nothing taken, no prompt pilot ever asked
    assert not set(ray.get(brokerage.pilot_names.remote())) & set(PILOTS)
    ray.kill(queue)


class _Gate:
    """Holds gated payloads until opened; payloads of the pilot ``kept`` stay held for good."""

    def __init__(self) -> None:
        self.arrived: set[str] = set()
        self.changed = asyncio.Event()
        self.opened = asyncio.Event()
        self.kept: str | None = None

    async def arrive(self, actor_id: str) -> None:
        self.arrived.add(actor_id)
        self.changed.set()
        await self.opened.wait()
        if actor_id == self.kept:
            await asyncio.Event().wait()

    async def wait_arrivals(self, n: int) -> list[str]:
        while len(self.arrived) < n:
            self.changed.clear()
            await self.changed.wait()
        return sorted(self.arrived)

    async def open(self, kept: str) -> None:
        self.kept = kept
        self.opened.set()


def test_killed_pilot_mid_visit_is_remapped_and_the_visit_completes(pool: Settings) -> None:
    import ray

    from panray.actors.names import NAMESPACE

    warm = prompt.notify(visit=200, calib_version="kill")
    owned = Counter(warm.placement.values())
    gate = ray.remote(num_cpus=0)(_Gate).options(name="test-gate", namespace=NAMESPACE).remote()
    prompt.start(pool, tasks={"LSSTCam": TaskConfig(payload="test_prompt:gated_payload")})
    try:
        pending = prompt.notify_async(visit=201, calib_version="kill")
        assert len(ray.get(gate.wait_arrivals.remote(4), timeout=60)) == 4  # every pilot is mid-visit
        victim_name = PILOTS[1]
        victim = ray.get_actor(victim_name, namespace=NAMESPACE)
        victim_id = victim._actor_id.hex()
        ray.kill(victim)
        ray.get(gate.open.remote(victim_id))
        report = ray.get(pending, timeout=60)
    finally:
        prompt.start(pool, tasks={"LSSTCam": TaskConfig()})  # a fresh pilot under the dead one's name
        ray.kill(gate)

    assert sorted(report.placement) == ALL and not report.failed
    assert report.lost_pilots == [victim_name] and victim_name not in report.placement.values()
    assert report.remapped == sorted(d for d, p in warm.placement.items() if p == victim_name)
    assert len(report.remapped) == owned[victim_name] > 0
    assert (report.misses, report.hits) == (owned[victim_name], 189 - owned[victim_name])
    assert all(report.placement[d] == p for d, p in warm.placement.items() if p != victim_name)
    stats = prompt.stats("LSSTCam")[0]
    assert stats.remapped >= owned[victim_name] and sorted(stats.live_pilots) == PILOTS

    after = prompt.notify(visit=202, calib_version="kill")
    assert after.placement == warm.placement  # the restarted pilot owns its detectors again
    assert after.misses == owned[victim_name]  # ... with an empty cache
