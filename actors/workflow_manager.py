"""The WorkflowManager actor: one per workflow, the thin Ray shell around :class:`WorkflowCore`.

Pilots call :meth:`WorkflowManager.report` with batches; the calls only queue the batch and
return. One pump thread applies them to the core, asks brokerage for sites in batches, puts
jobs into site queues, and hands state changes to a writer thread that persists them in one
transaction per flush. Nothing on this path is one call or one database round trip per job.

Ray restarts a manager that dies (``max_restarts``) on the stored state. Its report calls
answer with the last report of each pilot whose effects are stored, so pilots keep the rest and
send it again; a manager starting up first asks every live pilot what it still holds for it
(:meth:`WorkflowCore.adopt`) and only then re-releases what nobody holds.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from array import array
from collections import defaultdict, deque
from concurrent.futures import Future
from typing import Any

import ray

from panray.config import Settings
from panray.core.cluster_core import make_core
from panray.actors.metrics import ManagerMetrics
from panray.actors.names import BROKERAGE_NAME, Handles, actor, manager_name, queue_name
from panray.core.messages import Outcome, Started
from panray.core.workflow_core import CoreSettings
from panray.exceptions import StoreUnavailableError
from panray.payload import occupies_slot
from panray.statuses import JOB_CODES
from panray.store import open_store
from panray.store.base import ChangeBatch, DecisionRow

log = logging.getLogger(__name__)

COLLECT_TIMEOUT = 10.0
"""Seconds a starting manager waits for live pilots to say what they hold for it."""
_STATUS_NAMES = [s.value for s in JOB_CODES]

LIVENESS_INTERVAL = 1.0
"""Seconds between checks that the pilots and site queues holding this workflow's jobs are alive:
a lost node is noticed within seconds instead of after the heartbeat timeout."""


_STORE_RETRY_DELAYS = (0.1, 0.5, 1.0)
"""The manager's store gives up after about 2 s: its writer keeps the batch and tries again
without end, and shows the outage in ``stats()`` meanwhile."""

WRITE_RETRY_PAUSE = 1.0
"""Seconds between a writer's tries of a batch while the store is away (the store itself has
already retried for some seconds); the manager goes on from memory meanwhile."""


class _Writer(threading.Thread):
    """Persists change batches in order, off the pump thread.

    A batch leaves the queue only once stored: while the store is unreachable the writer keeps
    it and tries again, so an outage delays writes but loses none. Batches carry the writer's
    key and sequence number, so one that committed just before its connection broke is not
    stored twice. A batch the store rejects (a bug, not an outage) is dropped and surfaced by
    ``wait()``.
    """

    def __init__(self, store: Any, name: str, metrics: ManagerMetrics | None = None):
        super().__init__(name="writer", daemon=True)
        self.store = store
        self.key = f"{name}#{uuid.uuid4().hex[:12]}"  #: one per manager incarnation
        self.metrics = metrics
        self.batches: deque[ChangeBatch] = deque()
        self.cv = threading.Condition()
        self.written = 0
        self.submitted = 0
        self.error: BaseException | None = None
        self.outage_since: float | None = None
        self.outages = 0

    def put(self, batch: ChangeBatch) -> None:
        with self.cv:
            self.submitted += 1
            batch.writer, batch.seq = self.key, self.submitted
            self.batches.append(batch)
            self.cv.notify_all()

    def run(self) -> None:
        while True:
            with self.cv:
                while not self.batches:
                    self.cv.wait()
                batch = self.batches[0]
            try:
                t0 = time.perf_counter()
                self.store.apply(batch)
                if self.metrics is not None:
                    self.metrics.stored(time.perf_counter() - t0)
            except StoreUnavailableError as exc:
                self._away(exc)
                time.sleep(WRITE_RETRY_PAUSE)
                continue
            except BaseException as exc:  # surfaced by wait()
                log.exception("state store rejected a batch")
                self.error = exc
            self._back()
            with self.cv:
                self.batches.popleft()
                self.written += 1
                self.cv.notify_all()

    def _away(self, exc: StoreUnavailableError) -> None:
        if self.outage_since is None:
            self.outage_since = time.time()
            self.outages += 1
            log.warning("%s; keeping %d batches in memory until it is back", exc, len(self.batches))

    def _back(self) -> None:
        if self.outage_since is not None:
            log.warning("state store back after %.1f s; writing %d batches", time.time() - self.outage_since,
                        len(self.batches))
            self.outage_since = None

    def stats(self) -> dict[str, Any]:
        """Backlog and outage figures for the manager's ``stats()``."""
        since = self.outage_since
        return {"store_backlog": len(self.batches), "store_outages": self.outages,
                "store_away_s": None if since is None else time.time() - since}

    def wait_idle(self, timeout: float | None = None) -> bool:
        with self.cv:
            return self.cv.wait_for(lambda: self.written >= self.submitted, timeout)


@ray.remote(num_cpus=0, max_concurrency=16)
class WorkflowManager:
    """Drives one workflow; see the module docstring. Named ``workflow-manager:<id>``."""

    def __init__(self, workflow_id: int, settings: Settings, retry: bool = False, by: str = ""):
        self.workflow_id = workflow_id
        self.flush_interval = settings.flush_interval
        self.release_batch = settings.release_batch
        db_url = settings.resolved_db_url
        self.store = open_store(db_url)
        self.store.retry_delays = _STORE_RETRY_DELAYS
        snap = self.store.load_workflow(workflow_id)
        core_settings = CoreSettings.from_settings(settings)
        self.core = make_core(snap, core_settings, manager=manager_name(db_url, workflow_id))
        self._retry = retry and not ray.get_runtime_context().was_current_actor_reconstructed
        self._by = by  #: who started this manager (cause of a retry or a stored cancel)
        self._seen: dict[str, int] = {}  #: pilot incarnation -> last report handled
        self._acks: deque[tuple[int, dict[str, int]]] = deque()  #: (writer batches submitted, seen then)
        self._acked: dict[str, int] = {}  #: pilot incarnation -> last report whose effects are stored
        self.workflow_name = snap.workflow.name
        labels = {t.task_id: t.label for t in snap.tasks}
        self._metrics = (ManagerMetrics(workflow_id, self.core.manager.split(":")[1], [labels[t] for t in sorted(labels)])
                         if settings.metrics else None)
        self._released = array("d", bytes(8 * self.core.n))  #: when each job was last queued to a site
        self._lag_max: float | None = None  #: largest heartbeat lag since the last flush
        self._restarting = False
        self._beat_lags: deque[float] = deque(maxlen=100_000)
        self._beats = 0
        self._expire_every = min(core_settings.heartbeat_timeout, core_settings.sent_timeout,
                                 core_settings.activated_timeout) / 4
        self._handles = Handles()
        self.brokerage = self._handles.require(BROKERAGE_NAME)
        self._inbox: deque[tuple[Any, ...]] = deque()
        self._wake = threading.Event()
        self._done = threading.Event()
        self._writer = _Writer(self.store, manager_name(db_url, workflow_id), self._metrics)
        self._writer.start()
        self._ready: list[int] = []
        self._unplaced: set[tuple[int, int]] = set()  #: attempts whose failed brokerage is recorded
        self._pump = threading.Thread(target=self._pump_loop, name="pump", daemon=True)
        self._pump.start()
        threading.Thread(target=self._watch_loop, name="liveness", daemon=True).start()

    def __repr__(self) -> str:
        """What the dashboard shows: ``WorkflowManager(7 ci_hsc: 1,023/2,000 ended)``."""
        return f"WorkflowManager({self.workflow_id} {self.workflow_name}: {self.core.n_final:,}/{self.core.n:,} ended)"

    # -- calls from pilots and clients (only enqueue) -----------------------------------------

    def report(self, started: list[Started], ended: list[Outcome], pilot: str | None = None,
               seq: int | None = None) -> int:
        """A pilot's batch (``seq`` numbers it; None: only asking); returns the pilot's last
        report whose effects are stored, which it may forget."""
        if seq is not None:
            self._inbox.append(("report", started, ended, pilot, seq))
            self._wake.set()
        return self._acked.get(pilot or "", 0)

    def claim(self, pilot: str, attempts: list[tuple[int, int]], sent_at: float) -> list[bool]:
        """A pilot asks to start these (job_id, attempt_nr); returns which it may start."""
        answer: Future[list[bool]] = Future()
        self._inbox.append(("claim", pilot, attempts, sent_at, answer))
        self._wake.set()
        return answer.result()

    def rebroker(self, jobs: list[tuple[int, int]], lost_pilot: str | None = None) -> None:
        """A site queue gave back these (job_id, attempt_nr): its site went offline, or (``lost_pilot``)
        the pilot that had taken them died. Broker them again."""
        self._inbox.append(("rebroker", jobs, lost_pilot))
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
                "pid": psutil.Process().pid, **self._writer.stats()}

    def cancel(self, task_id: int | None = None, job_ids: list[int] | None = None, by: str = "") -> None:
        """Cancel the workflow, or (either given) only the jobs of a task and/or these jobs; ``by`` who."""
        self._inbox.append(("cancel", task_id, job_ids, by))
        self._wake.set()

    def retry(self, by: str = "") -> None:
        """Rerun failed, cancelled and pruned jobs in this same manager (pilots keep its name); ``by`` who."""
        self._restarting = True
        self._done.clear()
        self._inbox.append(("retry", by))
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
            self._ready.extend(self.core.adopt(*self._collect(), time.time()))
            self._ready.extend(self.core.start(time.time(), retry=self._retry, by=self._by))
            last_flush = last_expire = time.time()
            while True:
                self._wake.wait(self.flush_interval)
                self._wake.clear()
                now = time.time()
                while self._inbox:
                    msg = self._inbox.popleft()
                    try:
                        self._handle(msg, now)
                    except Exception:  # one bad message must not stop the workflow's other jobs
                        log.exception("workflow %s: could not handle %s", self.workflow_id, msg[0])
                if now - last_expire >= self._expire_every:
                    self._expire(now)
                    last_expire = now
                if self._ready:
                    self._dispatch(now)
                if now - last_flush >= self.flush_interval or self.core.done:
                    batch = self.core.drain_changes(now)
                    if batch:
                        self._writer.put(batch)
                    self._acks.append((self._writer.submitted, dict(self._seen)))
                    if self._metrics is not None:
                        self._metrics.flush(self.core.task_counts, _STATUS_NAMES, self._lag_max)
                        self._lag_max = None
                    last_flush = now
                self._promote_acks()
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
            if msg[3] is not None:
                self._seen[msg[3]] = max(msg[4], self._seen.get(msg[3], 0))
        elif kind == "claim":
            msg[4].set_result(self.core.claim(msg[1], msg[2], msg[3]))
        elif kind == "heartbeat":
            self.core.heartbeat(msg[1], now)
            self._beats += len(msg[1])
            lag = time.time() - msg[2]
            self._beat_lags.append(lag)
            self._lag_max = lag if self._lag_max is None else max(self._lag_max, lag)
        elif kind == "rebroker":
            self._ready.extend(self.core.requeue(msg[1], now, msg[2]))
        elif kind == "lost":
            self._ready.extend(self.core.lost(msg[1], msg[2], now))
        elif kind == "retry":
            batch = self.core.drain_changes(now)
            if batch:
                self._writer.put(batch)
            self._writer.wait_idle()
            snap = self.store.load_workflow(self.workflow_id)
            self.core = make_core(snap, self.core.settings, manager=self.core.manager)
            self._ready = self.core.start(now, retry=True, by=msg[1])
            self._restarting = False
        elif kind == "cancel":
            task_id, job_ids, by = msg[1], msg[2], msg[3]
            whole = task_id is None and job_ids is None
            held, ready = self.core.cancel(now, None if whole else self.core.select(task_id, job_ids or ()), by=by)
            if whole:
                self._ready.clear()
            self._ready.extend(ready)
            self._kill([job for job, _pilot in held], whole=whole)

    def _promote_acks(self) -> None:
        """Reports whose effects the writer has stored may be forgotten by their pilots."""
        while self._acks and self._writer.written >= self._acks[0][0] and self._writer.error is None:
            self._acked.update(self._acks.popleft()[1])

    def _collect(self) -> tuple[list[tuple[int, int, str]], list[Started], list[Outcome]]:
        """What every live pilot still runs for this workflow, and the reports it holds for it."""
        names = ray.get(self.brokerage.pilot_names.remote())
        refs = {}
        for name in names:
            pilot = actor(name)
            if pilot is not None:
                refs[pilot.holding.remote(self.core.manager)] = name
        done, late = ray.wait(list(refs), num_returns=len(refs), timeout=COLLECT_TIMEOUT) if refs else ([], [])
        if late:
            log.warning("workflow %s: pilots %s did not say what they hold", self.workflow_id,
                        sorted(refs[r] for r in late))
        held: list[tuple[int, int, str]] = []
        started: list[Started] = []
        ended: list[Outcome] = []
        for ref in done:
            try:
                keys, s, e = ray.get(ref)
            except ray.exceptions.RayActorError:
                continue
            held.extend((job_id, attempt, refs[ref]) for job_id, attempt in keys)
            started.extend(s)
            ended.extend(e)
        return held, started, ended

    def _expire(self, now: float) -> None:
        """Time out silent pilots, and take back jobs queued at sites that have no live pilot
        (their old dispatches leave those queues, so returning pilots do not run them)."""
        idle = frozenset(ray.get(self.brokerage.idle_sites.remote()))
        ready = self.core.expire(now, idle)
        if idle and ready:
            ids = [self.core.first_id + i for i in ready]
            for site in idle:
                q = self._queue_or_none(site)
                if q is not None:
                    q.remove.remote(manager=self.core.manager, job_ids=ids)
        self._ready.extend(ready)

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
            reqs = [(core.memory[i], rows[i].request_cpus, rows[i].site_pin, core.input_sites(i), core.avoid.get(i))
                    for i in idxs]
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
                dead_pilots = self._dead({p: self._handles.get(p) for p in pilots}, "ready")
                dead_queues = self._dead({queue_name(s): self._queue_or_none(s) for s in sites}, "stats")
                dead_sites = {s for s in sites if queue_name(s) in dead_queues}
            except Exception:  # the cluster is shutting down, or a name is not registered yet
                log.debug("liveness check skipped", exc_info=True)
                continue
            if dead_pilots or dead_sites:
                log.warning("workflow %s: lost pilots %s, lost site queues %s", self.workflow_id,
                            sorted(dead_pilots), sorted(dead_sites))
                self._inbox.append(("lost", dead_pilots, dead_sites))
                self._wake.set()

    def _dead(self, handles: dict[str, Any], method: str) -> set[str]:
        """Names whose actor answers ``method`` with an actor-died error; their handles are forgotten."""
        refs = {getattr(h, method).remote(): name for name, h in handles.items() if h is not None}
        dead = {name for name, h in handles.items() if h is None}
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=LIVENESS_INTERVAL)
        for ref in ready:
            try:
                ray.get(ref)
            except ray.exceptions.RayActorError:
                dead.add(refs[ref])
        for name in dead:
            self._handles.forget(name)
        return dead

    def _queue_or_none(self, site: str) -> Any:
        """None when the site's node is gone."""
        return self._handles.get(queue_name(site))

    def _queue(self, site: str) -> Any:
        return self._handles.require(queue_name(site))

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
        for name in pilots:  # looked up afresh: a pilot restarted under a cached name must be reached
            pilot = actor(name)
            if pilot is not None:
                pilot.kill.remote(job_ids, self.core.manager)
