"""Function payloads as Ray tasks: a pilot launches the job's call, and one waiter per pilot
collects the ends of all its calls with ``ray.wait`` over their refs (no thread or actor call per job).

The task is named after the job (so the dashboard's task views and ``ray.util.state.list_tasks``
show it), asks for the job's cpus and memory and a sliver of the site resource, and is pinned to
the pilot's node: its stdout/stderr files are then tailed and uploaded by the pilot exactly as a
subprocess payload's are. Cancel is ``ray.cancel(force=True)``. An exception in the call is a
payload error (retried by the rules), a lost worker or node a system error, Ray's memory monitor
killing the worker an out-of-memory failure.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from pathlib import Path

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from panray.core.function_call import RESULT_FILE, CallResult, run_call
from panray.core.messages import Dispatch
from panray.core.payload_runner import PayloadProcess, PayloadResult, RunnerServices
from panray.payload import FunctionCall, decode_function

SITE_FRACTION = 0.001  #: of the site resource per task: placement only, pilots hold the real units
MB = 1024 * 1024
_SYSTEM_ERRORS = (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError, ray.exceptions.ObjectLostError,
                  ray.exceptions.OwnerDiedError, ray.exceptions.RaySystemError)


@ray.remote(max_retries=0)
def _call(call: tuple, work_dir: str) -> CallResult:
    return run_call(FunctionCall(*call), Path(work_dir))


@functools.cache
def _site_resource() -> str | None:
    """The site resource this pilot holds (``site:<NAME>`` or the catalog's own name for it)."""
    held = ray.get_runtime_context().get_assigned_resources()
    return next((k for k in held if k not in ("CPU", "GPU", "memory")), None)


class FunctionRun(PayloadProcess):
    """One attempt of a function job, run as a Ray task; same interface as :class:`PayloadProcess`."""

    def __init__(self, dispatch: Dispatch, pilot: str, services: RunnerServices):
        super().__init__(dispatch, pilot, services)
        self._ref: ray.ObjectRef | None = None
        self.sent = 0.0  #: when the pilot took the job (its outcome's sent time)

    def kill(self, reason: str) -> None:
        with self._lock:
            if self._kill_reason is None:
                self._kill_reason = reason
            ref = self._ref
        if ref is not None:
            ray.cancel(ref, force=True)

    def execute(self) -> PayloadResult:
        """Launch the job's Ray task and wait for it."""
        start = self.launch()
        return self._wait(start)

    def launch(self) -> float:
        """Submit the job's Ray task (unless it was killed first); returns the start time."""
        call = decode_function(self.d.payload)
        self.services.make_dir(self.dir)
        files = [(self.dir / "payload.stdout", "stdout"), (self.dir / "payload.stderr", "stderr")]
        for path, _ in files:
            path.touch()
        self._follow(files)
        start = time.time()
        site = _site_resource()
        options = {"name": call.name, "num_cpus": self.d.request_cpus, "memory": self.d.request_memory * MB,
                   "resources": {site: SITE_FRACTION} if site else {},
                   "scheduling_strategy": NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(),
                                                                         soft=False)}
        with self._lock:
            if self._kill_reason is None:
                self._ref = _call.options(**options).remote(tuple(call), str(self.dir))
        return start

    def finish(self, ended: int | PayloadResult) -> PayloadResult:
        """Ship the call's output and upload its files; ``ended`` is how its task ended."""
        assert isinstance(ended, PayloadResult)
        self._finish_watchers()
        files = [self.dir / "payload.stdout", self.dir / "payload.stderr", self.dir / RESULT_FILE]
        ended.log_url = self._upload([f for f in files if f.exists()])  # a raising call leaves no result file
        return ended

    def _wait(self, start: float) -> PayloadResult:
        """How the task ended, classified for the retry rules."""
        if self._ref is None:
            return PayloadResult(start, time.time(), None, self._kill_reason, "killed before start")
        try:
            r: CallResult = ray.get(self._ref)
        except ray.exceptions.OutOfMemoryError as exc:
            return PayloadResult(start, time.time(), None, "memory", _first_line(exc))
        except (ray.exceptions.TaskCancelledError, *_SYSTEM_ERRORS) as exc:
            if self._kill_reason is not None:
                return PayloadResult(start, time.time(), None, self._kill_reason, "killed by cancel")
            return PayloadResult(start, time.time(), None, "system", _first_line(exc))
        except ray.exceptions.RayError as exc:  # e.g. the arguments did not deserialize
            return PayloadResult(start, time.time(), None, "payload", _first_line(exc))
        if r.ok:
            return PayloadResult(start, time.time(), 0, None, None)
        return PayloadResult(start, time.time(), None, r.error_class, r.diag)


WAIT_POLL = 0.05  #: seconds one ray.wait blocks, so that calls launched meanwhile join the next wait


class FunctionWaiter:
    """One thread for every function job a pilot holds: it launches them, at most ``limit`` at
    once (the pilot's slots), and collects their ends with ``ray.wait`` over all their refs.

    ``launch(run)`` (from this thread) starts a job's call and returns its start time, or None
    when the pilot could not start it; ``on_end(run, result)`` gets each call that ended.
    """

    def __init__(self, limit: int, launch: Callable[[FunctionRun], float | None],
                 on_end: Callable[[FunctionRun, PayloadResult], None]):
        self._limit, self._launch, self._on_end = limit, launch, on_end
        self._waiting: list[FunctionRun] = []
        self._runs: dict[ray.ObjectRef, tuple[FunctionRun, float]] = {}
        self._cv = threading.Condition()
        self._stop = False
        threading.Thread(target=self._loop, name="functions", daemon=True).start()

    def add(self, run: FunctionRun) -> None:
        with self._cv:
            self._waiting.append(run)
            self._cv.notify()

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()

    def _loop(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._runs or self._waiting or self._stop)
                if self._stop:
                    return
                room = max(self._limit - len(self._runs), 0)
                starting, self._waiting = self._waiting[:room], self._waiting[room:]
            for run in starting:
                start = self._launch(run)
                if start is None:
                    continue
                if run._ref is None:  # killed before its launch
                    self._on_end(run, run._wait(start))
                else:
                    with self._cv:
                        self._runs[run._ref] = (run, start)
            with self._cv:
                refs = list(self._runs)
            if not refs:
                continue
            ready, rest = ray.wait(refs, num_returns=1, timeout=WAIT_POLL)
            if ready and rest:
                ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
            with self._cv:
                ended = [self._runs.pop(ref) for ref in ready]
            for run, start in ended:
                self._on_end(run, run._wait(start))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]
