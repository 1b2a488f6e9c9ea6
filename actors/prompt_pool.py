"""Prompt processing on Ray: warm pilots that keep calibrations cached, and a standing task per instrument.

A notification wakes the instrument's :class:`PromptDispatcher` (the standing task). It maps each
detector to a live :class:`PromptPilot` by rendezvous hashing, so a detector lands on the same
pilot visit after visit and finds its calibration cached, and pushes each pilot its detectors in
one direct actor call: no queue, no brokerage, no polling. A call that fails with
``RayActorError`` marks that pilot dead; its detectors re-map to the survivors (whose cache misses
are counted) and are pushed again, so the visit still completes.

Prompt pilots hold no site-queue handle and are never registered with brokerage: batch work cannot
reach them. The logic lives in Ray-free classes (:mod:`panray.core.prompt_core`,
:mod:`panray.core.prompt_task`); these actors are thin shells. Each visit is recorded in the state
store after it ends, by a recorder actor in its own process: SQL never runs on the dispatch path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import ray
from ray.exceptions import RayActorError

from panray.actors.names import actor
from panray.core.prompt_core import JobResult, PilotConfig, PilotCore, Push, TaskConfig
from panray.core.prompt_task import DispatchCore, PromptStats, VisitReport, write_visit
from panray.payload import encode_command

log = logging.getLogger(__name__)


def prompt_pilot_name(site: str, n: int) -> str:
    return f"prompt-pilot:{site}:{n}"


def prompt_task_name(instrument: str) -> str:
    return f"prompt-task:{instrument}"


@ray.remote(num_cpus=0, max_concurrency=8)
class PromptPilot:
    """A semi-persistent prompt pilot; named ``prompt-pilot:<site>:<n>``. It pulls nothing."""

    def __init__(self, name: str, site: str, config: PilotConfig):
        self._core = PilotCore(name, site, config)

    def ready(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def run(self, push: Push) -> list[JobResult]:
        return self._core.run(push)

    def stats(self) -> dict[str, Any]:
        return self._core.stats()


@ray.remote(num_cpus=0)
class PromptRecorder:
    """Writes visits to the state store in its own process, so SQL never competes with dispatch.

    Calls run one at a time in arrival order; each returns when its visit is committed.
    """

    def __init__(self, db_url: str, site: str):
        from panray.store import open_store

        self._store, self._site = open_store(db_url), site

    def record(self, report: VisitReport, task: TaskConfig) -> tuple[float, str | None]:
        """(commit time, None), or (time, error) when the write failed."""
        try:
            write_visit(self._store, report, self._site, task)
        except Exception as exc:  # dispatch goes on; stats() shows the error
            log.exception("recording prompt visit %s failed", report.visit)
            return time.time(), f"visit {report.visit}: {exc!r}"[:500]
        return time.time(), None


@ray.remote(num_cpus=0)
class PromptDispatcher:
    """The standing prompt task of one instrument; named ``prompt-task:<instrument>``."""

    def __init__(self, instrument: str, pilots: list[str], task: TaskConfig, db_url: str | None, site: str):
        self._core = DispatchCore(instrument, [])
        self._handles: dict[str, Any] = {}
        self._task = task
        self._command = encode_command(task.command) if task.command else ""
        self.set_pilots(pilots)
        self._recorder = None
        if db_url:
            res = ray.get_runtime_context().get_assigned_resources()
            site_res = {k: 1.0 for k in res if k.startswith("site:")}
            self._recorder = PromptRecorder.options(resources=site_res).remote(db_url, site)
        self._recording: set[asyncio.Future[None]] = set()

    def set_pilots(self, pilots: list[str]) -> None:
        """(Re)bind the pool by name; pilots that cannot be found are left out."""
        self._handles = {}
        for name in pilots:
            handle = actor(name)
            if handle is None:
                log.warning("prompt pilot %s not found", name)
            else:
                self._handles[name] = handle
        self._core.set_pilots(self._handles)

    def configure(self, task: TaskConfig) -> None:
        self._task = task
        self._command = encode_command(task.command) if task.command else ""

    async def notify(self, visit: int, detectors: list[int], calib_version: str, notified: float) -> VisitReport:
        """Push every detector of a visit to its pilot and return once all have run."""
        core, task = self._core, self._task

        def push(dets: list[int]) -> Push:
            return Push(core.instrument, visit, calib_version, notified, tuple(dets), task.payload, self._command,
                        task.request_memory)

        calls = {asyncio.ensure_future(self._call(p, dets, push(dets))) for p, dets in core.plan(detectors).items()}
        jobs: list[JobResult] = []
        remapped: list[int] = []
        lost: list[str] = []
        while calls:
            done, calls = await asyncio.wait(calls, return_when=asyncio.FIRST_COMPLETED)
            for fut in done:
                pilot, dets, out = fut.result()
                if isinstance(out, list):
                    jobs.extend(out)
                    continue
                lost.append(pilot)
                remapped.extend(dets)
                self._handles.pop(pilot, None)
                for p, moved in core.pilot_lost(pilot, dets).items():
                    calls.add(asyncio.ensure_future(self._call(p, moved, push(moved))))
        report = VisitReport(core.instrument, visit, jobs, sorted(remapped), lost)
        core.visit_done(report)
        if self._recorder is not None:
            fut = asyncio.ensure_future(self._record(report))
            self._recording.add(fut)
            fut.add_done_callback(self._recording.discard)
        return report

    async def _record(self, report: VisitReport) -> None:
        assert self._recorder is not None
        try:
            at, error = await self._recorder.record.remote(report, self._task)
        except Exception as exc:  # the recorder process died
            at, error = time.time(), f"visit {report.visit}: {exc!r}"[:500]
        self._core.recorded(report.jobs, at, error)

    async def _call(self, pilot: str, dets: list[int], push: Push) -> tuple[str, list[int], list[JobResult] | None]:
        try:
            return pilot, dets, await self._handles[pilot].run.remote(push)
        except (RayActorError, KeyError):
            return pilot, dets, None

    def stats(self) -> PromptStats:
        return self._core.stats()

    async def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until every finished visit is in the state store."""
        if not self._recording:
            return True
        await asyncio.wait(set(self._recording), timeout=timeout)
        return not self._recording
