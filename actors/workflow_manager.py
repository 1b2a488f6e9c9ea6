"""The WorkflowManager actor: hosts the managers of many workflows, the thin Ray shell around their cores.

A store's workflows are multiplexed onto a bounded pool of these actors (:mod:`manager_pool`
places them and finds them); each keeps its own :class:`ManagedWorkflow`: its core, inbox,
pilot acknowledgements, control and reports. Pilots call :meth:`WorkflowManager.report` with
batches; the calls only queue the batch and return. One pump thread gives every workflow a fair
share of work per tick (apply its messages to its core, ask brokerage for sites in batches, put
jobs into site queues, hand its state changes to the writer thread, which persists what all
workflows changed in one transaction per flush). Nothing on this path is one call or one
database round trip per job, and no thread is per workflow: the actor runs a pump, a writer, a
liveness watcher and two starters, whatever it hosts.

Ray restarts a manager that dies (``max_restarts``); it takes up the workflows it hosted from
the stored state. Its report calls answer with the last report of each pilot whose effects are
stored, so pilots keep the rest and send it again; a workflow starting up first asks every live
pilot what it still holds for it (:meth:`WorkflowCore.adopt`) and only then re-releases what
nobody holds.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from typing import Any

import ray

from panray.actors import manager_pool
from panray.actors.managed_workflow import ManagedWorkflow, Shared
from panray.actors.names import BROKERAGE_NAME, Handles, queue_name
from panray.config import Settings
from panray.core.workflow_core import CoreSettings
from panray.exceptions import NotFoundError, StoreUnavailableError
from panray.store import open_store
from panray.store.base import ChangeBatch

log = logging.getLogger(__name__)

LIVENESS_INTERVAL = 1.0
"""Seconds between checks that the pilots and site queues holding the hosted workflows' jobs are
alive: a lost node is noticed within seconds instead of after the heartbeat timeout."""

WAIT_SLICE = 2.0
"""Seconds one ``wait`` call blocks at most (callers ask again): waits never hold the actor's
threads for long, however many clients wait."""

STARTERS = 2
"""Threads that load and start newly hosted workflows, off the pump."""

_STORE_RETRY_DELAYS = (0.1, 0.5, 1.0)
"""The manager's store gives up after about 2 s: its writer keeps the batch and tries again
without end, and shows the outage in ``stats()`` meanwhile."""

WRITE_RETRY_PAUSE = 1.0
"""Seconds between a writer's tries of a batch while the store is away (the store itself has
already retried for some seconds); the manager goes on from memory meanwhile."""


MERGE_MAX = 32
"""At most this many waiting batches are merged into one transaction."""


def _batches(parts: list[tuple[ManagedWorkflow, list[int]]], size: int
             ) -> Iterator[list[tuple[ManagedWorkflow, list[int]]]]:
    """The workflows' job lists cut into batches of about ``size`` jobs (a workflow's list may
    span batches; no batch is empty)."""
    batch: list[tuple[ManagedWorkflow, list[int]]] = []
    n = 0
    for wf, idxs in parts:
        k = 0
        while k < len(idxs):
            piece = idxs[k:k + size - n]
            batch.append((wf, piece))
            n += len(piece)
            k += len(piece)
            if n >= size:
                yield batch
                batch, n = [], 0
    if batch:
        yield batch


class _Writer(threading.Thread):
    """Persists change batches in order, off the pump thread.

    A batch leaves the queue only once stored: while the store is unreachable the writer keeps
    it and tries again, so an outage delays writes but loses none. Batches carry the writer's
    key and sequence number, so one that committed just before its connection broke is not
    stored twice. A batch the store rejects (a bug, not an outage) is dropped and surfaced by
    ``wait()``. Batches that wait while one is written are merged into one transaction; on a
    manager that hosts many workflows that is the batches of all of them, and a rejected batch
    fails only the workflow that sent it (its ``owner``).
    """

    def __init__(self, store: Any, name: str):
        super().__init__(name="writer", daemon=True)
        self.store = store
        self.key = f"{name}#{uuid.uuid4().hex[:12]}"  #: one per manager incarnation
        self.batches: deque[ChangeBatch] = deque()
        self.owners: deque[Any] = deque()  #: who sent each batch: its ``store_error`` tells of a rejection
        self.cv = threading.Condition()
        self.written = 0
        self.submitted = 0
        self.error: BaseException | None = None
        self.outage_since: float | None = None
        self.outages = 0

    def put(self, batch: ChangeBatch, owner: Any = None) -> int:
        """Queue the batch; returns its sequence number (stored once ``written`` reaches it)."""
        with self.cv:
            self.submitted += 1
            batch.writer, batch.seq = self.key, self.submitted
            self.batches.append(batch)
            self.owners.append(owner)
            self.cv.notify_all()
            return self.submitted

    def run(self) -> None:
        single = 0  #: batches to store one by one (after a merged batch was rejected)
        pending: tuple[ChangeBatch, int] | None = None  #: a batch tried and not yet stored, with its count
        while True:
            if pending is None:
                pending = self._next(single > 0)
            batch, k = pending
            try:
                t0 = time.perf_counter()
                self.store.apply(batch)
                took = time.perf_counter() - t0
                with self.cv:  # put() appends meanwhile
                    owners = {id(o): o for o in islice(self.owners, k) if o is not None}
                for owner in owners.values():
                    owner.stored(took)
            except StoreUnavailableError as exc:  # tried again as it is: its commit may be in doubt
                self._away(exc)
                time.sleep(WRITE_RETRY_PAUSE)
                continue
            except BaseException as exc:
                if k > 1:  # find the batch at fault: store these one by one
                    single, pending = k, None
                    continue
                log.exception("state store rejected a batch")  # surfaced by wait()
                if self.owners[0] is None:
                    self.error = exc
                else:
                    self.owners[0].store_error = exc
            self._back()
            pending, single = None, max(0, single - 1)
            with self.cv:
                for _ in range(k):
                    self.batches.popleft()
                    self.owners.popleft()
                self.written += k
                self.cv.notify_all()

    def _next(self, single: bool) -> tuple[ChangeBatch, int]:
        """The oldest batch, or (when the writer fell behind) the backlog merged into one: one
        transaction instead of many, and each job's row written once with its latest state."""
        with self.cv:
            while not self.batches:
                self.cv.wait()
            k = 1 if single else min(len(self.batches), MERGE_MAX)
            return (self.batches[0] if k == 1 else ChangeBatch.merged(list(islice(self.batches, k)))), k

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
        return self.wait_stored(self.submitted, timeout)

    def wait_stored(self, seq: int, timeout: float | None = None) -> bool:
        """Block until the batch numbered ``seq`` (and all before it) is stored."""
        with self.cv:
            return self.cv.wait_for(lambda: self.written >= seq, timeout)



@ray.remote(num_cpus=0, max_concurrency=32, concurrency_groups={"clients": 16})
class WorkflowManager:
    """Hosts workflows' managers; see the module docstring. Named ``workflow-manager:<digest>:pool-<k>``.

    Every per-workflow method takes the workflow's id first (a
    :class:`~panray.actors.manager_pool.ManagerHandle` passes it); calls for a workflow not
    hosted here are answered as a missing manager would be: nothing acknowledged, nothing admitted.
    """

    def __init__(self, name: str, settings: Settings):
        self.name = name
        store = open_store(settings.resolved_db_url)
        store.retry_delays = _STORE_RETRY_DELAYS
        writer = _Writer(store, name)
        handles = Handles()
        self.shared = Shared(settings, CoreSettings.from_settings(settings), store, writer,
                             handles.require(BROKERAGE_NAME), handles, threading.Event())
        self.workflows: dict[int, ManagedWorkflow] = {}
        self._lock = threading.Lock()  #: guards ``workflows`` and the hosted list
        self._starters = ThreadPoolExecutor(STARTERS, thread_name_prefix="starter")
        writer.start()
        if ray.get_runtime_context().was_current_actor_reconstructed:
            for workflow_id, by in manager_pool.hosted(name):
                self.host([workflow_id], False, by)  # from the stored state, as a restarted manager
        threading.Thread(target=self._pump_loop, name="pump", daemon=True).start()
        threading.Thread(target=self._watch_loop, name="liveness", daemon=True).start()

    def __repr__(self) -> str:
        """What the dashboard shows: ``WorkflowManager(pool-0: 37 workflows, 12 running)``."""
        wfs = list(self.workflows.values())
        return (f"WorkflowManager({self.name.rsplit(':', 1)[1]}: {len(wfs)} workflows, "
                f"{sum(w.active for w in wfs)} running)")

    def host(self, workflow_ids: list[int], retry: bool = False, by: str = "") -> list[int]:
        """Manage these workflows here (each started from the store); returns those that were
        not hosted yet, or whose load had failed (a store outage at start is retried so)."""
        with self._lock:
            new = [ManagedWorkflow(w, self.shared, retry, by) for w in dict.fromkeys(workflow_ids)
                   if w not in self.workflows or self.workflows[w].failure is not None]
            self.workflows.update((wf.workflow_id, wf) for wf in new)
            manager_pool.register(self.name, [wf.address for wf in new],
                                  [(w.workflow_id, w.started_by) for w in self.workflows.values()])
        for wf in new:
            self._starters.submit(wf.load)
        return [wf.workflow_id for wf in new]

    def hosting(self) -> list[int]:
        """The ids of the workflows hosted here."""
        return sorted(self.workflows)

    # -- calls from pilots and clients, for one workflow (only enqueue) ---------------------

    def report(self, workflow_id: int, started: list[Any], ended: list[Any], pilot: str | None = None,
               seq: int | None = None) -> int:
        """A pilot's batch (``seq`` numbers it; None: only asking); returns the pilot's last
        report whose effects are stored, which it may forget."""
        wf = self.workflows.get(workflow_id)
        return 0 if wf is None else wf.report(started, ended, pilot, seq)

    def claim(self, workflow_id: int, pilot: str, attempts: list[tuple[int, int]], sent_at: float) -> list[bool]:
        """A pilot asks to start these (job_id, attempt_nr); returns which it may start."""
        wf = self.workflows.get(workflow_id)
        return [False] * len(attempts) if wf is None else wf.claim(pilot, attempts, sent_at)

    def rebroker(self, workflow_id: int, jobs: list[tuple[int, int]], lost_pilot: str | None = None) -> None:
        """A site queue gave back these (job_id, attempt_nr): its site went offline, or (``lost_pilot``)
        the pilot that had taken them died. Broker them again."""
        wf = self.workflows.get(workflow_id)
        if wf is not None:
            wf.rebroker(jobs, lost_pilot)

    def heartbeat(self, workflow_id: int, beats: list[tuple[int, int]], sent_at: float | None = None) -> None:
        """A pilot's batched heartbeat: (job_id, attempt_nr) of its running payloads."""
        wf = self.workflows.get(workflow_id)
        if wf is not None:
            wf.heartbeat(beats, sent_at)

    def _workflow(self, workflow_id: int, loaded: bool = True) -> ManagedWorkflow:
        wf = self.workflows.get(workflow_id)
        if wf is None:
            raise NotFoundError(f"workflow {workflow_id} is not managed by {self.name}")
        if loaded and not wf.loaded.wait(300):
            raise TimeoutError(f"workflow {workflow_id} still loading on {self.name}")
        if loaded and wf.failure is not None:
            raise wf.failure
        return wf

    @ray.method(concurrency_group="clients")
    def stats(self, workflow_id: int) -> dict[str, Any]:
        """Operational figures: heartbeat processing lag (s, pilot send -> applied), the host's
        memory and store backlog, and how many workflows it hosts."""
        import psutil

        proc = psutil.Process()
        return {**self._workflow(workflow_id, loaded=False).stats(), "rss_bytes": proc.memory_info().rss,
                "pid": proc.pid, "hosted": len(self.workflows), **self.shared.writer.stats()}

    def cancel(self, workflow_id: int, task_id: int | None = None, job_ids: list[int] | None = None,
               by: str = "") -> None:
        """Cancel the workflow, or (either given) only the jobs of a task and/or these jobs; ``by`` who."""
        self._workflow(workflow_id, loaded=False).cancel(task_id, job_ids, by)

    def retry(self, workflow_id: int, by: str = "") -> None:
        """Rerun failed, cancelled and pruned jobs here (pilots keep the address); ``by`` who."""
        self._workflow(workflow_id, loaded=False).retry(by)

    @ray.method(concurrency_group="clients")
    def rerun(self, workflow_id: int, task_id: int | None = None, job_ids: list[int] | None = None,
              memory: int | None = None, by: str = "") -> int:
        """Retry by hand the failed, cancelled and pruned jobs of a task and/or these jobs (neither:
        all of them) while the workflow runs, with ``memory`` MB if given; returns how many rerun."""
        return self._workflow(workflow_id, loaded=False).rerun(task_id, job_ids, memory, by)

    def hold(self, workflow_id: int, task_id: int | None = None, by: str = "") -> None:
        """Broker nothing more of the workflow (or of a task) until :meth:`release`; running jobs go on."""
        self._workflow(workflow_id, loaded=False).hold(task_id, by)

    def release(self, workflow_id: int, task_id: int | None = None) -> None:
        """Broker the held workflow (or task) again."""
        self._workflow(workflow_id, loaded=False).release(task_id)

    def set_priority(self, workflow_id: int, priority: int, task_id: int | None = None,
                     job_ids: list[int] | None = None) -> None:
        """A new priority for the workflow's jobs (or a task's, or these): higher ones are brokered first."""
        self._workflow(workflow_id, loaded=False).set_priority(priority, task_id, job_ids)

    @ray.method(concurrency_group="clients")
    def progress(self, workflow_id: int) -> dict[str, Any]:
        return self._workflow(workflow_id).progress()

    @ray.method(concurrency_group="clients")
    def wait(self, workflow_id: int, timeout: float | None = None) -> str | None:
        """Until the workflow has ended and its state is persisted, its status; None if it has
        not within ``timeout`` s or :data:`WAIT_SLICE` (ask again)."""
        return self._workflow(workflow_id, loaded=False).wait(WAIT_SLICE if timeout is None else
                                                              min(timeout, WAIT_SLICE))

    # -- the pump ----------------------------------------------------------------------------

    def _pump_loop(self) -> None:
        """Each tick, every workflow with new work gets its share, in turn; once a flush interval
        every workflow does (timeouts, flushes, acknowledgements), so a tick costs what the
        workflows with work need, not what all hosted ones would."""
        shared = self.shared
        wake, interval = shared.wake, shared.settings.flush_interval
        turn, last_round = 0, 0.0
        carry: dict[int, ManagedWorkflow] = {}  #: had work left beyond their last share
        while True:
            wake.wait(interval)
            wake.clear()
            now = time.time()
            chosen = carry
            while shared.dirty:
                wf = shared.dirty.popleft()
                chosen[id(wf)] = wf
            if now - last_round >= interval:
                chosen.update((id(wf), wf) for wf in list(self.workflows.values()))
                last_round = now
            due = [wf for wf in chosen.values() if wf.due]
            turn = (turn + 1) % max(len(due), 1)
            due = due[turn:] + due[:turn]  # who is brokered first changes every tick
            idle: list[frozenset[str]] = []

            def idle_sites() -> frozenset[str]:  # asked of brokerage at most once a tick
                if not idle:
                    idle.append(frozenset(ray.get(shared.brokerage.idle_sites.remote())))
                return idle[0]

            for wf in due:
                self._guarded(wf, lambda w: w.work(now, idle_sites))
            self._release([wf for wf in due if wf.has_ready], now)
            for wf in due:
                self._guarded(wf, lambda w: w.flush(now))
            carry = {id(wf): wf for wf in due if wf.has_work}
            if carry:
                wake.set()

    @staticmethod
    def _guarded(wf: ManagedWorkflow, step: Callable[[ManagedWorkflow], Any]) -> bool:
        """``step(wf)``, truthy or not; one workflow's fault must not stop the others."""
        try:
            return bool(step(wf))
        except Exception:
            log.exception("workflow %s: pump tick failed", wf.workflow_id)
            return False

    def _release(self, ready: list[ManagedWorkflow], now: float) -> None:
        """Broker these workflows' shares of ready jobs together, in batches, and put the
        dispatches into their sites' queues, one call per site."""
        shares: dict[bool, list[tuple[ManagedWorkflow, list[int]]]] = {True: [], False: []}
        for wf in ready:
            try:
                noops, real, _behind = wf.take_ready()
            except Exception:
                log.exception("workflow %s: could not take its ready jobs", wf.workflow_id)
                continue
            shares[True] += [(wf, noops)] if noops else []
            shares[False] += [(wf, real)] if real else []
        size = self.shared.settings.release_batch
        by_site: dict[str, list[Any]] = defaultdict(list)
        for noop, parts in shares.items():
            for batch in _batches(parts, size):
                reqs = [r for wf, idxs in batch for r in wf.requests(idxs)]
                sites, records = ray.get(self.shared.brokerage.broker_explained.remote(reqs, noop))
                k = 0
                for wf, idxs in batch:
                    n = len(idxs)
                    placed = self._guarded_place(wf, idxs, sites[k:k + n], records[k:k + n], now)
                    for site, dispatches in placed.items():
                        by_site[site] += dispatches
                    k += n
        for site, dispatches in by_site.items():
            q = self.shared.handles.get(queue_name(site))
            if q is not None:  # else the liveness check takes them back
                q.put.remote(dispatches)

    @staticmethod
    def _guarded_place(wf: ManagedWorkflow, idxs: list[int], sites: list[str | None], records: list[str],
                       now: float) -> dict[str, list[Any]]:
        try:
            return wf.place(idxs, sites, records, now)
        except Exception:
            log.exception("workflow %s: could not place its jobs", wf.workflow_id)
            return {}

    def _watch_loop(self) -> None:
        """Tell each workflow which pilots and site queues holding its jobs have died: one check
        of the hosted workflows' placements together."""
        handles = self.shared.handles
        while True:
            time.sleep(LIVENESS_INTERVAL)
            try:
                placed = {wf.workflow_id: wf.core.placements() for wf in list(self.workflows.values()) if wf.active}
                pilots = set().union(*(p for p, _ in placed.values()))
                sites = set().union(*(s for _, s in placed.values()))
                dead_pilots = self._dead({p: handles.get(p) for p in pilots}, "ready")
                dead_queues = self._dead({queue_name(s): handles.get(queue_name(s)) for s in sites}, "stats")
            except Exception:  # the cluster is shutting down, or a name is not registered yet
                log.debug("liveness check skipped", exc_info=True)
                continue
            dead_sites = {s for s in sites if queue_name(s) in dead_queues}
            if not (dead_pilots or dead_sites):
                continue
            for workflow_id, (p, s) in placed.items():
                if p & dead_pilots or s & dead_sites:
                    log.warning("workflow %s: lost pilots %s, lost site queues %s", workflow_id,
                                sorted(p & dead_pilots), sorted(s & dead_sites))
                    self.workflows[workflow_id].lost(p & dead_pilots, s & dead_sites)

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
            self.shared.handles.forget(name)
        return dead
