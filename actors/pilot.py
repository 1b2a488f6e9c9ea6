"""A warm pilot: a long-lived actor on its site's node that pulls batches and runs payloads.

Like a Harvester worker it pulls from its site queue (``acquire_jobs``), runs up to ``slots``
payloads at once (a function job's payload is a Ray task it launches and waits for,
:mod:`panray.actors.function_task`), completes no-op jobs in-process, and reports starts and
ends in batches to each workflow's manager (``update_job`` in bulk) — never one actor call per job.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import ray

from panray.actors.function_task import FunctionRun
from panray.actors.metrics import PilotMetrics
from panray.actors.names import NAMESPACE, queue_name
from panray.core.messages import Dispatch, Outcome, Started
from panray.core.payload_runner import PayloadProcess, RunnerServices
from panray.payload import is_function, sleep_seconds

REPORT_INTERVAL = 0.05


class _Reports:
    """Buffers starts and outcomes per workflow manager until the next flush."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started: dict[str, list[Started]] = defaultdict(list)
        self.ended: dict[str, list[Outcome]] = defaultdict(list)
        self.n_ended = 0
        self.wake = threading.Event()

    def add_started(self, wf: str, s: Started) -> None:
        with self.lock:
            self.started[wf].append(s)
        self.wake.set()

    def add_ended(self, wf: str, outcomes: list[Outcome]) -> None:
        with self.lock:
            self.ended[wf].extend(outcomes)
            self.n_ended += len(outcomes)
        self.wake.set()

    def take(self) -> tuple[dict[str, list[Started]], dict[str, list[Outcome]]]:
        with self.lock:
            started, ended = self.started, self.ended
            self.started, self.ended = defaultdict(list), defaultdict(list)
        return started, ended


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
        """The jobs whose time is up, waiting at most ``timeout`` s for the first one."""
        with self._cv:
            if not self._heap or self._heap[0][0] > time.monotonic():
                delay = timeout if not self._heap else min(timeout, self._heap[0][0] - time.monotonic())
                self._cv.wait(max(delay, 0.0))
            now, due = time.monotonic(), []
            while self._heap and self._heap[0][0] <= now:
                _, key = heapq.heappop(self._heap)
                entry = self._jobs.pop(key, None)
                if entry is not None:
                    due.append(entry)
            return due


@ray.remote(num_cpus=0, max_concurrency=8)
class Pilot:
    """Pulls from ``site-queue:<site>`` and runs payloads; see the module docstring."""

    def __init__(self, pilot_id: str, site: str, slots: int, work_dir: str, logging: dict[str, Any] | None = None):
        self.pilot_id, self.site, self.slots = pilot_id, site, slots
        self._services = RunnerServices(work_dir=Path(work_dir))
        self._heartbeat_interval = float((logging or {}).get("heartbeat_interval", 60.0))
        self._metrics = PilotMetrics(site, pilot_id) if (logging or {}).get("metrics", True) else None
        if logging:
            self._configure_logging(logging)
        self._queue = ray.get_actor(queue_name(site), namespace=NAMESPACE)
        self._managers: dict[str, Any] = {}
        self._running: dict[tuple[str, int], PayloadProcess] = {}  # (manager, job_id): ids are per store
        self._sleeping = _Sleepers()
        self._free = threading.Semaphore(slots)
        self._pool = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="payload")
        self._reports = _Reports()
        self._stop = threading.Event()
        self._acked = 0
        self._threads = [
            threading.Thread(target=self._pull_loop, name="pull", daemon=True),
            threading.Thread(target=self._report_loop, name="report", daemon=True),
            threading.Thread(target=self._wake_loop, name="sleepers", daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _configure_logging(self, cfg: dict[str, Any]) -> None:
        from panray.config import Settings
        from panray.logging_bridge import make_object_store, make_sink

        settings = Settings.model_validate(cfg)
        self._services.sink = make_sink(settings)
        self._services.object_store = make_object_store(settings)
        self._services.log_interval = settings.log_interval
        self._services.memory_tolerance = settings.memory_tolerance

    def __repr__(self) -> str:
        """What the dashboard shows: ``Pilot(USDF#3: 5/8 slots busy)``."""
        return f"Pilot({self.site}#{self.pilot_id.rpartition(':')[2]}: {len(self._running)}/{self.slots} slots busy)"

    def ready(self) -> str:
        """Answers once the actor is up: where it runs."""
        return ray.get_runtime_context().get_node_id()

    def info(self) -> dict[str, Any]:
        return {"pilot": self.pilot_id, "site": self.site, "slots": self.slots, "running": sorted(j for _, j in self._running)}

    def kill(self, job_ids: list[int], manager: str) -> int:
        """Kill the payloads of these jobs of ``manager``'s workflow; returns how many ran here."""
        dropped = self._sleeping.drop(manager, job_ids)
        procs = [self._running.get((manager, j)) for j in job_ids]
        for p in procs:
            if p is not None:
                p.kill("cancelled")
        return dropped + sum(p is not None for p in procs)

    def stop(self) -> None:
        self._stop.set()
        for p in list(self._running.values()):
            p.kill("cancelled")

    # -- loops -------------------------------------------------------------------------------

    def _pull_loop(self) -> None:
        while not self._stop.is_set():
            if not self._free.acquire(timeout=1.0):
                continue
            free = 1
            while self._free.acquire(blocking=False):
                free += 1
            ended = self._reports.n_ended
            try:
                batch = ray.get(self._queue.acquire.remote(self.pilot_id, free, ended - self._acked, 1.0))
            except Exception:  # the queue is being restarted or the cluster shuts down
                batch = []
                time.sleep(0.5)
            self._acked = ended
            used = self._start(batch)
            for _ in range(free - used):
                self._free.release()

    def _start(self, batch: list[Dispatch]) -> int:
        """Completes no-ops at once and hands real payloads to the slot pool; returns slots used."""
        now = time.time()
        noops: dict[str, list[Outcome]] = defaultdict(list)
        used = 0
        for d in batch:
            if not d.payload:
                noops[d.manager].append(
                    Outcome(d.job_id, d.attempt_nr, self.pilot_id, self.site, now, now, now, 0, None, None, None, None)
                )
                continue
            seconds = sleep_seconds(d.payload)
            if seconds is not None:
                self._sleeping.add(d, now, seconds)
                self._reports.add_started(d.manager, Started(d.job_id, d.attempt_nr, self.pilot_id, now, now))
                continue
            used += 1
            proc = (FunctionRun if is_function(d.payload) else PayloadProcess)(d, self.pilot_id, self._services)
            self._running[(d.manager, d.job_id)] = proc
            self._reports.add_started(d.manager, Started(d.job_id, d.attempt_nr, self.pilot_id, now, 0.0))
            self._pool.submit(self._run_one, proc, now)
        for wf, outs in noops.items():
            self._reports.add_ended(wf, outs)
        return used

    def _run_one(self, proc: PayloadProcess, sent: float) -> None:
        d = proc.d
        self._reports.add_started(d.manager, Started(d.job_id, d.attempt_nr, self.pilot_id, sent, time.time()))
        try:
            r = proc.run()
            out = Outcome(d.job_id, d.attempt_nr, self.pilot_id, self.site, sent, r.start_time, r.end_time,
                          r.exit_code, r.error_class, r.diag, r.max_pss_kb, r.log_url, r.quanta)
        except Exception as exc:  # the pilot itself failed to run it: a system error
            now = time.time()
            out = Outcome(d.job_id, d.attempt_nr, self.pilot_id, self.site, sent, now, now, None, "system",
                          f"pilot error: {exc!r}"[:500], None, None)
        finally:
            self._running.pop((d.manager, d.job_id), None)
            self._free.release()
        self._reports.add_ended(d.manager, [out])

    def _report_loop(self) -> None:
        next_beat = time.monotonic() + self._heartbeat_interval
        while not self._stop.is_set():
            self._reports.wake.wait(min(1.0, self._heartbeat_interval))
            self._reports.wake.clear()
            time.sleep(REPORT_INTERVAL)  # let a burst of ends gather into one report
            started, ended = self._reports.take()
            if self._metrics is not None:
                self._metrics.report(started.values(), ended.values(), len(self._running), self.slots)
            for name in set(started) | set(ended):
                mgr = self._manager(name)
                if mgr is not None:
                    mgr.report.remote(started.get(name, []), ended.get(name, []))
            if time.monotonic() >= next_beat:
                self._heartbeat()
                next_beat = time.monotonic() + self._heartbeat_interval

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

    def _manager(self, name: str) -> Any:
        mgr = self._managers.get(name)
        if mgr is None:
            try:
                mgr = self._managers[name] = ray.get_actor(name, namespace=NAMESPACE)
            except ValueError:
                return None
        return mgr
