"""panray's operational metrics, through Ray's own metrics system (``ray.util.metrics``).

Ray exports them on each node's Prometheus endpoint (``MetricsExportPort`` of ``ray.nodes()``)
with a ``ray_`` prefix; the dashboard's Metrics view shows them when Prometheus and Grafana are
set up (``configs/prometheus.yml``, ``configs/grafana-panray.json``). Every recorder works in
batches — once per flush tick or per report batch, never one metric call per job — and tags are
bounded: workflow, label, site, status, error class, pilot; never a job id. Metric calls cost
tens of microseconds, so each recorder also caps its rate: the manager's at one round per flush
tick, a pilot's at one round per ``PILOT_PERIOD``.

Examples:
    >>> sample([0.5, 0.1, 0.9, 0.3], 2)
    [0.5, 0.9]
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Iterable, Sequence
from typing import Any

from panray.core.messages import Outcome

#: Seconds: release -> payload start.
DISPATCH_BUCKETS = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0]
#: Seconds: one state-store transaction (a flush of changes).
STORE_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]
#: At most this many latency observations per flush tick: the histogram is a bounded sample.
SAMPLES_PER_BATCH = 8
#: A site queue publishes its depth at most this often (seconds).
QUEUE_PERIOD = 0.5
#: A pilot sends its counts and slot gauges at most this often (seconds); counts accumulate meanwhile.
PILOT_PERIOD = 0.5

_made: dict[str, Any] = {}


def _metric(kind: str, name: str, doc: str, tags: Sequence[str], **kw: Any) -> Any:
    """One metric object per process and name (Ray refuses two definitions of one name)."""
    m = _made.get(name)
    if m is None:
        from ray.util import metrics

        m = _made[name] = getattr(metrics, kind)(name, doc, tag_keys=tuple(tags), **kw)
    return m


def sample(values: Sequence[float], k: int = SAMPLES_PER_BATCH) -> list[float]:
    """Up to ``k`` values evenly spread over ``values`` (their order kept)."""
    if len(values) <= k:
        return list(values)
    step = len(values) / k
    return [values[int(n * step)] for n in range(k)]


def status_changes(last: dict[tuple[str, str], int], labels: Sequence[str], task_counts: Sequence[Sequence[int]],
                   statuses: Sequence[str]) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], int]]:
    """(label, status) counts that differ from ``last`` (those gone become 0), and the new ``last``.

    Examples:
        >>> status_changes({("isr", "pending"): 2}, ["isr"], [[0, 2]], ["pending", "running"])
        ({('isr', 'running'): 2, ('isr', 'pending'): 0}, {('isr', 'running'): 2})
    """
    now: dict[tuple[str, str], int] = {}
    for label, counts in zip(labels, task_counts):
        for code, n in enumerate(counts):
            if n:
                key = (label, statuses[code])
                now[key] = now.get(key, 0) + n
    changed = {k: n for k, n in now.items() if last.get(k) != n}
    changed.update((k, 0) for k in last.keys() - now.keys())
    return changed, now


class ManagerMetrics:
    """A workflow manager's figures: jobs by status per label (gauges), retries, latencies."""

    def __init__(self, workflow_id: int, store: str, labels: Sequence[str]):
        self.wf = str(workflow_id)
        self.base = {"store": store, "workflow": self.wf}  #: ids are per store (one cluster, several stores)
        self.labels = list(labels)  #: label of each task, in the core's task order
        self._last: dict[tuple[str, str], int] = {}
        self._latencies: list[float] = []  #: samples since the last flush, at most SAMPLES_PER_BATCH per batch
        self.jobs = _metric("Gauge", "panray_jobs", "Jobs by status, per workflow and label",
                            ("store", "workflow", "label", "status"))
        self.retries = _metric("Counter", "panray_retries_total", "New attempts after a failure, by error class",
                               ("store", "workflow", "error_class"))
        self.dispatch = _metric("Histogram", "panray_dispatch_latency_seconds",
                                "Release (queued to a site) -> payload start, sampled per flush tick",
                                ("store", "workflow"), boundaries=DISPATCH_BUCKETS)
        self.store = _metric("Histogram", "panray_store_write_seconds", "One state-store flush transaction",
                             ("store", "workflow"), boundaries=STORE_BUCKETS)
        self.lag = _metric("Gauge", "panray_heartbeat_lag_seconds",
                           "Largest heartbeat processing lag (pilot send -> applied) since the last flush",
                           ("store", "workflow"))

    def flush(self, task_counts: Sequence[Sequence[int]], statuses: Sequence[str], max_lag: float | None) -> None:
        """Set the per-status gauges from the core's per-task counters; only changed values are sent."""
        changed, self._last = status_changes(self._last, self.labels, task_counts, statuses)
        for (label, status), n in changed.items():
            self.jobs.set(n, tags={**self.base, "label": label, "status": status})
        if max_lag is not None:
            self.lag.set(max_lag, tags=self.base)
        if self._latencies:
            for v in sample(self._latencies):
                self.dispatch.observe(v, tags=self.base)
            self._latencies = []

    def ended(self, outcomes: Sequence[Outcome], released: Any, first_id: int, attempt: Any) -> None:
        """One report batch: sample the dispatch latency, count the failures that got a new attempt."""
        lat = [max(o.start_time - released[o.job_id - first_id], 0.0) for o in outcomes
               if o.start_time and released[o.job_id - first_id]]
        self._latencies.extend(sample(lat))
        retried = Tally(o.error_class for o in outcomes
                        if o.error_class and attempt[o.job_id - first_id] > o.attempt_nr)
        for cls, n in retried.items():
            self.retries.inc(n, tags={**self.base, "error_class": cls})

    def stored(self, seconds: float) -> None:
        self.store.observe(seconds, tags=self.base)


class PilotMetrics:
    """A pilot's figures per report tick: jobs started/finished/failed per site, slots busy and free."""

    def __init__(self, site: str, pilot: str):
        self.site, self.pilot = site, pilot
        self.started = _metric("Counter", "panray_jobs_started_total", "Payloads started, per site", ("site",))
        self.finished = _metric("Counter", "panray_jobs_finished_total", "Attempts ended with success, per site",
                                ("site",))
        self.failed = _metric("Counter", "panray_jobs_failed_total", "Attempts ended in failure, per site and class",
                              ("site", "error_class"))
        self.slots = _metric("Gauge", "panray_pilot_slots", "Pilot slots by state (busy, free)",
                             ("site", "pilot", "state"))
        self._started = 0
        self._ended: Tally[str | None] = Tally()
        self._next = 0.0

    def report(self, started: Iterable[Sequence[Any]], ended: Iterable[Sequence[Outcome]], busy: int,
               slots: int) -> None:
        """``started``/``ended``: the per-manager lists of one report batch."""
        self._started += sum(1 for batch in started for s in batch if s.start_time)
        for batch in ended:
            self._ended.update(o.error_class for o in batch)
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + PILOT_PERIOD
        site = {"site": self.site}
        if self._started:
            self.started.inc(self._started, tags=site)
        ok = self._ended.pop(None, 0)
        if ok:
            self.finished.inc(ok, tags=site)
        for cls, n in self._ended.items():
            self.failed.inc(n, tags={"site": self.site, "error_class": cls})
        self._started, self._ended = 0, Tally()
        self.slots.set(busy, tags={"site": self.site, "pilot": self.pilot, "state": "busy"})
        self.slots.set(slots - busy, tags={"site": self.site, "pilot": self.pilot, "state": "free"})


class QueueMetrics:
    """A site queue's depth and the jobs its pilots hold, at most every ``QUEUE_PERIOD`` seconds."""

    def __init__(self, site: str):
        self.tags = {"site": site}
        self.queued = _metric("Gauge", "panray_site_queued", "Jobs waiting in the site queue", ("site",))
        self.held = _metric("Gauge", "panray_site_held", "Jobs held by the site's pilots", ("site",))
        self._next = 0.0

    def due(self) -> bool:
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + QUEUE_PERIOD
        return True

    def record(self, queued: int, held: int) -> None:
        self.queued.set(queued, tags=self.tags)
        self.held.set(held, tags=self.tags)
