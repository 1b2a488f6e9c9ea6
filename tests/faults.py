"""Fault injection helpers shared by tests/test_faults.py and benchmarks/recovery.py.

Payloads append ``start ATTEMPT TIME SITE`` and ``end ATTEMPT TIME SITE`` to one marker file per
job, so what really ran can be compared with what the store says: lost jobs, jobs run again after
a run completed, attempts of one job that overlapped, one attempt number started twice.

One run again is not a duplicate: a payload that completed on a pilot killed before it could
report (its outcome existed only in that pilot's memory: it ended within ``GRACE`` s of the kill)
is, for the store, a lost run; the audit counts those apart (``lost_with_pilot``).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from panray import Job, Workflow
from test_integration import _wait_for as wait_for  # noqa: F401  (re-exported for fault cases)

_SCRIPT = ('printf "start %s %s %s\\n" "$PANRAY_ATTEMPT" "$(date +%s.%N)" "$PANRAY_SITE" >> "$1"; sleep "$2"; '
           'printf "end %s %s %s\\n" "$PANRAY_ATTEMPT" "$(date +%s.%N)" "$PANRAY_SITE" >> "$1"')
GRACE = 1.0
"""Seconds around a pilot kill in which a completed run may not have been reported."""


@dataclass(frozen=True)
class Fault:
    """A kill at ``time``; ``sites`` whose pilots it killed (empty: no pilot)."""

    time: float
    sites: frozenset[str] = frozenset()


def marker_workflow(name: str, n: int, marker_dir: Path, seconds: float, width: int = 50, **job: Any) -> Workflow:
    """``n`` jobs in layers of ``width`` (job k waits for job k - width), each writing its markers."""
    marker_dir.mkdir(parents=True, exist_ok=True)
    return Workflow(name=name, jobs=[
        Job(name=f"m{k:04d}", label=f"layer{k // width}", parents=[f"m{k - width:04d}"] if k >= width else [],
            command=["bash", "-c", _SCRIPT, "mark", str(marker_dir / f"m{k:04d}"), str(seconds)], **job)
        for k in range(n)
    ])


@dataclass
class Run:
    attempt: int
    start: float
    site: str
    end: float | None = None


@dataclass
class Audit:
    """What the markers say against the store; every list should be empty."""

    runs: int = 0
    lost: list[str] = field(default_factory=list)  #: not finished in the store, or no completed run of its attempt
    rerun_after_finish: list[str] = field(default_factory=list)  #: started again after a run completed
    overlapping: list[str] = field(default_factory=list)  #: two attempts ran at the same time
    same_attempt_twice: list[str] = field(default_factory=list)  #: one attempt number started twice
    lost_with_pilot: list[str] = field(default_factory=list)  #: ran again after a run its killed pilot never reported

    @property
    def duplicates(self) -> int:
        return len(self.rerun_after_finish) + len(self.same_attempt_twice)

    def clean(self) -> bool:
        return not (self.lost or self.rerun_after_finish or self.overlapping or self.same_attempt_twice)


def read_runs(path: Path) -> list[Run]:
    runs: dict[int, list[Run]] = {}
    out: list[Run] = []
    for line in path.read_text().splitlines() if path.exists() else []:
        kind, attempt, t, site = line.split()
        if kind == "start":
            run = Run(int(attempt), float(t), site)
            runs.setdefault(run.attempt, []).append(run)
            out.append(run)
        else:
            open_runs = [r for r in runs.get(int(attempt), []) if r.end is None]
            if open_runs:
                open_runs[0].end = float(t)
    return out


def audit(jobs: Iterable[Any], marker_dir: Path, faults: Iterable[Fault] = ()) -> Audit:
    """Compare the store's jobs (``JobRow``) with the markers.

    A run without an end died with its pilot: it is taken to have ended at the first fault
    after its start (payloads die with their pilot), or never if no fault came after it.
    """
    result = Audit()
    faults = sorted(faults, key=lambda f: f.time)
    fault_times = [f.time for f in faults]
    for job in jobs:
        runs = read_runs(marker_dir / job.name)
        result.runs += len(runs)
        if job.status != "finished" or not any(r.end is not None and r.attempt == job.attempt_nr for r in runs):
            result.lost.append(job.name)
        completed = sorted((r for r in runs if r.end is not None), key=lambda r: r.end or 0.0)
        reported = [r for r in completed if not any(r.site in f.sites and abs(f.time - (r.end or 0.0)) <= GRACE
                                                    for f in faults)]
        if reported and any(r.start > (reported[0].end or 0.0) for r in runs):
            result.rerun_after_finish.append(job.name)
        elif completed and any(r.start > (completed[0].end or 0.0) for r in runs):
            result.lost_with_pilot.append(job.name)
        attempts = [r.attempt for r in runs]
        if len(attempts) != len(set(attempts)):
            result.same_attempt_twice.append(job.name)
        spans = sorted((r.start, r.end if r.end is not None else next((f for f in fault_times if f > r.start),
                                                                       float("inf"))) for r in runs)
        if any(b[0] < a[1] for a, b in zip(spans, spans[1:])):
            result.overlapping.append(job.name)
    return result


def first_end_after(marker_dir: Path, t: float) -> float | None:
    """Seconds from ``t`` to the first run that completed after it (time to recover)."""
    ends = [r.end for p in marker_dir.iterdir() for r in read_runs(p) if r.end is not None and r.end > t]
    return min(ends) - t if ends else None


def healed_after(marker_dir: Path, t: float) -> float | None:
    """Seconds from ``t`` until every job that had a run cut short by the fault completed again."""
    ends = []
    for p in marker_dir.iterdir():
        runs = read_runs(p)
        if any(r.end is None and r.start < t for r in runs):
            done = [r.end for r in runs if r.end is not None and r.end > t]
            if not done:
                return None
            ends.append(min(done))
    return max(ends) - t if ends else 0.0


def actor_pid(name: str) -> int:
    import ray

    handle = ray.get_actor(name, namespace="panray")
    return int(ray.get(handle.__ray_call__.remote(lambda _self: os.getpid())))


def kill9(names: Iterable[str]) -> float:
    """SIGKILL the processes of these actors at once; returns the time of the kill."""
    pids = [actor_pid(n) for n in names]
    t = time.time()
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return t
