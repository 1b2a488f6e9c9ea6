"""Runs one payload as a subprocess in its own process group, and says how it ended.

The command arrives encoded (panray.payload) and is executed as an argv list: no shell string
is ever built. stdout/stderr go to files in the attempt's work directory; the memory monitor
kills the whole process group when the payload's PSS exceeds its request (out-of-memory is
real, exit 137), and a cancel kills the group too.

A pilot's payloads share its services: one log tailer thread and one memory sampler thread for
all of them, so that a payload's start costs its work directory, two files and the fork/exec;
:meth:`PayloadProcess.execute` runs it in a slot, :meth:`PayloadProcess.finish` (the last lines,
the prmon summary, the uploads) runs after the slot is free.

A payload inherits the pilot's environment without panray's or Ray's variables (the store URL,
the cluster address, tokens), so it cannot act with the server's rights; with ``payload_user``
it also runs as that unprivileged user, for whom the 0700 home is closed.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from panray.cluster_format import CLUSTER_ARGV0, SPEC_FILE, read_results
from panray.core import cluster_runner
from panray.core.messages import Dispatch
from panray.payload import decode_command
from panray.retry import CANCELLED, MEMORY, PAYLOAD, SYSTEM

OOM_EXIT = 137
PILOT_LOG = "pilot.log"  #: the pilot's record of the attempt, uploaded with the payload's files
UPLOADED = ("payload.stdout", "payload.stderr", "prmon.txt", "prmon.json", PILOT_LOG)
"""The attempt's files stored at its end, those of them that exist."""


#: ``setpriv --pdeathsig KILL`` makes a payload die with its pilot (as on a lost node) while
#: letting Python start it with vfork; a ``preexec_fn`` would force a full fork of the pilot,
#: over ten times slower for a worker process of a few hundred MB.
_SETPRIV = shutil.which("setpriv")


#: Inherited variables a payload never sees: how to reach the store, the cluster or the server.
PRIVATE_PREFIXES = ("PANRAY_", "RAY_")
PRIVATE_NAMES = frozenset({"PGPASSWORD", "PGPASSFILE", "BEARER_TOKEN", "BEARER_TOKEN_FILE"})


def clean_environment(inherited: dict[str, str]) -> dict[str, str]:
    """The pilot's environment minus panray's, Ray's and token variables."""
    return {k: v for k, v in inherited.items() if not k.startswith(PRIVATE_PREFIXES) and k not in PRIVATE_NAMES}


@dataclass(frozen=True, slots=True)
class PayloadUser:
    """The unprivileged Unix user payloads run as (``payload_user``)."""

    name: str
    uid: int
    gid: int
    home: str

    @classmethod
    def lookup(cls, name: str) -> PayloadUser:
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            raise ValueError(f"payload_user {name!r}: no such user") from None
        if os.geteuid() != 0 and pw.pw_uid != os.geteuid():
            raise ValueError(f"payload_user {name!r}: only a server running as root can run payloads as another user")
        return cls(name, pw.pw_uid, pw.pw_gid, pw.pw_dir)

    def environment(self) -> dict[str, str]:
        return {"HOME": self.home, "USER": self.name, "LOGNAME": self.name}


def _dying_with_pilot(argv: list[str], user: PayloadUser | None) -> tuple[list[str], Any]:
    """The argv and preexec_fn that give the payload SIGKILL when its pilot thread dies, as ``user``."""
    if _SETPRIV:
        as_user = [f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups"] if user else []
        return [_SETPRIV, "--pdeathsig", "KILL", *as_user, "--", *argv], None
    if user:
        raise OSError("payload_user needs setpriv (util-linux) on the worker node")
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
    user: PayloadUser | None = None  #: run payloads as this user, else as the pilot's
    _tailer: Any = None
    _sampler: Any = None
    _env: dict[str, str] | None = None
    _made: set[Path] = field(default_factory=set)  #: workflow folders of work_dir known to exist
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def tailer(self) -> Any:
        """The one log tailer (logging_bridge PilotTailer) of these services' payloads; None: no sink."""
        if self.sink is None:
            return None
        with self._lock:
            if self._tailer is None:
                from panray.logging_bridge.tailer import PilotTailer

                self._tailer = PilotTailer(self.sink, interval=self.log_interval)
                self._tailer.start()
            return self._tailer

    def sampler(self) -> Any:
        """The one memory sampler (logging_bridge MemorySampler) of these services' payloads."""
        with self._lock:
            if self._sampler is None:
                from panray.logging_bridge.memory import MemorySampler

                self._sampler = MemorySampler(interval=self.memory_interval)
            return self._sampler

    def make_dir(self, path: Path) -> None:
        """Create an attempt's work directory; its workflow folder is made once per pilot."""
        if path.parent not in self._made:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._made.add(path.parent)
        path.mkdir(exist_ok=True)

    def environment(self) -> dict[str, str]:
        """A copy of the pilot's environment without private variables (computed once)."""
        if self._env is None:
            env = clean_environment(dict(os.environ))
            env.update(self.user.environment() if self.user else {})
            self._env = env
        return dict(self._env)

    def close(self) -> None:
        """Stop the shared threads (what a payload left unshipped goes at its finish)."""
        with self._lock:
            for shared in (self._tailer, self._sampler):
                if shared is not None:
                    shared.close()
            self._tailer = self._sampler = None


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
        self.log: Any = None  #: the pilot's record of this attempt (logging_bridge PilotLog), from execute() on
        self._tailer: Any = None
        self._monitor: Any = None
        self._start = self._end = 0.0
        self._cluster = False  #: a cluster job: its quanta's results are read at the end

    def ids(self) -> dict[str, Any]:
        """PanDA's ids for log entries: job, task and request ids and the pilot's id as strings."""
        d = self.d
        return {
            "PandaJobID": str(d.job_id), "TaskID": str(d.task_id), "RequestID": str(d.workflow_id),
            "attemptNr": d.attempt_nr, "site": d.site, "Harvester_WorkerID": self.pilot, "label": d.label,
        }

    def _event(self, event: str, message: str, *, level: str = "INFO", **fields: Any) -> None:
        if self.log is not None:
            self.log.event(event, message, level=level, **fields)

    def pilot_error(self, exc: BaseException) -> None:
        """Record that the pilot itself failed to run the job (a system error)."""
        self._event("pilot_error", f"pilot error, the job ends as a system error: {exc!r}"[:500], level="ERROR")
        self._finish_watchers()
        if self.log is not None:
            self.log.flush()

    def kill(self, reason: str) -> None:
        """Kill the payload's whole process group; ``reason`` is "cancelled", "memory" or "system" (its pilot stops)."""
        with self._lock:
            if self._kill_reason is None:
                self._kill_reason = reason
            proc = self._proc
        if proc is not None and proc.poll() is None:
            why = {"memory": "PSS above the memory request", "cancelled": "cancelled by the workflow manager",
                   "system": "its pilot stops"}
            self._event("signal", f"sending SIGKILL to process group {proc.pid}: {why.get(reason, reason)}",
                        level="WARNING", pid=proc.pid, signal="SIGKILL", reason=reason)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def run(self) -> PayloadResult:
        """Run the payload to its end and finish the attempt (files shipped, result classified)."""
        return self.finish(self.execute())

    def execute(self) -> int | PayloadResult:
        """Start the payload and wait for it: its exit code, or the result of a start that failed."""
        argv = decode_command(self.d.payload)
        assert argv is not None, "no-op jobs are completed by the pilot, not run"
        self.services.make_dir(self.dir)
        user = self.services.user
        if user is not None:
            os.chown(self.dir, user.uid, user.gid)
        from panray.logging_bridge.pilot_log import PilotLog

        self.log = PilotLog(self.dir / PILOT_LOG, self.ids(), self.services.sink, buffered=True)
        self._event("received", f"received job {self.d.job_id} attempt {self.d.attempt_nr} (task {self.d.task_id}, "
                    f"workflow {self.d.workflow_id}); work dir {self.dir}", workDir=str(self.dir))
        self._event("command", f"command decoded: {argv[0]} with {len(argv) - 1} arguments",
                    executable=argv[0], nArguments=len(argv) - 1)
        self._cluster = argv[0] == CLUSTER_ARGV0
        if self._cluster:  # run by this interpreter, spec in a file (no argv limit)
            (self.dir / SPEC_FILE).write_text(argv[1])
            argv = [sys.executable, "-I", cluster_runner.__file__, SPEC_FILE]
        out_path, err_path = self.dir / "payload.stdout", self.dir / "payload.stderr"
        env = self.services.environment()
        env.update(json.loads(self.d.environment or "{}"))
        env.update(PANRAY_JOB_ID=str(self.d.job_id), PANRAY_ATTEMPT=str(self.d.attempt_nr),
                   PANRAY_WORKFLOW_ID=str(self.d.workflow_id), PANRAY_SITE=self.d.site,
                   PANRAY_LABEL=self.d.label, PANRAY_WORK_DIR=str(self.dir))
        self._start = time.time()
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            try:
                with self._lock:
                    if self._kill_reason is not None:
                        self._event("not_started", f"killed before start: {self._kill_reason}", level="WARNING")
                        return PayloadResult(self._start, time.time(), 130, self._kill_reason, "killed before start")
                    launch, preexec = _dying_with_pilot(argv, user)
                    self._proc = subprocess.Popen(  # its own group (killpg), not its own session:
                        launch, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=self.dir, env=env,
                        process_group=0, preexec_fn=preexec,  # setsid costs a scheduler autogroup per payload
                    )
            except (OSError, ValueError) as exc:  # ValueError: a NUL or '=' the OS refuses in argv or env
                self._event("start_failed", f"cannot start {argv[0][:200]!r}: {exc}", level="ERROR")
                return PayloadResult(self._start, time.time(), 127, PAYLOAD, f"cannot start {argv[0][:200]!r}: {exc}")
            self._event("started", f"payload started with pid {self._proc.pid}", pid=self._proc.pid)
            self._start_watchers([(out_path, "stdout"), (err_path, "stderr")])
            code = self._proc.wait()
        self._end = time.time()
        return code

    def finish(self, ended: int | PayloadResult) -> PayloadResult:
        """After the payload: its last lines and the pilot's record shipped, prmon written, files
        uploaded; ``ended`` is what :meth:`execute` returned. Runs off the slot, in any thread."""
        if isinstance(ended, PayloadResult):
            self._finish_watchers()
            if self.log is not None:
                self.log.flush()
            return ended
        summary = self._monitor.stop() if self._monitor else None
        max_pss = int(summary["Max"]["pss"]) if summary and "pss" in summary["Max"] else None
        code, start, end = ended, self._start, self._end
        result = self._classify(code, start, end, max_pss)
        self._event("exited", f"payload exited with code {code} after {end - start:.1f} s: "
                    f"{result.diag or 'finished'}", level="INFO" if result.exit_code == 0 else "ERROR",
                    exitCode=result.exit_code, errorClass=result.error_class, maxPSS_kB=max_pss)
        self._finish_watchers()  # the last lines and the record so far, in one sink write
        self.log.flush()  # pilot.log is complete up to the upload
        present = set(os.listdir(self.dir))
        files = [self.dir / name for name in UPLOADED if name in present]
        try:
            result.log_url = self._upload(files)
        except Exception as exc:
            self._event("upload_failed", f"uploading the job's files failed: {exc!r}"[:500], level="ERROR")
            self.log.flush()
            raise
        if result.log_url:
            self._event("uploaded", f"uploaded {len(files)} files to {result.log_url}", url=result.log_url)
        self.log.flush()
        if self._cluster:
            result.quanta = read_results(self.dir)
        return result

    def _classify(self, code: int, start: float, end: float, max_pss: int | None) -> PayloadResult:
        if code < 0:
            code = 128 - code
        reason = self._kill_reason
        if reason == MEMORY:
            diag = f"killed: PSS {max_pss} kB above request {self.d.request_memory} MB"
            return PayloadResult(start, end, OOM_EXIT, MEMORY, diag, max_pss)
        if reason == CANCELLED:
            return PayloadResult(start, end, code, CANCELLED, "killed by cancel", max_pss)
        if reason == SYSTEM:  # nobody cancelled it: the attempt is lost with its pilot and retried
            return PayloadResult(start, end, code, SYSTEM, "killed: its pilot stopped", max_pss)
        if code == 0:
            return PayloadResult(start, end, 0, None, None, max_pss)
        return PayloadResult(start, end, code, PAYLOAD, f"payload exited with code {code}", max_pss)

    def _follow(self, files: list[tuple[Path, str]]) -> None:
        """Ship the payload's log lines (and the pilot's buffered record) through the pilot's tailer."""
        tailer = self.services.tailer()
        if tailer is not None:
            tailer.follow(self, files, self.ids(), self.log)
            self._tailer = tailer

    def _start_watchers(self, files: list[tuple[Path, str]]) -> None:
        from panray.logging_bridge import MemoryMonitor

        self._follow(files)
        limit_kb = int(self.d.request_memory * 1024 * self.services.memory_tolerance)
        assert self._proc is not None
        self._monitor = MemoryMonitor(
            self._proc.pid, self.dir, interval=self.services.memory_interval, ncores=self.d.request_cpus,
            limit_kb=limit_kb, on_exceed=lambda _pss: self.kill(MEMORY),
        )
        self._monitor.start(self.services.sampler())

    def _finish_watchers(self) -> None:
        """The last lines (unterminated tails too) go to the sink's spool; delivery goes on without this."""
        if self._tailer is not None:
            self._tailer.finish(self)
            self._tailer = None

    def _upload(self, paths: list[Path]) -> str | None:
        store = self.services.object_store
        if store is None:
            return None
        from panray.logging_bridge import attempt_prefix

        prefix = attempt_prefix(self.d.workflow_id, self.d.task_id, self.d.job_id, self.d.attempt_nr)
        return store.put_files(paths, prefix)
