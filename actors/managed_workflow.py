"""One workflow driven by a manager actor that hosts many: its core, inbox, acknowledgements and brokerage.

A :class:`ManagedWorkflow` is what one workflow's manager actor used to be, minus the threads:
the host's single pump gives it a share of every tick, in which the workflow handles at most
:data:`MESSAGES_PER_TICK` messages (:meth:`~ManagedWorkflow.work`) and releases at most
:data:`BATCHES_PER_TICK` batches of ready jobs (:meth:`~ManagedWorkflow.take_ready`), so a
busy or slow workflow delays the others by one fair share, never more. The host brokers the
shares of all its workflows together (one brokerage call, one put per site queue). Its state
changes go to the host's writer in batches of its own; what a pilot reported is acknowledged
once the writer has stored the effects.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from array import array
from collections import defaultdict, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import ray

from panray.actors.metrics import ManagerMetrics
from panray.actors.names import Handles, actor, manager_name, queue_name
from panray.config import Settings
from panray.core.cluster_core import make_core
from panray.core.messages import Outcome, Started
from panray.core.workflow_core import DEFINED, CoreSettings, WorkflowCore
from panray.payload import occupies_slot
from panray.statuses import JOB_CODES
from panray.store.base import DecisionRow

if TYPE_CHECKING:
    from panray.actors.workflow_manager import _Writer

log = logging.getLogger(__name__)

COLLECT_TIMEOUT = 10.0
"""Seconds a starting workflow waits for live pilots to say what they hold for it."""

MESSAGES_PER_TICK = 64
"""Messages (pilot reports, heartbeats, client calls) one workflow handles per pump tick."""

BATCHES_PER_TICK = 4
"""Release batches one workflow brokers per pump tick; the rest waits for the next tick."""

_STATUS_NAMES = [s.value for s in JOB_CODES]


def settle() -> None:
    """Take the workflows' rows out of the garbage collector's sight: they live as long as their
    cores, and otherwise the pump's short-lived rows set off full collections that walk all of
    them (at 50k jobs the core's CPU per job fell from 48 to 18 us). Rows of a core replaced by
    a retry become collectable again first."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


@dataclass
class Shared:
    """What the workflows of one manager actor share."""

    settings: Settings
    core_settings: CoreSettings
    store: Any
    writer: _Writer
    brokerage: Any
    handles: Handles
    wake: threading.Event  #: set when a workflow has work for the pump
    dirty: deque[ManagedWorkflow] = field(default_factory=deque)  #: workflows with new work since the last tick

    def poke(self, wf: ManagedWorkflow) -> None:
        """``wf`` has new work: the pump's next tick gives it its share."""
        self.dirty.append(wf)
        self.wake.set()


class ManagedWorkflow:
    """One workflow on its host; its public methods are the host's per-workflow calls."""

    def __init__(self, workflow_id: int, shared: Shared, retry: bool = False, by: str = ""):
        self.workflow_id = workflow_id
        self.shared = shared
        self.address = manager_name(shared.settings.resolved_db_url, workflow_id)
        self.core: WorkflowCore = None  # type: ignore[assignment]  # set by load()
        self.workflow_name = ""
        self.loaded = threading.Event()
        self.started = False  #: adopted and started: the pump ticks it
        self.failure: BaseException | None = None  #: why it could not be loaded
        self.store_error: BaseException | None = None  #: a batch of it the store rejected
        self._retry, self.started_by = retry, by  #: who started it (cause of a retry or a stored cancel)
        self._seen: dict[str, int] = {}  #: pilot incarnation -> last report handled
        self._acks: deque[tuple[int, dict[str, int]]] = deque()  #: (writer batches submitted, seen then)
        self._acked: dict[str, int] = {}  #: pilot incarnation -> last report whose effects are stored
        self._inbox: deque[tuple[Any, ...]] = deque()
        self._done = threading.Event()
        self._restarting = False
        self._beat_lags: deque[float] = deque(maxlen=100_000)
        self._beats = 0
        self._lag_max: float | None = None  #: largest heartbeat lag since the last flush
        self._ready: list[int] = []
        self._parked: list[int] = []  #: ready jobs of a held workflow or task, brokered on release
        self._unplaced: set[tuple[int, int]] = set()  #: attempts whose failed brokerage is recorded
        self._metrics: ManagerMetrics | None = None
        self._released = array("d")  #: when each job was last queued to a site
        self._prioritised = False
        self.behind = False  #: ready jobs were left beyond the last tick's share
        self._last_flush = self._last_expire = 0.0
        self._stored_at = 0  #: the writer's sequence number of this workflow's last batch
        self._seen_flushed: dict[str, int] = {}  #: ``_seen`` when last handed to the acknowledgements
        cs = shared.core_settings
        self._expire_every = min(cs.heartbeat_timeout, cs.sent_timeout, cs.activated_timeout) / 4

    def __repr__(self) -> str:
        c = self.core
        return f"{self.workflow_id} {self.workflow_name}: " + ("loading" if c is None else f"{c.n_final:,}/{c.n:,} ended")

    # -- start-up (in the host's starter thread) -----------------------------------------------

    def load(self) -> None:
        """Build the core from the store, collect what live pilots hold for it, and start it."""
        try:
            snap = self.shared.store.load_workflow(self.workflow_id)
            self.core = make_core(snap, self.shared.core_settings, manager=self.address)
            gc.freeze()  # see settle(): a full collection per workflow would walk every host's rows
            self.workflow_name = snap.workflow.name
            labels = {t.task_id: t.label for t in snap.tasks}
            if self.shared.settings.metrics:
                self._metrics = ManagerMetrics(self.workflow_id, self.address.split(":")[1],
                                               [labels[t] for t in sorted(labels)])
            self._released = array("d", bytes(8 * self.core.n))
            self._prioritised = len(set(self.core.priority)) > 1  #: broker higher priorities first
            self.loaded.set()
            self._ready.extend(self.core.adopt(*self._collect(), time.time()))
            self._ready.extend(self.core.start(time.time(), retry=self._retry, by=self.started_by))
        except BaseException as exc:
            log.exception("workflow %s could not start", self.workflow_id)
            self.failure = exc
            self.loaded.set()
            self._done.set()
            return
        self._last_flush = self._last_expire = time.time()
        self.started = True
        self.shared.poke(self)

    def _collect(self) -> tuple[list[tuple[int, int, str]], list[Started], list[Outcome]]:
        """What every live pilot still runs for this workflow, and the reports it holds for it."""
        names = ray.get(self.shared.brokerage.pilot_names.remote())
        refs = {}
        for name in names:
            pilot = actor(name)
            if pilot is not None:
                refs[pilot.holding.remote(self.address)] = name
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

    # -- calls from pilots and clients (only enqueue) -----------------------------------------

    def _put(self, *msg: Any) -> None:
        self._inbox.append(msg)
        self.shared.poke(self)

    def report(self, started: list[Started], ended: list[Outcome], pilot: str | None, seq: int | None) -> int:
        if seq is not None:
            self._put("report", started, ended, pilot, seq)
        return self._acked.get(pilot or "", 0)

    def claim(self, pilot: str, attempts: list[tuple[int, int]], sent_at: float) -> list[bool]:
        answer: Future[list[bool]] = Future()
        self._put("claim", pilot, attempts, sent_at, answer)
        return answer.result()

    def rebroker(self, jobs: list[tuple[int, int]], lost_pilot: str | None) -> None:
        self._put("rebroker", jobs, lost_pilot)

    def heartbeat(self, beats: list[tuple[int, int]], sent_at: float | None) -> None:
        self._put("heartbeat", beats, sent_at or time.time())

    def lost(self, pilots: set[str], sites: set[str]) -> None:
        self._put("lost", pilots, sites)

    def stored(self, seconds: float) -> None:
        """The writer stored a transaction holding some of this workflow's changes."""
        if self._metrics is not None:
            self._metrics.stored(seconds)

    def stats(self) -> dict[str, Any]:
        lags = sorted(self._beat_lags)
        pick = (lambda q: lags[min(len(lags) - 1, int(q * len(lags)))]) if lags else (lambda q: None)
        return {"heartbeats": len(lags), "beats": self._beats, "lag_p50": pick(0.5), "lag_p99": pick(0.99),
                "lag_max": lags[-1] if lags else None}

    def cancel(self, task_id: int | None, job_ids: list[int] | None, by: str) -> None:
        self._put("cancel", task_id, job_ids, by)

    def retry(self, by: str) -> None:
        self._restarting = True
        self._done.clear()
        self._put("retry", by)

    def rerun(self, task_id: int | None, job_ids: list[int] | None, memory: int | None, by: str) -> int:
        answer: Future[int] = Future()
        self._restarting = True  # the workflow may have ended: it runs again
        self._done.clear()
        self._put("rerun", task_id, job_ids, memory, by, answer)
        return answer.result()

    def hold(self, task_id: int | None, by: str) -> None:
        self._put("hold", task_id, by)

    def release(self, task_id: int | None) -> None:
        self._put("release", task_id)

    def set_priority(self, priority: int, task_id: int | None, job_ids: list[int] | None) -> None:
        self._put("priority", priority, task_id, job_ids)

    def progress(self) -> dict[str, Any]:
        c = self.core
        return {"workflow_id": self.workflow_id, "status": c.workflow_status, "counts": c.counts(), "total": c.n,
                "retries": c.n_retries}

    def wait(self, timeout: float | None) -> str | None:
        """The status once ended and persisted; None if not within ``timeout`` s."""
        if not self._done.wait(timeout):
            return None
        error = self.failure or self.store_error
        if error is not None:
            raise error
        return self.core.workflow_status

    # -- the pump's share ------------------------------------------------------------------------

    def work(self, now: float, idle_sites: Callable[[], frozenset[str]]) -> None:
        """This tick's share of messages, and the timeouts when due."""
        for _ in range(min(len(self._inbox), MESSAGES_PER_TICK)):
            msg = self._inbox.popleft()
            try:
                self._handle(msg, now)
            except Exception:  # one bad message must not stop the workflow's other jobs
                log.exception("workflow %s: could not handle %s", self.workflow_id, msg[0])
        if now - self._last_expire >= self._expire_every:
            self._expire(now, idle_sites())
            self._last_expire = now

    @property
    def has_ready(self) -> bool:
        return bool(self._ready)

    @property
    def has_work(self) -> bool:
        """Messages or ready jobs left beyond this tick's share: the next tick goes on at once."""
        return bool(self._inbox) or self.behind

    def flush(self, now: float) -> bool:
        """Hand the changes to the writer when due, acknowledge what is stored, and notice the
        end; True when messages are left for the next tick right away."""
        core, writer = self.core, self.shared.writer
        if now - self._last_flush >= self.shared.settings.flush_interval or (core.done and not self._done.is_set()):
            batch = core.drain_changes(now)
            if batch:
                self._stored_at = writer.put(batch, self)
            if batch or self._seen != self._seen_flushed:
                self._acks.append((writer.submitted, dict(self._seen)))
                self._seen_flushed = dict(self._seen)
            if self._metrics is not None:
                self._metrics.flush(core.task_counts, _STATUS_NAMES, self._lag_max)
                self._lag_max = None
            self._last_flush = now
        while self._acks and writer.written >= self._acks[0][0] and self.store_error is None:
            self._acked.update(self._acks.popleft()[1])  # stored: its pilots may forget these reports
        if (core.done and not self._inbox and not self._restarting and not self._done.is_set()
                and writer.written >= self._stored_at):
            self._done.set()
        return bool(self._inbox)

    @property
    def due(self) -> bool:
        """Whether the pump has anything to do for it: running, messages, or acknowledgements to give."""
        return self.started and (not self._done.is_set() or bool(self._inbox) or bool(self._acks))

    @property
    def active(self) -> bool:
        """Started and not ended: its pilots and queues are watched."""
        return self.started and not self._done.is_set()

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
            self._restart(now, msg[1])
        elif kind == "cancel":
            task_id, job_ids, by = msg[1], msg[2], msg[3]
            whole = task_id is None and job_ids is None
            held, ready = self.core.cancel(now, None if whole else self.core.select(task_id, job_ids or ()), by=by)
            if whole:
                self._ready.clear()
                self._parked.clear()
            self._ready.extend(ready)
            self._kill([job for job, _pilot in held], whole=whole)
        elif kind == "rerun":
            self._rerun(msg[1], msg[2], msg[3], msg[4], msg[5], now)
        elif kind == "hold":
            back = self.core.hold(now, msg[1], by=msg[2])
            self._parked.extend(back)
            self._drop_queued([self.core.first_id + i for i in back])
        elif kind == "release":
            self.core.release_hold(msg[1])
            parked, self._parked = self._parked, []
            self._ready.extend(i for i in parked if self.core.status[i] == DEFINED)
        elif kind == "priority":
            whole = msg[2] is None and msg[3] is None
            self.core.set_priority(range(self.core.n) if whole else self.core.select(msg[2], msg[3] or ()), msg[1])
            self._prioritised = True

    def _restart(self, now: float, by: str) -> None:
        """Rerun failed, cancelled and pruned jobs on a core fresh from the store, under the same address."""
        writer = self.shared.writer
        batch = self.core.drain_changes(now)
        if batch:
            self._stored_at = writer.put(batch, self)
        writer.wait_stored(self._stored_at)
        snap = self.shared.store.load_workflow(self.workflow_id)
        self.core = make_core(snap, self.core.settings, manager=self.core.manager)
        settle()
        self._ready = self.core.start(now, retry=True, by=by)
        self._parked = []  # the new core's start hands back every defined job, held ones too
        self._restarting = False

    def _rerun(self, task_id: int | None, job_ids: list[int] | None, memory: int | None, by: str,
               answer: Future[int], now: float) -> None:
        try:
            idxs = None if task_id is None and job_ids is None else self.core.select(task_id, job_ids or ())
            again, ready = self.core.rerun(idxs, now, by=by, memory=memory)
            self._ready.extend(ready)
            answer.set_result(len(again))
        except Exception as exc:  # the caller hears of it; the workflow goes on
            answer.set_exception(exc)
        finally:
            self._restarting = False

    def _expire(self, now: float, idle: frozenset[str]) -> None:
        """Time out silent pilots, and take back jobs queued at sites that have no live pilot
        (their old dispatches leave those queues, so returning pilots do not run them)."""
        ready = self.core.expire(now, idle)
        if idle and ready:
            ids = [self.core.first_id + i for i in ready]
            for site in idle:
                q = self._queue_or_none(site)
                if q is not None:
                    q.remove.remote(manager=self.core.manager, job_ids=ids)
        self._ready.extend(ready)

    def take_ready(self) -> tuple[list[int], list[int], bool]:
        """This tick's share of ready jobs to broker: (no-ops, real payloads, whether more are
        ready beyond the share), higher priorities first. Held ones are parked; what is beyond
        the share waits for the next tick."""
        core = self.core
        ready, self._ready = self._ready, []
        if core.held_all or core.held_tasks:
            free: list[int] = []
            for i in ready:
                (self._parked if core.is_held(i) else free).append(i)
            ready = free
        if self._prioritised:
            priority = core.priority
            ready.sort(key=lambda i: -priority[i])
        share = self.shared.settings.release_batch * BATCHES_PER_TICK
        ready, self._ready = ready[:share], ready[share:]
        rows = core.rows
        noops: list[int] = []
        real: list[int] = []
        for i in ready:
            (real if occupies_slot(rows[i].payload) else noops).append(i)
        self.behind = bool(self._ready)
        return noops, real, self.behind

    def requests(self, idxs: list[int]) -> list[tuple[Any, ...]]:
        """What brokerage needs to know of these jobs (see ``Brokerage.broker_explained``)."""
        core, rows = self.core, self.core.rows
        return [(core.memory[i], rows[i].request_cpus, rows[i].site_pin, core.input_sites(i), core.avoid.get(i))
                for i in idxs]

    def place(self, idxs: list[int], sites: list[str | None], records: list[str], now: float) -> dict[str, list[Any]]:
        """Apply brokerage's answers: the jobs' dispatches per site (to put into the site queues)
        and, for jobs no site can take yet, another try on the next tick."""
        core = self.core
        first, attempt = core.first_id, core.attempt
        by_site: dict[str, list[int]] = defaultdict(list)
        explained: list[DecisionRow] = []
        deferred: list[int] = []
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
        out: dict[str, list[Any]] = {}
        for site, group in by_site.items():
            moved = core.queued(group, [site] * len(group), now)
            if self._metrics is not None:
                for i in moved:
                    self._released[i] = now
            if moved:
                out[site] = [core.dispatch(i, site) for i in moved]
        self._ready.extend(deferred)  # throttled or no site can take them yet
        return out

    def _queue_or_none(self, site: str) -> Any:
        """None when the site's node is gone."""
        return self.shared.handles.get(queue_name(site))

    def _kill(self, job_ids: list[int], *, whole: bool = True) -> None:
        """Drop queued jobs (all of the workflow's, or only these) and kill these payloads on every pilot."""
        if not whole and not job_ids:
            return
        self._drop_queued(None if whole else job_ids)
        if job_ids:
            self._kill_payloads(job_ids, ray.get(self.shared.brokerage.pilot_names.remote()))

    def _drop_queued(self, job_ids: list[int] | None) -> None:
        """Take the workflow's queued jobs (None: all of them) out of every site queue."""
        if job_ids is not None and not job_ids:
            return
        for site in ray.get(self.shared.brokerage.site_names.remote()):
            q = self.shared.handles.require(queue_name(site))
            if job_ids is None:
                q.remove.remote(manager=self.core.manager)
            else:
                q.remove.remote(manager=self.core.manager, job_ids=job_ids)

    def _kill_payloads(self, job_ids: list[int], pilots: list[str]) -> None:
        """Ask these pilots to kill the payloads; a pilot that is gone took its payloads with it."""
        for name in pilots:  # looked up afresh: a pilot restarted under a cached name must be reached
            pilot = actor(name)
            if pilot is not None:
                pilot.kill.remote(job_ids, self.core.manager)
