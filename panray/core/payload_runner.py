"""Runs one payload as a subprocess in its own process group, and says how it ended.

The command arrives encoded (panray.payload) and is executed as an argv list: no shell string
is ever built. stdout/stderr go to files in the attempt's work directory; the memory monitor
kills the whole process group when the payload's PSS exceeds its request (out-of-memory is
real, exit 137), and a cancel kills the group too.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from panray.core import cluster_runner
from panray.core.messages import Dispatch
from panray.payload import decode_command

OOM_EXIT = 137


#: ``setpriv --pdeathsig KILL`` makes a payload die with its pilot (as on a lost node) while
#: letting Python start it with vfork; a ``preexec_fn`` would force a full fork of the pilot,
#: over ten times slower for a worker process of a few hundred MB.
_SETPRIV = shutil.which("setpriv")


def _dying_with_pilot(argv: list[str]) -> tuple[list[str], Any]:
    """The argv and preexec_fn that give the payload SIGKILL when its pilot thread dies."""
    if _SETPRIV:
        return [_SETPRIV, "--pdeathsig", "KILL", "--", *argv], None
    return argv, cluster_runner.die_with_parent


@dataclass(slots=True)
class PayloadResult:
    start_time: float
    end_time: float
    exit_code: int | None  #: None: a function payload that raised
    error_class: str | None
    diag: str | None
    max_pss_kb: int | None = None
    log_url: str | None = None
    quanta: tuple[tuple[int, int, float, float], ...] | None = None  #: a cluster job's per-quantum results


@dataclass(slots=True)
class RunnerServices:
    """What a pilot lends each payload: where to ship logs and files, and memory policy."""

    work_dir: Path
    sink: Any = None  #: panray.logging_bridge LogSink, or None
    object_store: Any = None  #: panray.logging_bridge ObjectStore, or None
    log_interval: float = 2.0
    memory_tolerance: float = 1.0
    memory_interval: float = 0.5


class PayloadProcess:
    """One attempt's subprocess; :meth:`run` blocks until it ends, :meth:`kill` may come from any thread."""

    def __init__(self, dispatch: Dispatch, pilot: str, services: RunnerServices):
        self.d = dispatch
        self.pilot = pilot
        self.services = services
        self.dir = services.work_dir / dispatch.manager.replace(":", "_") / f"{dispatch.job_id}.{dispatch.attempt_nr}"
        self._proc: subprocess.Popen[bytes] | None = None
        self._kill_reason: str | None = None
        self._lock = threading.Lock()

    def ids(self) -> dict[str, Any]:
        d = self.d
        return {
            "PandaJobID": d.job_id, "TaskID": d.task_id, "RequestID": d.workflow_id,
            "attemptNr": d.attempt_nr, "site": d.site, "Harvester_WorkerID": self.pilot, "label": d.label,
        }

    def kill(self, reason: str) -> None:
        """Kill the payload's whole process group; ``reason`` is "cancelled" or "memory"."""
        with self._lock:
            if self._kill_reason is None:
                self._kill_reason = reason
            proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def run(self) -> PayloadResult:
        argv = decode_command(self.d.payload)
        assert argv is not None, "no-op jobs are completed by the pilot, not run"
        self.dir.mkdir(parents=True, exist_ok=True)
        if argv[0] == cluster_runner.CLUSTER_ARGV0:  # run by this interpreter, spec in a file (no argv limit)
            (self.dir / cluster_runner.SPEC_FILE).write_text(argv[1])
            argv = [sys.executable, "-I", cluster_runner.__file__, cluster_runner.SPEC_FILE]
        out_path, err_path = self.dir / "payload.stdout", self.dir / "payload.stderr"
        env = dict(os.environ)
        env.update(json.loads(self.d.environment or "{}"))
        env.update(PANRAY_JOB_ID=str(self.d.job_id), PANRAY_ATTEMPT=str(self.d.attempt_nr),
                   PANRAY_WORKFLOW_ID=str(self.d.workflow_id), PANRAY_SITE=self.d.site,
                   PANRAY_LABEL=self.d.label, PANRAY_WORK_DIR=str(self.dir))
        start = time.time()
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            try:
                with self._lock:
                    if self._kill_reason is not None:
                        return PayloadResult(start, time.time(), 130, self._kill_reason, "killed before start")
                    launch, preexec = _dying_with_pilot(argv)
                    self._proc = subprocess.Popen(
                        launch, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=self.dir, env=env,
                        start_new_session=True, preexec_fn=preexec,
                    )
            except OSError as exc:
                return PayloadResult(start, time.time(), 127, "payload", f"cannot start {argv[0]!r}: {exc}")
            tailer, monitor = self._start_watchers([(out_path, "stdout"), (err_path, "stderr")])
            code = self._proc.wait()

        end = time.time()
        summary = monitor.stop() if monitor else None
        if tailer:
            tailer.stop()
            self.services.sink.flush(timeout=30.0)
        max_pss = int(summary["Max"]["pss"]) if summary else None
        result = self._classify(code, start, end, max_pss)
        result.log_url = self._upload([out_path, err_path, self.dir / "prmon.txt", self.dir / "prmon.json"])
        result.quanta = cluster_runner.read_results(self.dir)
        return result

    def _classify(self, code: int, start: float, end: float, max_pss: int | None) -> PayloadResult:
        if code < 0:
            code = 128 - code
        reason = self._kill_reason
        if reason == "memory":
            diag = f"killed: PSS {max_pss} kB above request {self.d.request_memory} MB"
            return PayloadResult(start, end, OOM_EXIT, "memory", diag, max_pss)
        if reason == "cancelled":
            return PayloadResult(start, end, code, "cancelled", "killed by cancel", max_pss)
        if code == 0:
            return PayloadResult(start, end, 0, None, None, max_pss)
        return PayloadResult(start, end, code, "payload", f"payload exited with code {code}", max_pss)

    def _start_tailer(self, files: list[tuple[Path, str]]) -> Any:
        """Ship the payload's log lines through the logging bridge while it runs (None: no sink)."""
        from panray.logging_bridge import LogTailer

        if self.services.sink is None:
            return None
        tailer = LogTailer(files, self.ids(), self.services.sink, interval=self.services.log_interval)
        tailer.start()
        return tailer

    def _start_watchers(self, files: list[tuple[Path, str]]) -> tuple[Any, Any]:
        from panray.logging_bridge import MemoryMonitor

        tailer = self._start_tailer(files)
        limit_kb = int(self.d.request_memory * 1024 * self.services.memory_tolerance)
        assert self._proc is not None
        monitor = MemoryMonitor(
            self._proc.pid, self.dir, interval=self.services.memory_interval, ncores=self.d.request_cpus,
            limit_kb=limit_kb, on_exceed=lambda _pss: self.kill("memory"),
        )
        monitor.start()
        return tailer, monitor

    def _upload(self, paths: list[Path]) -> str | None:
        store = self.services.object_store
        if store is None:
            return None
        from panray.logging_bridge import attempt_prefix

        prefix = attempt_prefix(self.d.workflow_id, self.d.task_id, self.d.job_id, self.d.attempt_nr)
        url = None
        for p in paths:
            if p.exists():
                url = store.put(p, prefix + p.name)
        return url.rsplit("/", 1)[0] + "/" if url else None
