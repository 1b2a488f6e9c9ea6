"""Function payloads as Ray tasks: a pilot slot launches the job's call and waits for it.

The task is named after the job (so the dashboard's task views and ``ray.util.state.list_tasks``
show it), asks for the job's cpus and memory and a sliver of the site resource, and is pinned to
the pilot's node: its stdout/stderr files are then tailed and uploaded by the pilot exactly as a
subprocess payload's are. Cancel is ``ray.cancel(force=True)``. An exception in the call is a
payload error (retried by the rules), a lost worker or node a system error, Ray's memory monitor
killing the worker an out-of-memory failure.
"""

from __future__ import annotations

import functools
import time
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
        self.dir.mkdir(parents=True, exist_ok=True)
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
        if self._tailer is not None:
            self._finish_watchers()
            self.services.sink.flush(timeout=30.0)
        ended.log_url = self._upload([self.dir / "payload.stdout", self.dir / "payload.stderr", self.dir / RESULT_FILE])
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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]
