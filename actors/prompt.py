"""Prompt processing: warm pilots that keep calibrations cached, and a standing task per instrument.

A notification wakes the instrument's :class:`PromptDispatcher` (the standing task). It maps each
detector to a live :class:`PromptPilot` by rendezvous hashing, so a detector lands on the same
pilot visit after visit and finds its calibration cached, and pushes each pilot its detectors in
one direct actor call: no queue, no brokerage, no polling. A call that fails with
``RayActorError`` marks that pilot dead; its detectors re-map to the survivors (whose cache misses
are counted) and are pushed again, so the visit still completes.

Prompt pilots hold no site-queue handle and are never registered with brokerage: batch work cannot
reach them. The logic lives in Ray-free classes (:class:`RendezvousRing`, :class:`PilotCore`,
:class:`DispatchCore`); the actors are thin shells. Each visit is recorded in the state store after it
ends, by a recorder actor in its own process: SQL never runs on the dispatch path.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import ray
from ray.exceptions import RayActorError

from panray.actors.names import NAMESPACE
from panray.core.messages import Dispatch
from panray.core.payload_runner import PayloadProcess, RunnerServices
from panray.payload import encode_command
from panray.prompt import PromptPoolError, check_detectors
from panray.retry import PAYLOAD
from panray.store.base import ChangeBatch, SubmittedCampaign

log = logging.getLogger(__name__)

DEFAULT_LOADER = "panray.actors.prompt:simulated_load"
DEFAULT_PAYLOAD = "panray.actors.prompt:noop_payload"
LATENCY_WINDOW = 100_000  #: latencies kept per standing task for stats()


def prompt_pilot_name(site: str, n: int) -> str:
    return f"prompt-pilot:{site}:{n}"


def prompt_task_name(instrument: str) -> str:
    return f"prompt-task:{instrument}"


# -- what travels ------------------------------------------------------------------------------


class CalibKey(NamedTuple):
    """What a cached calibration is keyed by; the instrument keeps detector numbers apart."""

    instrument: str
    detector: int
    calib_version: str


class Push(NamedTuple):
    """One pilot's share of one visit: a single actor call carries all its detectors."""

    instrument: str
    visit: int
    calib_version: str
    notified: float  #: wall time of the notification
    detectors: tuple[int, ...]
    payload: str  #: "module:function" run in the pilot, when ``command`` is empty
    command: str  #: encoded argv (panray.payload) run as a subprocess; "" = use ``payload``
    request_memory: int  #: MB, for the subprocess memory monitor


class JobResult(NamedTuple):
    """One detector's job as the pilot ran it; times are wall clock (``time.time()``)."""

    detector: int
    pilot: str
    hit: bool  #: calibration was in the pilot's cache
    notified: float
    started: float  #: the pilot began the job (dispatch done)
    payload_start: float  #: calibration ready, payload begins
    end: float
    exit_code: int | None
    error: str | None


@dataclass(frozen=True, slots=True)
class PilotConfig:
    """How prompt pilots fill their cache and where they work.

    ``loader`` is a callable or an importable ``"module:function"``; it is called as
    ``loader(key: CalibKey, calib_dir: Path)`` and returns whatever the payload needs.
    """

    loader: str | Callable[[CalibKey, Path], Any] = DEFAULT_LOADER
    calib_dir: str = "/tmp/panray-calib"
    work_dir: str = "/tmp/panray-prompt"
    slots: int = 1  #: payloads run at once per pilot; 1 runs them in the receiving thread


@dataclass(frozen=True, slots=True)
class TaskConfig:
    """What a standing task runs per detector: an in-process function or a subprocess command.

    ``payload`` (``"module:function"``) is called as ``f(key: CalibKey, visit: int, calib)`` and
    returns an exit code (``None`` = 0). A non-empty ``command`` (argv list or shell line) runs
    instead, through the batch pilots' :class:`PayloadProcess`, with ``PANRAY_VISIT``,
    ``PANRAY_DETECTOR`` and ``PANRAY_CALIB`` set.
    """

    payload: str = DEFAULT_PAYLOAD
    command: list[str] | str | None = None
    request_memory: int = 4000


def simulated_load(key: CalibKey, calib_dir: Path) -> bytes:
    """Default loader: writes a small calibration file once per key, then reads it back."""
    path = Path(calib_dir) / key.instrument / key.calib_version / f"det{key.detector:03d}.calib"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{threading.get_ident()}.tmp")
        tmp.write_bytes(hashlib.blake2b(repr(key).encode()).digest() * 1024)
        tmp.replace(path)
    return path.read_bytes()


def noop_payload(key: CalibKey, visit: int, calib: Any) -> int:
    """Default payload: touches the calibration and succeeds (the benchmark's warm path)."""
    return 0 if calib is not None else 1


def resolve(ref: str | Callable[..., Any]) -> Callable[..., Any]:
    """A callable from itself or from ``"package.module:function"``."""
    if callable(ref):
        return ref
    module, _, name = ref.partition(":")
    if not name:
        raise ValueError(f"expected 'module:function', got {ref!r}")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


# -- consistent hashing ------------------------------------------------------------------------


def _score(member: str, key: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"{member}/{key}".encode(), digest_size=8).digest(), "big")


class RendezvousRing:
    """Highest-random-weight hashing: a key's owner is the member with the highest hash score.

    Removing a member moves only that member's keys; adding one moves only the keys it wins.
    Owners are memoised, so the per-visit cost is a dict lookup per detector.

    Examples:
        >>> ring = RendezvousRing(["a", "b", "c"])
        >>> before = ring.assign(range(12))
        >>> ring.remove("b")
        >>> after = ring.assign(range(12))
        >>> all(after[m] == sorted(set(before[m]) | set(after[m])) for m in ("a", "c"))
        True
    """

    def __init__(self, members: Iterable[str] = ()):
        self._members: list[str] = sorted(set(members))
        self._owner: dict[int, str] = {}

    @property
    def members(self) -> list[str]:
        return list(self._members)

    def add(self, member: str) -> None:
        if member not in self._members:
            self._members = sorted([*self._members, member])
            self._owner.clear()

    def remove(self, member: str) -> None:
        if member in self._members:
            self._members.remove(member)
            self._owner = {k: m for k, m in self._owner.items() if m != member}

    def owner(self, key: int) -> str:
        m = self._owner.get(key)
        if m is None:
            if not self._members:
                raise LookupError("the ring has no members")
            m = self._owner[key] = max(self._members, key=lambda member: _score(member, key))
        return m

    def assign(self, keys: Iterable[int]) -> dict[str, list[int]]:
        """Keys grouped by owner, each list in the keys' order."""
        out: dict[str, list[int]] = {}
        for k in keys:
            out.setdefault(self.owner(k), []).append(k)
        return out


# -- the pilot ---------------------------------------------------------------------------------


class PilotCore:
    """A prompt pilot without Ray: the calibration cache and the running of pushed jobs."""

    def __init__(self, name: str, site: str, config: PilotConfig):
        self.name, self.site, self.config = name, site, config
        self._load = resolve(config.loader)
        self._calib_dir = Path(config.calib_dir)
        self._services = RunnerServices(work_dir=Path(config.work_dir))
        self._payloads: dict[str, Callable[..., Any]] = {}
        self._cache: dict[CalibKey, Any] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(config.slots, thread_name_prefix="prompt") if config.slots > 1 else None
        self.hits = self.misses = 0

    def calibration(self, key: CalibKey) -> tuple[Any, bool]:
        """The cached calibration for ``key`` (loaded on a miss) and whether it was a hit."""
        calib = self._cache.get(key)
        if calib is not None:
            with self._lock:
                self.hits += 1
            return calib, True
        calib = self._load(key, self._calib_dir)
        with self._lock:
            self.misses += 1
            self._cache[key] = calib
        return calib, False

    def run(self, push: Push) -> list[JobResult]:
        """Runs every detector of ``push``; payload errors become results, never exceptions."""
        if self._pool is None:
            return [self._run_one(push, d) for d in push.detectors]
        return list(self._pool.map(lambda d: self._run_one(push, d), push.detectors))

    def stats(self) -> dict[str, Any]:
        return {"pilot": self.name, "site": self.site, "cached": len(self._cache), "hits": self.hits,
                "misses": self.misses}

    def _run_one(self, push: Push, detector: int) -> JobResult:
        started = time.time()
        hit, payload_start = False, started
        try:
            calib, hit = self.calibration(CalibKey(push.instrument, detector, push.calib_version))
            payload_start = time.time()
            if push.command:
                return self._run_subprocess(push, detector, calib, started)
            code = self._payload(push.payload)(CalibKey(push.instrument, detector, push.calib_version),
                                               push.visit, calib)
            code = 0 if code is None else int(code)
            error = None if code == 0 else f"payload returned {code}"
        except Exception as exc:  # a failing loader or payload fails this job, not the visit
            code, error = None, f"{type(exc).__name__}: {exc}"[:500]
        return JobResult(detector, self.name, hit, push.notified, started, payload_start, time.time(), code, error)

    def _payload(self, ref: str) -> Callable[..., Any]:
        fn = self._payloads.get(ref)
        if fn is None:
            fn = self._payloads[ref] = resolve(ref)
        return fn

    def _run_subprocess(self, push: Push, detector: int, calib: Any, started: float) -> JobResult:
        env = {"PANRAY_VISIT": str(push.visit), "PANRAY_DETECTOR": str(detector),
               "PANRAY_INSTRUMENT": push.instrument, "PANRAY_CALIB": str(calib)[:4096]}
        d = Dispatch(job_id=detector, attempt_nr=1, workflow_id=push.visit, task_id=0,
                     label=f"prompt:{push.instrument}", payload=push.command, environment=json.dumps(env),
                     request_memory=push.request_memory, request_cpus=1, site=self.site, manager=f"prompt:{push.instrument}:{push.visit}")
        r = PayloadProcess(d, self.name, self._services).run()  # in <work_dir>/prompt_<instrument>_<visit>/
        return JobResult(detector, self.name, True, push.notified, started, r.start_time, r.end_time,
                         r.exit_code, r.diag)


@ray.remote(num_cpus=0, max_concurrency=8)
class PromptPilot:
    """A semi-persistent prompt pilot; named ``prompt-pilot:<site>:<n>``. It pulls nothing."""

    def __init__(self, name: str, site: str, config: PilotConfig):
        self._core = PilotCore(name, site, config)

    def ready(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def run(self, push: Push) -> list[JobResult]:
        return self._core.run(push)

    def stats(self) -> dict[str, Any]:
        return self._core.stats()


def run_cold(config: PilotConfig, push: Push) -> list[JobResult]:
    """The cold path the benchmark compares with: a fresh pilot core (empty cache) per call."""
    return PilotCore("cold", "", config).run(push)


# -- the standing task -------------------------------------------------------------------------


class Percentiles(NamedTuple):
    p50: float
    p95: float
    p99: float
    n: int


def percentiles(values: Iterable[float]) -> Percentiles:
    """Nearest-rank p50/p95/p99 (NaN when empty)."""
    v = sorted(values)
    if not v:
        nan = float("nan")
        return Percentiles(nan, nan, nan, 0)

    def rank(q: float) -> float:
        return v[min(len(v) - 1, max(0, -(-len(v) * q // 100) - 1))]  # ceil(n q / 100) - 1

    return Percentiles(rank(50), rank(95), rank(99), len(v))


@dataclass(slots=True)
class VisitReport:
    """What one notification produced; latencies in milliseconds."""

    instrument: str
    visit: int
    jobs: list[JobResult]
    remapped: list[int]  #: detectors pushed again after their pilot died
    lost_pilots: list[str]

    @property
    def placement(self) -> dict[int, str]:
        return {j.detector: j.pilot for j in self.jobs}

    @property
    def failed(self) -> list[int]:
        return sorted(j.detector for j in self.jobs if j.error is not None)

    @property
    def hits(self) -> int:
        return sum(j.hit for j in self.jobs)

    @property
    def misses(self) -> int:
        return len(self.jobs) - self.hits

    @property
    def start_ms(self) -> Percentiles:
        return percentiles((j.payload_start - j.notified) * 1e3 for j in self.jobs)


@dataclass(slots=True)
class PromptStats:
    """A standing task's counters since it started; latencies in milliseconds."""

    instrument: str
    visits: int
    jobs: int
    failed: int
    hits: int
    misses: int
    remapped: int
    live_pilots: list[str]
    lost_pilots: list[str]
    dispatch_ms: Percentiles  #: notification -> the pilot begins the job
    start_ms: Percentiles  #: notification -> payload start (calibration ready)
    record_ms: Percentiles  #: payload end -> committed in the state store
    unrecorded: int = 0  #: jobs whose visit the writer has not committed yet
    record_errors: list[str] = field(default_factory=list)

    @property
    def hit_rate(self) -> float:
        n = self.hits + self.misses
        return self.hits / n if n else float("nan")


class DispatchCore:
    """The standing task without Ray: placement over live pilots, re-mapping, counters."""

    def __init__(self, instrument: str, pilots: Iterable[str]):
        check_detectors(instrument, ())
        self.instrument = instrument
        self.ring = RendezvousRing(pilots)
        self.lost: list[str] = []
        self.visits = self.jobs = self.failed = self.hits = self.misses = self.remapped = 0
        self._lock = threading.Lock()
        self._dispatch: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._start: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._record: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.unrecorded = 0
        self.record_errors: list[str] = []

    def plan(self, detectors: Sequence[int]) -> dict[str, list[int]]:
        """Detectors grouped by the pilot that owns them; raises on bad detectors or no pilots."""
        check_detectors(self.instrument, detectors)
        return self._assign(detectors)

    def pilot_lost(self, pilot: str, detectors: Sequence[int]) -> dict[str, list[int]]:
        """``pilot`` died holding ``detectors``: drop it and place them on the survivors."""
        if pilot in self.ring.members:
            self.ring.remove(pilot)
            self.lost.append(pilot)
        self.remapped += len(detectors)
        return self._assign(detectors)

    def set_pilots(self, pilots: Iterable[str]) -> None:
        wanted = set(pilots)
        for p in self.ring.members:
            if p not in wanted:
                self.ring.remove(p)
        for p in sorted(wanted):
            self.ring.add(p)
        self.lost = [p for p in self.lost if p not in wanted]

    def visit_done(self, report: VisitReport) -> None:
        with self._lock:
            self.visits += 1
            self.jobs += len(report.jobs)
            self.failed += len(report.failed)
            self.hits += report.hits
            self.misses += report.misses
            self.unrecorded += len(report.jobs)
            for j in report.jobs:
                self._dispatch.append((j.started - j.notified) * 1e3)
                self._start.append((j.payload_start - j.notified) * 1e3)

    def recorded(self, jobs: Sequence[JobResult], at: float, error: str | None = None) -> None:
        with self._lock:
            self.unrecorded -= len(jobs)
            if error is not None:
                self.record_errors = [*self.record_errors[-9:], error]
                return
            self._record.extend((at - j.end) * 1e3 for j in jobs)

    def stats(self) -> PromptStats:
        with self._lock:
            return PromptStats(
                self.instrument, self.visits, self.jobs, self.failed, self.hits, self.misses, self.remapped,
                self.ring.members, list(self.lost), percentiles(self._dispatch), percentiles(self._start),
                percentiles(self._record), self.unrecorded, list(self.record_errors),
            )

    def _assign(self, detectors: Sequence[int]) -> dict[str, list[int]]:
        if not self.ring.members:
            raise PromptPoolError(
                f"no live prompt pilots for {self.instrument}; lost: {', '.join(self.lost) or 'none'}"
            )
        return self.ring.assign(detectors)


def write_visit(store: Any, report: VisitReport, site: str, task: TaskConfig) -> None:
    """Record one finished visit as a workflow, in one transaction, through the workflow core.

    A visit becomes a campaign of one workflow with one task and one job per detector; the
    pilots' results drive a :class:`WorkflowCore` on the snapshot the submit will store, so every
    job moves through the one transition table (history rows with previous status and cause) and
    task and workflow statuses are derived where every workflow's are. Prompt-specific values
    (visit, detector, cache hit, notification time) go in the job's tags.
    """
    from panray.core.messages import Outcome, Started
    from panray.core.workflow_core import WorkflowCore
    from panray.store import planned_snapshot
    from panray.store.base import NewCampaign, NewJob, NewTask, NewWorkflow

    payload = encode_command(task.command) if task.command else ""
    jobs = sorted(report.jobs, key=lambda j: j.detector)
    name = f"prompt-{report.instrument}-visit-{report.visit}"
    new_jobs = [
        NewJob(i, f"{name}-det{j.detector:03d}", f"prompt:{report.instrument}", 0, "job", payload, "{}",
               task.request_memory, 1, 1, site, None, 0, "[]", "[]",
               json.dumps({"instrument": report.instrument, "visit": report.visit, "detector": j.detector,
                           "calib_hit": j.hit, "notified": j.notified, "callable": task.payload}), "{}")
        for i, j in enumerate(jobs)
    ]
    wf = NewWorkflow(name=name, owner="prompt", home_site=site,
                     tasks=[NewTask(f"prompt:{report.instrument}", 0, len(jobs))], jobs=new_jobs, edges=[],
                     settings=json.dumps({"prompt": True, "remapped": report.remapped}))
    now = time.time()

    def run(sub: SubmittedCampaign) -> ChangeBatch:
        ids = sub.workflows[0]
        core = WorkflowCore(planned_snapshot(wf, ids, sub.campaign_id, now))
        core.start(min((j.notified for j in jobs), default=now))
        first = ids.first_job_id
        core.started([Started(first + i, 1, j.pilot, j.notified, 0.0) for i, j in enumerate(jobs)])
        core.ended([Outcome(first + i, 1, j.pilot, site, j.notified, j.payload_start, j.end, j.exit_code,
                            None if j.error is None else PAYLOAD, j.error, None, None)
                    for i, j in enumerate(jobs)])
        return core.drain_changes(max((j.end for j in jobs), default=now))

    store.submit(NewCampaign(name=name, owner="prompt", workflows=[wf]), then=run)


@ray.remote(num_cpus=0)
class PromptRecorder:
    """Writes visits to the state store in its own process, so SQL never competes with dispatch.

    Calls run one at a time in arrival order; each returns when its visit is committed.
    """

    def __init__(self, db_url: str, site: str):
        from panray.store import open_store

        self._store, self._site = open_store(db_url), site

    def record(self, report: VisitReport, task: TaskConfig) -> tuple[float, str | None]:
        """(commit time, None), or (time, error) when the write failed."""
        try:
            write_visit(self._store, report, self._site, task)
        except Exception as exc:  # dispatch goes on; stats() shows the error
            log.exception("recording prompt visit %s failed", report.visit)
            return time.time(), f"visit {report.visit}: {exc!r}"[:500]
        return time.time(), None


@ray.remote(num_cpus=0)
class PromptDispatcher:
    """The standing prompt task of one instrument; named ``prompt-task:<instrument>``."""

    def __init__(self, instrument: str, pilots: list[str], task: TaskConfig, db_url: str | None, site: str):
        self._core = DispatchCore(instrument, [])
        self._handles: dict[str, Any] = {}
        self._task = task
        self._command = encode_command(task.command) if task.command else ""
        self.set_pilots(pilots)
        self._recorder = None
        if db_url:
            res = ray.get_runtime_context().get_assigned_resources()
            site_res = {k: 1.0 for k in res if k.startswith("site:")}
            self._recorder = PromptRecorder.options(resources=site_res).remote(db_url, site)
        self._recording: set[asyncio.Future[None]] = set()

    def set_pilots(self, pilots: list[str]) -> None:
        """(Re)bind the pool by name; pilots that cannot be found are left out."""
        self._handles = {}
        for name in pilots:
            try:
                self._handles[name] = ray.get_actor(name, namespace=NAMESPACE)
            except ValueError:
                log.warning("prompt pilot %s not found", name)
        self._core.set_pilots(self._handles)

    def configure(self, task: TaskConfig) -> None:
        self._task = task
        self._command = encode_command(task.command) if task.command else ""

    async def notify(self, visit: int, detectors: list[int], calib_version: str, notified: float) -> VisitReport:
        """Push every detector of a visit to its pilot and return once all have run."""
        core, task = self._core, self._task

        def push(dets: list[int]) -> Push:
            return Push(core.instrument, visit, calib_version, notified, tuple(dets), task.payload, self._command,
                        task.request_memory)

        calls = {asyncio.ensure_future(self._call(p, dets, push(dets))) for p, dets in core.plan(detectors).items()}
        jobs: list[JobResult] = []
        remapped: list[int] = []
        lost: list[str] = []
        while calls:
            done, calls = await asyncio.wait(calls, return_when=asyncio.FIRST_COMPLETED)
            for fut in done:
                pilot, dets, out = fut.result()
                if isinstance(out, list):
                    jobs.extend(out)
                    continue
                lost.append(pilot)
                remapped.extend(dets)
                self._handles.pop(pilot, None)
                for p, moved in core.pilot_lost(pilot, dets).items():
                    calls.add(asyncio.ensure_future(self._call(p, moved, push(moved))))
        report = VisitReport(core.instrument, visit, jobs, sorted(remapped), lost)
        core.visit_done(report)
        if self._recorder is not None:
            fut = asyncio.ensure_future(self._record(report))
            self._recording.add(fut)
            fut.add_done_callback(self._recording.discard)
        return report

    async def _record(self, report: VisitReport) -> None:
        assert self._recorder is not None
        try:
            at, error = await self._recorder.record.remote(report, self._task)
        except Exception as exc:  # the recorder process died
            at, error = time.time(), f"visit {report.visit}: {exc!r}"[:500]
        self._core.recorded(report.jobs, at, error)

    async def _call(self, pilot: str, dets: list[int], push: Push) -> tuple[str, list[int], list[JobResult] | None]:
        try:
            return pilot, dets, await self._handles[pilot].run.remote(push)
        except (RayActorError, KeyError):
            return pilot, dets, None

    def stats(self) -> PromptStats:
        return self._core.stats()

    async def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until every finished visit is in the state store."""
        if not self._recording:
            return True
        await asyncio.wait(set(self._recording), timeout=timeout)
        return not self._recording
