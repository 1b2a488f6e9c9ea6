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
from collections import defaultdict, deque
from typing import Any

import ray

from panray.actors.dispatch import BROKERAGE_NAME, NAMESPACE, Outcome, Started, manager_name, queue_name
from panray.actors.workflow_core import CoreSettings, WorkflowCore
from panray.store import open_store
from panray.store.base import ChangeBatch

log = logging.getLogger(__name__)


class _Writer(threading.Thread):
    """Persists change batches in order, off the pump thread."""

    def __init__(self, store: Any):
        super().__init__(name="writer", daemon=True)
        self.store = store
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
                self.store.apply(batch)
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
        self.core = WorkflowCore(snap, core_settings, manager=manager_name(db_url, workflow_id))
        self._retry = retry
        self._restarting = False
        self._expire_every = min(core_settings.heartbeat_timeout, core_settings.sent_timeout) / 4
        self.brokerage = ray.get_actor(BROKERAGE_NAME, namespace=NAMESPACE)
        self._queues: dict[str, Any] = {}
        self._inbox: deque[tuple[Any, ...]] = deque()
        self._wake = threading.Event()
        self._done = threading.Event()
        self._writer = _Writer(self.store)
        self._writer.start()
        self._ready: list[int] = []
        self._pump = threading.Thread(target=self._pump_loop, name="pump", daemon=True)
        self._pump.start()

    # -- calls from pilots and clients (only enqueue) -----------------------------------------

    def report(self, started: list[Started], ended: list[Outcome]) -> None:
        self._inbox.append(("report", started, ended))
        self._wake.set()

    def heartbeat(self, beats: list[tuple[int, int]]) -> None:
        """A pilot's batched heartbeat: (job_id, attempt_nr) of its running payloads."""
        self._inbox.append(("heartbeat", beats))
        self._wake.set()

    def cancel(self) -> None:
        self._inbox.append(("cancel",))
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
            self.core.started(msg[1])
            self._ready.extend(self.core.ended(msg[2]))
        elif kind == "heartbeat":
            self.core.heartbeat(msg[1], now)
        elif kind == "retry":
            batch = self.core.drain_changes(now)
            if batch:
                self._writer.put(batch)
            self._writer.wait_idle()
            snap = self.store.load_workflow(self.workflow_id)
            self.core = WorkflowCore(snap, self.core.settings, manager=self.core.manager)
            self._ready = self.core.start(now, retry=True)
            self._restarting = False
        elif kind == "cancel":
            held = self.core.cancel(now)
            self._ready.clear()
            self._kill([job for job, _pilot in held])

    def _dispatch(self, now: float) -> None:
        """Broker ready jobs in batches and put them into their sites' queues."""
        core = self.core
        ready, self._ready = self._ready, []
        deferred: list[int] = []
        rows = core.rows
        noops = [i for i in ready if not rows[i].payload]
        real = [i for i in ready if rows[i].payload] if noops else ready
        batches = [(noops[k:k + self.release_batch], True) for k in range(0, len(noops), self.release_batch)]
        batches += [(real[k:k + self.release_batch], False) for k in range(0, len(real), self.release_batch)]
        for idxs, noop in batches:
            reqs = [(core.memory[i], rows[i].request_cpus, rows[i].site_pin) for i in idxs]
            sites = ray.get(self.brokerage.broker.remote(reqs, noop))
            by_site: dict[str, list[int]] = defaultdict(list)
            for i, s in zip(idxs, sites):
                if s is None:
                    deferred.append(i)
                else:
                    by_site[s].append(i)
            for site, group in by_site.items():
                moved = core.queued(group, [site] * len(group), now)
                if moved:
                    self._queue(site).put.remote([core.dispatch(i, site) for i in moved])
        if deferred:  # throttled or no site can take them yet: try again on the next tick
            self._ready.extend(deferred)

    def _queue(self, site: str) -> Any:
        q = self._queues.get(site)
        if q is None:
            q = self._queues[site] = ray.get_actor(queue_name(site), namespace=NAMESPACE)
        return q

    def _kill(self, job_ids: list[int]) -> None:
        """Drop the workflow's queued jobs and kill its running payloads on every pilot."""
        for site in ray.get(self.brokerage.site_names.remote()):
            self._queue(site).remove.remote(manager=self.core.manager)
        if not job_ids:
            return
        for name in ray.get(self.brokerage.pilot_names.remote()):
            try:
                ray.get_actor(name, namespace=NAMESPACE).kill.remote(job_ids)
            except ValueError:
                continue
