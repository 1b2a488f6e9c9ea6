"""The WorkflowManager actor: one per workflow, the thin Ray shell around :class:`WorkflowCore`.

Pilots call :meth:`WorkflowManager.report` with batches; the calls only queue the batch and
return. One pump thread applies them to the core, asks brokerage for sites in batches, puts
jobs into site queues, and hands state changes to a writer thread that persists them in one
transaction per flush. Nothing on this path is one call or one database round trip per job.
"""

from __future__ import annotations

import logging
import threading
import time
from array import array
from collections import defaultdict, deque
from typing import Any

import ray

from panray.core.cluster_core import make_core
from panray.actors.metrics import ManagerMetrics
from panray.actors.names import BROKERAGE_NAME, NAMESPACE, manager_name, queue_name
from panray.core.messages import Outcome, Started
from panray.core.workflow_core import CoreSettings
from panray.payload import occupies_slot
from panray.statuses import JOB_CODES
from panray.store import open_store
from panray.store.base import ChangeBatch, DecisionRow

log = logging.getLogger(__name__)

_STATUS_NAMES = [s.value for s in JOB_CODES]

LIVENESS_INTERVAL = 1.0
"""Seconds between checks that the pilots and site queues holding this workflow's jobs are alive:
a lost node is noticed within seconds instead of after the heartbeat timeout."""


class _Writer(threading.Thread):
    """Persists change batches in order, off the pump thread."""

    def __init__(self, store: Any, metrics: ManagerMetrics | None = None):
        super().__init__(name="writer", daemon=True)
        self.store = store
        self.metrics = metrics
        self.batches: deque[ChangeBatch] = deque()
        self.cv = threading.Condition()
        self.written = 0
        self.submitted = 0
        self.error: BaseException | None = None

    def put(self, batch: ChangeBatch) -> None:
        with self.cv:
            self.batches.append(batch)
            self.submitted += 1
            self.cv.notify_all()

    def run(self) -> None:
        while True:
            with self.cv:
                while not self.batches:
                    self.cv.wait()
                batch = self.batches.popleft()
            try:
                t0 = time.perf_counter()
                self.store.apply(batch)
                if self.metrics is not None:
                    self.metrics.stored(time.perf_counter() - t0)
            except BaseException as exc:  # surfaced by wait(); the manager stops persisting
                log.exception("state store write failed")
                self.error = exc
            with self.cv:
                self.written += 1
                self.cv.notify_all()

    def wait_idle(self, timeout: float | None = None) -> bool:
        with self.cv:
            return self.cv.wait_for(lambda: self.written >= self.submitted, timeout)


@ray.remote(num_cpus=0, max_concurrency=16)
class WorkflowManager:
    """Drives one workflow; see the module docstring. Named ``workflow-manager:<id>``."""

    def __init__(self, workflow_id: int, db_url: str, settings: dict[str, Any], retry: bool = False):
        self.workflow_id = workflow_id
        self.flush_interval = float(settings.get("flush_interval", 0.2))
        self.release_batch = int(settings.get("release_batch", 500))
        self.store = open_store(db_url)
        snap = self.store.load_workflow(workflow_id)
        core_settings = CoreSettings(
            max_system_retries=int(settings.get("max_system_retries", 3)),
            heartbeat_timeout=float(settings.get("heartbeat_timeout", 7200.0)),
            sent_timeout=float(settings.get("sent_timeout", 1800.0)),
        )
        self.core = make_core(snap, core_settings, manager=manager_name(db_url, workflow_id))
        self.workflow_name = snap.workflow.name
        labels = {t.task_id: t.label for t in snap.tasks}
        self._metrics = (ManagerMetrics(workflow_id, self.core.manager.split(":")[1], [labels[t] for t in sorted(labels)])
                         if settings.get("metrics", True) else None)
        self._released = array("d", bytes(8 * self.core.n))  #: when each job was last queued to a site
        self._lag_max: float | None = None  #: largest heartbeat lag since the last flush
        self._retry = retry
        self._restarting = False
        self._beat_lags: deque[float] = deque(maxlen=100_000)
        self._beats = 0
        self._expire_every = min(core_settings.heartbeat_timeout, core_settings.sent_timeout) / 4
        self.brokerage = ray.get_actor(BROKERAGE_NAME, namespace=NAMESPACE)
        self._queues: dict[str, Any] = {}
        self._inbox: deque[tuple[Any, ...]] = deque()
        self._wake = threading.Event()
        self._done = threading.Event()
        self._writer = _Writer(self.store, self._metrics)
        self._writer.start()
        self._ready: list[int] = []
        self._unplaced: set[tuple[int, int]] = set()  #: attempts whose failed brokerage is recorded
        self._pilots: dict[str, Any] = {}
        self._pump = threading.Thread(target=self._pump_loop, name="pump", daemon=True)
        self._pump.start()
        threading.Thread(target=self._watch_loop, name="liveness", daemon=True).start()

    def __repr__(self) -> str:
        """What the dashboard shows: ``WorkflowManager(7 ci_hsc: 1,023/2,000 ended)``."""
        return f"WorkflowManager({self.workflow_id} {self.workflow_name}: {self.core.n_final:,}/{self.core.n:,} ended)"

    # -- calls from pilots and clients (only enqueue) -----------------------------------------

    def report(self, started: list[Started], ended: list[Outcome]) -> None:
        self._inbox.append(("report", started, ended))
        self._wake.set()

    def rebroker(self, jobs: list[tuple[int, int]]) -> None:
        """A site queue gave back these (job_id, attempt_nr) (its site went offline): broker again."""
        self._inbox.append(("rebroker", jobs))
        self._wake.set()

    def heartbeat(self, beats: list[tuple[int, int]], sent_at: float | None = None) -> None:
        """A pilot's batched heartbeat: (job_id, attempt_nr) of its running payloads."""
        self._inbox.append(("heartbeat", beats, sent_at or time.time()))
        self._wake.set()

    def stats(self) -> dict[str, Any]:
        """Operational figures: heartbeat processing lag (s, pilot send -> applied) and memory."""
        import psutil

        lags = sorted(self._beat_lags)
        pick = (lambda q: lags[min(len(lags) - 1, int(q * len(lags)))]) if lags else (lambda q: None)
        return {"heartbeats": len(lags), "beats": self._beats, "lag_p50": pick(0.5), "lag_p99": pick(0.99),
                "lag_max": lags[-1] if lags else None, "rss_bytes": psutil.Process().memory_info().rss,
                "pid": psutil.Process().pid}

    def cancel(self, task_id: int | None = None, job_ids: list[int] | None = None) -> None:
        """Cancel the workflow, or (either given) only the jobs of a task and/or these jobs."""
        self._inbox.append(("cancel", task_id, job_ids))
        self._wake.set()

    def retry(self) -> None:
        """Rerun failed, cancelled and pruned jobs in this same manager (pilots keep its name)."""
        self._restarting = True
        self._done.clear()
        self._inbox.append(("retry",))
        self._wake.set()

    def progress(self) -> dict[str, Any]:
        c = self.core
        return {"workflow_id": self.workflow_id, "status": c.workflow_status, "counts": c.counts(), "total": c.n}

    def wait(self, timeout: float | None = None) -> str | None:
        """Block until the workflow has ended and its state is persisted; returns its status."""
        if not self._done.wait(timeout):
            return None
        if self._writer.error is not None:
            raise self._writer.error
        return self.core.workflow_status

    # -- the pump ----------------------------------------------------------------------------

    def _pump_loop(self) -> None:
        try:
            self._ready.extend(self.core.start(time.time(), retry=self._retry))
            last_flush = last_expire = time.time()
            while True:
                self._wake.wait(self.flush_interval)
                self._wake.clear()
                now = time.time()
                while self._inbox:
                    self._handle(self._inbox.popleft(), now)
                if now - last_expire >= self._expire_every:
                    self._ready.extend(self.core.expire(now))
                    last_expire = now
                if self._ready:
                    self._dispatch(now)
                if now - last_flush >= self.flush_interval or self.core.done:
                    batch = self.core.drain_changes(now)
                    if batch:
                        self._writer.put(batch)
                    if self._metrics is not None:
                        self._metrics.flush(self.core.task_counts, _STATUS_NAMES, self._lag_max)
                        self._lag_max = None
                    last_flush = now
                if self.core.done and not self._inbox and not self._restarting and not self._done.is_set():
                    self._writer.wait_idle()
                    self._done.set()
        except BaseException:
            log.exception("workflow manager %s pump died", self.workflow_id)
            raise

    def _handle(self, msg: tuple[Any, ...], now: float) -> None:
        kind = msg[0]
        if kind == "report":
            for job, pilot in self.core.started(msg[1]):
                self._kill_payloads([job], [pilot])
            self._ready.extend(self.core.ended(msg[2]))
            if self._metrics is not None and msg[2]:
                self._metrics.ended(msg[2], self._released, self.core.first_id, self.core.attempt)
        elif kind == "heartbeat":
            self.core.heartbeat(msg[1], now)
            self._beats += len(msg[1])
            lag = time.time() - msg[2]
            self._beat_lags.append(lag)
            self._lag_max = lag if self._lag_max is None else max(self._lag_max, lag)
        elif kind == "rebroker":
            self._ready.extend(self.core.requeue(msg[1], now))
        elif kind == "lost":
            self._ready.extend(self.core.lost(msg[1], msg[2], now))
        elif kind == "retry":
            batch = self.core.drain_changes(now)
            if batch:
                self._writer.put(batch)
            self._writer.wait_idle()
            snap = self.store.load_workflow(self.workflow_id)
            self.core = make_core(snap, self.core.settings, manager=self.core.manager)
            self._ready = self.core.start(now, retry=True)
            self._restarting = False
        elif kind == "cancel":
            task_id, job_ids = msg[1], msg[2]
            whole = task_id is None and job_ids is None
            held, ready = self.core.cancel(now, None if whole else self.core.select(task_id, job_ids or ()))
            if whole:
                self._ready.clear()
            self._ready.extend(ready)
            self._kill([job for job, _pilot in held], whole=whole)

    def _dispatch(self, now: float) -> None:
        """Broker ready jobs in batches and put them into their sites' queues."""
        core = self.core
        ready, self._ready = self._ready, []
        deferred: list[int] = []
        rows = core.rows
        noops = [i for i in ready if not occupies_slot(rows[i].payload)]
        real = [i for i in ready if occupies_slot(rows[i].payload)] if noops else ready
        batches = [(noops[k:k + self.release_batch], True) for k in range(0, len(noops), self.release_batch)]
        batches += [(real[k:k + self.release_batch], False) for k in range(0, len(real), self.release_batch)]
        first, attempt = core.first_id, core.attempt
        for idxs, noop in batches:
            reqs = [(core.memory[i], rows[i].request_cpus, rows[i].site_pin, core.input_sites(i)) for i in idxs]
            sites, records = ray.get(self.brokerage.broker_explained.remote(reqs, noop))
            by_site: dict[str, list[int]] = defaultdict(list)
            explained: list[DecisionRow] = []
            for i, s, record in zip(idxs, sites, records):
                key = (first + i, attempt[i])
                if s is None:
                    deferred.append(i)
                    if key in self._unplaced:
                        continue
                    self._unplaced.add(key)
                else:
                    by_site[s].append(i)
                explained.append(DecisionRow(key[0], key[1], record, now))
            core.record_decisions(explained)
            for site, group in by_site.items():
                moved = core.queued(group, [site] * len(group), now)
                if self._metrics is not None:
                    for i in moved:
                        self._released[i] = now
                q = self._queue_or_none(site)
                if moved and q is not None:  # else the liveness check takes them back
                    q.put.remote([core.dispatch(i, site) for i in moved])
        if deferred:  # throttled or no site can take them yet: try again on the next tick
            self._ready.extend(deferred)

    def _watch_loop(self) -> None:
        """Tell the pump which pilots and site queues holding this workflow's jobs have died."""
        while True:
            time.sleep(LIVENESS_INTERVAL)
            if self._done.is_set():
                continue
            try:
                pilots, sites = self.core.placements()
                dead_pilots = self._dead({p: self._pilot(p) for p in pilots}, "ready", self._pilots)
                dead_sites = self._dead({s: self._queue_or_none(s) for s in sites}, "stats", self._queues)
            except Exception:  # the cluster is shutting down, or a name is not registered yet
                log.debug("liveness check skipped", exc_info=True)
                continue
            if dead_pilots or dead_sites:
                log.warning("workflow %s: lost pilots %s, lost site queues %s", self.workflow_id,
                            sorted(dead_pilots), sorted(dead_sites))
                self._inbox.append(("lost", dead_pilots, dead_sites))
                self._wake.set()

    @staticmethod
    def _dead(handles: dict[str, Any], method: str, cache: dict[str, Any]) -> set[str]:
        """Names whose actor answers ``method`` with an actor-died error; they leave ``cache``."""
        refs = {getattr(h, method).remote(): name for name, h in handles.items() if h is not None}
        dead = {name for name, h in handles.items() if h is None}
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=LIVENESS_INTERVAL)
        for ref in ready:
            try:
                ray.get(ref)
            except ray.exceptions.RayActorError:
                dead.add(refs[ref])
        for name in dead:
            cache.pop(name, None)
        return dead

    def _pilot(self, name: str) -> Any:
        """A cached handle, so that a pilot restarted under the same name is not taken for the lost one."""
        h = self._pilots.get(name)
        if h is None:
            try:
                h = self._pilots[name] = ray.get_actor(name, namespace=NAMESPACE)
            except ValueError:
                return None
        return h

    def _queue_or_none(self, site: str) -> Any:
        try:
            return self._queue(site)
        except ValueError:  # the site's node is gone
            return None

    def _queue(self, site: str) -> Any:
        q = self._queues.get(site)
        if q is None:
            q = self._queues[site] = ray.get_actor(queue_name(site), namespace=NAMESPACE)
        return q

    def _kill(self, job_ids: list[int], *, whole: bool = True) -> None:
        """Drop queued jobs (all of the workflow's, or only these) and kill these payloads on every pilot."""
        if not whole and not job_ids:
            return
        for site in ray.get(self.brokerage.site_names.remote()):
            q = self._queue(site)
            if whole:
                q.remove.remote(manager=self.core.manager)
            else:
                q.remove.remote(manager=self.core.manager, job_ids=job_ids)
        if job_ids:
            self._kill_payloads(job_ids, ray.get(self.brokerage.pilot_names.remote()))

    def _kill_payloads(self, job_ids: list[int], pilots: list[str]) -> None:
        """Ask these pilots to kill the payloads; a pilot that is gone took its payloads with it."""
        for name in pilots:
            try:
                ray.get_actor(name, namespace=NAMESPACE).kill.remote(job_ids, self.core.manager)
            except ValueError:
                continue
