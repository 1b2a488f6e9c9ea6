"""A warm pilot: a long-lived actor on its site's node that pulls batches and runs payloads.

Like a Harvester worker it pulls from its site queue (``acquire_jobs``), holds up to
``PREFETCH`` x ``slots`` jobs (so that a slot that frees starts the next payload without waiting
for a pull), runs up to ``slots`` payloads at once (a function job's payload is a Ray task it launches and waits for,
:mod:`panray.actors.function_task`), completes no-op jobs in-process, and reports starts and ends in batches to
each workflow's manager (``update_job`` in bulk) — never one actor call per job.

Before it starts a pulled batch the pilot claims it from each manager in one call: the manager
admits only the attempts it still wants to run, and marks them ``sent`` to this pilot, so an
attempt taken back from a queue (released again under a new attempt number) or already
claimed elsewhere is dropped here. Two attempts of one job therefore never run at once.

Reports stay in the pilot's :class:`~panray.core.outbox.Outbox` until the manager says it
stored them; a failed call marks the manager for a resend of everything unacknowledged (Ray
restarts a dead manager under the same handle; a name taken over by a new actor is looked up
again). A restarted manager first asks every live pilot what it holds (:meth:`Pilot.holding`).
"""

from __future__ import annotations

import heapq
import threading
import time
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import ray

from panray.actors.function_task import FunctionRun, FunctionWaiter
from panray.actors.metrics import PilotMetrics
from panray.actors.names import Handles, queue_name
from panray.config import Settings
from panray.core.messages import Dispatch, Outcome, Started
from panray.core.outbox import Outbox
from panray.core.payload_runner import PayloadProcess, PayloadResult, PayloadUser, RunnerServices
from panray.payload import is_function, sleep_seconds
from panray.retry import CANCELLED, SYSTEM

REPORT_INTERVAL = 0.05
PREFETCH = 1
"""A pilot holds up to this many jobs per slot; those beyond its slots would wait in the pilot, claimed,
for the next free slot. One: jobs held ahead would still start after their site went offline (its
queue gives back only what it holds), so a pilot takes no more than its free slots until held jobs
can be given back too."""
STOP_GRACE = 5.0
"""Seconds a stopping pilot gives its killed payloads to end and its log sink to deliver; what is
still undelivered then stays in the pilot's spool on disk for the next pilot of its name."""
CLAIM_TIMEOUT = 30.0  #: seconds a pilot waits for a manager to admit a batch; unanswered = dropped


class _Sleepers:
    """In-process sleep payloads held as timers: a heap of deadlines, no process, no slot."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._heap: list[tuple[float, tuple[str, int]]] = []
        self._jobs: dict[tuple[str, int], tuple[Dispatch, float]] = {}

    def add(self, d: Dispatch, start: float, seconds: float) -> None:
        with self._cv:
            key = (d.manager, d.job_id)
            self._jobs[key] = (d, start)
            heapq.heappush(self._heap, (time.monotonic() + seconds, key))
            self._cv.notify()

    def drop(self, manager: str, job_ids: list[int]) -> int:
        with self._cv:
            return sum(self._jobs.pop((manager, j), None) is not None for j in job_ids)

    def held(self) -> list[Dispatch]:
        with self._cv:
            return [d for d, _ in self._jobs.values()]

    def wait_due(self, timeout: float) -> list[tuple[Dispatch, float]]:
        """The jobs whose time is up, waiting at most ``timeout`` s for the first one.

        They stay held until :meth:`finish`, so that a job is always either held or reported.
        """
        with self._cv:
            if not self._heap or self._heap[0][0] > time.monotonic():
                delay = timeout if not self._heap else min(timeout, self._heap[0][0] - time.monotonic())
                self._cv.wait(max(delay, 0.0))
            now, due = time.monotonic(), []
            while self._heap and self._heap[0][0] <= now:
                _, key = heapq.heappop(self._heap)
                entry = self._jobs.get(key)
                if entry is not None:
                    due.append(entry)
            return due

    def finish(self, ds: list[Dispatch]) -> None:
        with self._cv:
            for d in ds:
                self._jobs.pop((d.manager, d.job_id), None)


def _refused(d: Dispatch, pilot: str, site: str, sent: float, exc: Exception) -> Outcome:
    """The outcome of a job whose own data the pilot cannot run: a payload (user) error, exit 127."""
    now = time.time()
    return Outcome(d.job_id, d.attempt_nr, pilot, site, sent, now, now, 127, "payload",
                   f"pilot cannot run this job: {exc!r}"[:500], None, None)


@ray.remote(num_cpus=0, max_concurrency=8)
class Pilot:
    """Pulls from ``site-queue:<site>`` and runs payloads; see the module docstring."""

    def __init__(self, pilot_id: str, site: str, slots: int, settings: Settings):
        self.pilot_id, self.site, self.slots = pilot_id, site, slots
        self.key = f"{pilot_id}#{uuid.uuid4().hex[:12]}"  #: this incarnation, as the site queue knows it
        self._services = RunnerServices(work_dir=settings.work_dir)
        self._spool_dir = settings.work_dir / "log-spool" / pilot_id.replace(":", "_")
        self._heartbeat_interval = settings.heartbeat_interval
        self._metrics = PilotMetrics(site, pilot_id) if settings.metrics else None
        self._log: Any = None  #: the pilot's own lifecycle log (start, pull problems, stop)
        self._pulling = True  #: the last pull reached the queue
        self._configure_logging(settings)
        self._handles = Handles()
        self._queue = self._handles.require(queue_name(site))
        self._running: dict[tuple[str, int], PayloadProcess] = {}  # (manager, job_id): ids are per store
        self._sleeping = _Sleepers()
        self._free = threading.Semaphore(slots * PREFETCH)  #: jobs this pilot may still take
        self._pool = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="payload")
        self._finisher = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="finish")  #: uploads, off the slots
        self._functions = FunctionWaiter(slots, self._launch, self._function_ended)
        self._reports = Outbox()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._pull_loop, name="pull", daemon=True),
            threading.Thread(target=self._report_loop, name="report", daemon=True),
            threading.Thread(target=self._wake_loop, name="sleepers", daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _configure_logging(self, settings: Settings) -> None:
        from panray.logging_bridge import make_object_store, make_sink

        self._services.sink = make_sink(settings, spool_dir=self._spool_dir)
        self._services.object_store = make_object_store(settings)
        self._services.log_interval = settings.log_interval
        self._services.memory_tolerance = settings.memory_tolerance
        self._services.user = PayloadUser.lookup(settings.payload_user) if settings.payload_user else None
        from panray.logging_bridge.pilot_log import PilotLog

        logs = self._services.work_dir / "pilots"
        logs.mkdir(parents=True, exist_ok=True)
        self._log = PilotLog(logs / f"{self._spool_dir.name}.log",
                             {"Harvester_WorkerID": self.pilot_id, "site": self.site}, self._services.sink)
        recovered = self._services.sink.stats().get("recovered", 0)
        self._log.event("start", f"pilot {self.pilot_id} started at {self.site} with {self.slots} slots"
                        + (f"; re-sending {recovered} log entries a previous pilot of this name left" if recovered else ""),
                        slots=self.slots, recovered=recovered)

    def __repr__(self) -> str:
        """What the dashboard shows: ``Pilot(USDF#3: 5/8 slots busy)``."""
        return f"Pilot({self.site}#{self.pilot_id.rpartition(':')[2]}: {len(self._running)}/{self.slots} slots busy)"

    def ready(self) -> str:
        """Answers once the actor is up: where it runs."""
        return ray.get_runtime_context().get_node_id()

    def incarnation(self) -> str:
        """This pilot process' key: a replacement under the same name answers another one."""
        return self.key

    def holding(self, manager: str) -> tuple[list[tuple[int, int]], list[Started], list[Outcome]]:
        """For a restarted manager: (job_id, attempt_nr) still running here, and the starts and
        outcomes it has not acknowledged. A job is always in one of them until acknowledged."""
        held = [(d.job_id, d.attempt_nr) for d in [p.d for p in list(self._running.values())] + self._sleeping.held()
                if d.manager == manager]
        started, ended = self._reports.held(manager)
        return held, started, ended

    def info(self) -> dict[str, Any]:
        return {"pilot": self.pilot_id, "site": self.site, "slots": self.slots, "running": sorted(j for _, j in self._running)}

    def kill(self, job_ids: list[int], manager: str) -> int:
        """Kill the payloads of these jobs of ``manager``'s workflow; returns how many ran here."""
        dropped = self._sleeping.drop(manager, job_ids)
        procs = [self._running.get((manager, j)) for j in job_ids]
        for p in procs:
            if p is not None:
                p.kill(CANCELLED)
        return dropped + sum(p is not None for p in procs)

    def log_stats(self) -> dict[str, int]:
        """The log sink's counters (delivered, retried, dropped, recovered, pending, ...)."""
        sink = self._services.sink
        return sink.stats() if sink is not None else {}

    def stop(self) -> bool:
        """Kill the payloads and close the log sink; True when every log line was delivered."""
        self._stop.set()
        for p in list(self._running.values()):
            p.kill(SYSTEM)  # a shutdown, not a cancel: the attempt is retried when the run resumes
        if self._log is not None:
            self._log.event("stop", f"pilot {self.pilot_id} stopping; {len(self._running)} payloads killed")
        deadline = time.monotonic() + STOP_GRACE
        while self._running and time.monotonic() < deadline:  # their last lines reach the sink
            time.sleep(0.05)
        self._functions.stop()
        self._services.close()
        sink = self._services.sink
        return sink.close(timeout=max(deadline - time.monotonic(), 0.1)) if sink is not None else True

    # -- loops -------------------------------------------------------------------------------

    def _pull_loop(self) -> None:
        while not self._stop.is_set():
            if not self._free.acquire(timeout=1.0):
                continue
            free = 1
            while self._free.acquire(blocking=False):
                free += 1
            ended = self._reports.take_ended_keys()
            try:
                batch = ray.get(self._queue.acquire.remote(self.key, free, ended, 1.0))
            except Exception as exc:  # the queue is being restarted or the cluster shuts down
                if self._log is not None and self._pulling and not self._stop.is_set():  # once per streak
                    self._log.event("pull_failed", f"pulling from site-queue:{self.site} failed: {exc!r}"[:500],
                                    level="WARNING")
                batch, self._pulling = [], False
                self._reports.restore_ended_keys(ended)
                time.sleep(0.5)
            else:
                self._pulling = True
            used = self._start(self._claim(batch) if batch else batch)
            for _ in range(free - used):
                self._free.release()

    def _claim(self, batch: list[Dispatch]) -> list[Dispatch]:
        """The dispatches whose managers admit them, in one call per manager; no-ops need no claim.

        What is refused or unanswered (a manager restarting re-releases it) is dropped, and the
        queue hears at the next pull that this pilot no longer holds it.
        """
        keep = [d for d in batch if not d.payload]
        asked: dict[str, list[Dispatch]] = defaultdict(list)
        for d in batch:
            if d.payload:
                asked[d.manager].append(d)
        refs = {}
        now = time.time()
        for name, ds in asked.items():
            mgr = self._manager(name)
            if mgr is not None:
                refs[name] = mgr.claim.remote(self.pilot_id, [(d.job_id, d.attempt_nr) for d in ds], now)
        for name, ds in asked.items():
            admitted: list[bool] = [False] * len(ds)
            if name in refs:
                try:
                    admitted = ray.get(refs[name], timeout=CLAIM_TIMEOUT)
                except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                    self._handles.forget(name)  # look it up again next time
            keep.extend(d for d, ok in zip(ds, admitted) if ok)
            self._reports.restore_ended_keys([(name, d.job_id) for d, ok in zip(ds, admitted) if not ok])
        return keep

    def _start(self, batch: list[Dispatch]) -> int:
        """Completes no-ops at once and hands real payloads to the slot pool; returns slots used."""
        now = time.time()
        noops: dict[str, list[Outcome]] = defaultdict(list)
        used = 0
        for d in batch:
            try:
                used += self._start_one(d, now, noops)
            except Exception as exc:  # one bad job fails alone, as the user's error; the loop goes on
                noops[d.manager].append(_refused(d, self.pilot_id, self.site, now, exc))
        for wf, outs in noops.items():
            self._reports.add_ended(wf, outs)
        return used

    def _start_one(self, d: Dispatch, now: float, noops: dict[str, list[Outcome]]) -> int:
        """Start one job: 1 if it took a slot."""
        if not d.payload:
            noops[d.manager].append(
                Outcome(d.job_id, d.attempt_nr, self.pilot_id, self.site, now, now, now, 0, None, None, None, None)
            )
            return 0
        seconds = sleep_seconds(d.payload)
        if seconds is not None:
            self._sleeping.add(d, now, seconds)
            self._reports.add_started(d.manager, Started(d.job_id, d.attempt_nr, self.pilot_id, now, now))
            return 0
        if is_function(d.payload):  # launched by the waiter while it has a free slot; holds a permit till its end
            run = FunctionRun(d, self.pilot_id, self._services)
            run.sent = now
            self._running[(d.manager, d.job_id)] = run
            self._functions.add(run)
            return 1
        proc = PayloadProcess(d, self.pilot_id, self._services)
        self._running[(d.manager, d.job_id)] = proc
        self._pool.submit(self._run_one, proc, now)
        return 1

    def _launch(self, run: FunctionRun) -> float | None:
        """Submit a function job's Ray task: its start time, or None when it ended at once (reported)."""
        d = run.d
        self._reports.add_started(d.manager, Started(d.job_id, d.attempt_nr, self.pilot_id, run.sent, time.time()))
        start = self._attempt(run, run.sent, run.launch)
        if isinstance(start, Outcome):
            self._free.release()
            self._ended(run, start)
            return None
        return start

    def _function_ended(self, run: FunctionRun, result: PayloadResult) -> None:
        self._free.release()
        self._finisher.submit(self._finish_one, run, run.sent, result)

    def _run_one(self, proc: PayloadProcess, sent: float) -> None:
        """In a slot: start the payload and wait for it; its attempt is finished off the slot."""
        d = proc.d
        self._reports.add_started(d.manager, Started(d.job_id, d.attempt_nr, self.pilot_id, sent, time.time()))
        try:
            ended = self._attempt(proc, sent, proc.execute)
        finally:
            self._free.release()
        if isinstance(ended, Outcome):
            self._ended(proc, ended)
        else:
            self._finisher.submit(self._finish_one, proc, sent, ended)

    def _finish_one(self, proc: PayloadProcess, sent: float, ended: int | PayloadResult) -> None:
        r = self._attempt(proc, sent, lambda: proc.finish(ended))
        d = proc.d
        out = r if isinstance(r, Outcome) else Outcome(
            d.job_id, d.attempt_nr, self.pilot_id, self.site, sent, r.start_time, r.end_time, r.exit_code,
            r.error_class, r.diag, r.max_pss_kb, r.log_url, r.quanta)
        self._ended(proc, out)

    def _attempt(self, proc: PayloadProcess, sent: float, step: Any) -> Any:
        """What ``step`` returns, or the outcome of its failure: the job's own data unusable (a
        payload error) or the pilot failing to run it (a system error)."""
        try:
            return step()
        except (ValueError, TypeError) as exc:  # the job's own data (command, environment) is unusable
            return _refused(proc.d, self.pilot_id, self.site, sent, exc)
        except Exception as exc:
            proc.pilot_error(exc)
            now = time.time()
            return Outcome(proc.d.job_id, proc.d.attempt_nr, self.pilot_id, self.site, sent, now, now, None, SYSTEM,
                           f"pilot error: {exc!r}"[:500], None, None)

    def _ended(self, proc: PayloadProcess, out: Outcome) -> None:
        self._reports.add_ended(proc.d.manager, [out])
        self._running.pop((proc.d.manager, proc.d.job_id), None)  # after: always held or reported

    def _report_loop(self) -> None:
        next_beat = time.monotonic() + self._heartbeat_interval
        calls: list[tuple[str, Any]] = []  #: (manager, report call) not answered yet
        broken: set[str] = set()  #: managers whose last call failed: resend all they have not acknowledged
        while not self._stop.is_set():
            self._reports.wake.wait(min(1.0, self._heartbeat_interval))
            self._reports.wake.clear()
            time.sleep(REPORT_INTERVAL)  # let a burst of ends gather into one report
            calls = self._acknowledged(calls, broken)
            asking = {name for name, _ in calls}
            flushed = self._reports.flush()
            if self._metrics is not None:
                self._metrics.report([v[1] for v in flushed.values()], [v[2] for v in flushed.values()],
                                     len(self._running), self.slots)
            for name, (seq, started, ended) in flushed.items():
                if name not in broken:
                    calls.append((name, self._send(name, seq, started, ended)))
                    asking.add(name)
            for name in self._reports.waiting():
                if name in broken:
                    batch = self._reports.resend(name)
                    if batch is not None:
                        broken.discard(name)
                        calls.append((name, self._send(name, *batch)))
                elif name not in asking:  # only the acknowledgement is missing: ask for it
                    calls.append((name, self._send(name, None, [], [])))
            if time.monotonic() >= next_beat:
                self._heartbeat()
                next_beat = time.monotonic() + self._heartbeat_interval

    def _send(self, name: str, seq: int | None, started: list[Started], ended: list[Outcome]) -> Any:
        mgr = self._manager(name)
        return None if mgr is None else mgr.report.remote(started, ended, self.key, seq)

    def _acknowledged(self, calls: list[tuple[str, Any]], broken: set[str]) -> list[tuple[str, Any]]:
        """Apply the answers that arrived; a failed call marks its manager broken. Returns the rest."""
        refs = [ref for _, ref in calls if ref is not None]
        done = set(ray.wait(refs, num_returns=len(refs), timeout=0)[0]) if refs else set()
        rest = []
        for name, ref in calls:
            if ref is not None and ref not in done:
                rest.append((name, ref))
                continue
            if ref is None:  # no actor holds the name: Ray restarts keep it, so it is gone for good
                self._reports.drop(name)
                continue
            try:
                acked = ray.get(ref)
                if acked:
                    self._reports.ack(name, acked)
            except ray.exceptions.RayActorError:  # restarting, or replaced: look it up again
                self._handles.forget(name)
                broken.add(name)
        return rest

    def _heartbeat(self) -> None:
        """One batched heartbeat per manager for all payloads still running here."""
        beats: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for d in [p.d for p in list(self._running.values())] + self._sleeping.held():
            beats[d.manager].append((d.job_id, d.attempt_nr))
        sent_at = time.time()
        for name, jobs in beats.items():
            mgr = self._manager(name)
            if mgr is not None:
                mgr.heartbeat.remote(jobs, sent_at)

    def _wake_loop(self) -> None:
        """Ends in-process sleep payloads when their time is up, in batches."""
        while not self._stop.is_set():
            due = self._sleeping.wait_due(1.0)
            now = time.time()
            ended: dict[str, list[Outcome]] = defaultdict(list)
            for d, start in due:
                ended[d.manager].append(Outcome(d.job_id, d.attempt_nr, self.pilot_id, self.site, start, start, now,
                                                0, None, None, None, None))
            for name, outs in ended.items():
                self._reports.add_ended(name, outs)
            self._sleeping.finish([d for d, _ in due])

    def _manager(self, name: str) -> Any:
        return self._handles.get(name)
