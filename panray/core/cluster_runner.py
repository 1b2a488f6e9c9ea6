"""The payload of a cluster job: runs its quanta one after another, each as its own subprocess.

The pilot starts it like any payload (one slot, one process group, memory monitor, cancel), as
``python cluster_runner.py SPEC_FILE`` with the pilot's interpreter; it imports only the
standard library, so it starts in milliseconds. Each quantum keeps its own command line,
environment, exit code and times; its output lines reach the log bridge as JSON records tagged
with the quantum's name and label. One JSON line per quantum that ran goes to ``quanta.jsonl``
in the attempt's work dir, written as each ends, so the results of a killed cluster survive.

Quanta listed in ``PANRAY_QUANTA_SKIP`` (positions: finished by an earlier attempt, or pruned)
are not run; a quantum that fails stops only its own descendants in the cluster; the others run.
The exit code is 0 if every quantum run succeeded, else the first failure's code that the retry
rules allow to retry, else the first failure's code.

Its input and output formats live in :mod:`panray.cluster_format`, which this script loads by
file path when it runs as a plain script (``python -I``: no ``panray`` on the path).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

if __package__:
    from panray.cluster_format import RESULTS_FILE, SKIP_ENV, ClusterSpec, QuantumSpec, parse_skip
else:  # a plain script: load the format module beside the package, standard library only
    import importlib.util

    _spec = importlib.util.spec_from_file_location(
        "panray_cluster_format", Path(__file__).resolve().parents[1] / "cluster_format.py")
    assert _spec is not None and _spec.loader is not None
    _format = importlib.util.module_from_spec(_spec)
    sys.modules[_spec.name] = _format
    _spec.loader.exec_module(_format)
    RESULTS_FILE, SKIP_ENV = _format.RESULTS_FILE, _format.SKIP_ENV
    ClusterSpec, QuantumSpec, parse_skip = _format.ClusterSpec, _format.QuantumSpec, _format.parse_skip

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In a child before exec: SIGKILL it when the thread that started it dies (its pilot or runner is lost)."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class _Tagger:
    """Copies a quantum's output lines to the runner's streams as JSON records naming the quantum."""

    def __init__(self, quantum: QuantumSpec):
        self.quantum = quantum
        self.lock = threading.Lock()

    def record(self, line: str, **extra: Any) -> str:
        text = line.rstrip("\r\n")
        rec: Any = None
        if text.lstrip().startswith("{"):
            try:
                rec = json.loads(text)
            except ValueError:
                rec = None
        if not isinstance(rec, dict):
            rec = {"message": text}
        mdc = rec.get("MDC") if isinstance(rec.get("MDC"), dict) else {}
        rec["MDC"] = {**mdc, "LABEL": mdc.get("LABEL", self.quantum.label), "QUANTUM": self.quantum.name}
        rec.update(quantum=self.quantum.name, quantumLabel=self.quantum.label, **extra)
        return json.dumps(rec)

    def write(self, stream: IO[str], line: str, **extra: Any) -> None:
        with self.lock:
            stream.write(self.record(line, **extra) + "\n")
            stream.flush()

    def pump(self, source: IO[bytes], stream: IO[str]) -> None:
        for raw in source:
            self.write(stream, raw.decode(errors="replace"))


def run_quantum(q: QuantumSpec, work_dir: Path, out: IO[str], err: IO[str]) -> int:
    """Run one quantum to its end; its exit code (128 + N if killed by signal N)."""
    tag = _Tagger(q)
    tag.write(out, f"quantum {q.name} ({q.label}) starting", levelName="INFO")
    if q.argv is None:
        code = 0
    else:
        env = {**os.environ, **q.environment, "PANRAY_QUANTUM": q.name, "PANRAY_QUANTUM_LABEL": q.label}
        try:
            proc = subprocess.Popen(q.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                    cwd=work_dir, env=env, preexec_fn=die_with_parent)
        except OSError as exc:
            tag.write(err, f"cannot start {q.argv[0]!r}: {exc}", levelName="ERROR")
            return 127
        pumps = [threading.Thread(target=tag.pump, args=(proc.stdout, out), daemon=True),
                 threading.Thread(target=tag.pump, args=(proc.stderr, err), daemon=True)]
        for t in pumps:
            t.start()
        code = proc.wait()
        for t in pumps:
            t.join()
        code = 128 - code if code < 0 else code
    tag.write(out, f"quantum {q.name} ({q.label}) ended with exit code {code}",
              levelName="INFO" if code == 0 else "ERROR", exitCode=code)
    return code


def run_cluster(spec: ClusterSpec, skip: set[int], work_dir: Path, out: IO[str] = sys.stdout,
                err: IO[str] = sys.stderr) -> int:
    """Run the quanta not skipped in order; append one result line per quantum run; the exit code."""
    blocked: set[int] = set()
    failures: list[int] = []
    with open(work_dir / RESULTS_FILE, "a") as results:
        for pos, q in enumerate(spec.quanta):
            if pos in skip:
                continue
            if any(p in blocked for p in spec.deps[pos]):
                blocked.add(pos)
                continue
            start = time.time()
            code = run_quantum(q, work_dir, out, err)
            results.write(json.dumps({"pos": pos, "name": q.name, "exit_code": code, "start": start,
                                      "end": time.time()}) + "\n")
            results.flush()
            if code:
                blocked.add(pos)
                failures.append(code)
    retryable = [c for c in failures if c not in spec.retry_unless_exit]
    return (retryable or failures or [0])[0]


def main(argv: list[str]) -> int:
    spec = ClusterSpec.from_json(Path(argv[1]).read_text())
    work_dir = Path(os.environ.get("PANRAY_WORK_DIR", "."))
    return run_cluster(spec, parse_skip(os.environ.get(SKIP_ENV, "")), work_dir)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
