"""The standing prompt task without Ray: placement over live pilots, counters, and the record of a visit.

:class:`DispatchCore` is what :class:`panray.actors.prompt_pool.PromptDispatcher` runs;
:func:`write_visit` stores a finished visit through the same workflow core and store API as
every workflow, in one transaction.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from panray.core.prompt_core import JobResult, RendezvousRing, TaskConfig, check_detectors
from panray.exceptions import PromptPoolError
from panray.payload import encode_command
from panray.retry import PAYLOAD
from panray.store.base import ChangeBatch, SubmittedCampaign

LATENCY_WINDOW = 100_000  #: latencies kept per standing task for stats()


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
