"""Prompt pilots without Ray: what a push carries, the calibration cache, and how jobs run.

A prompt pilot (:class:`panray.actors.prompt_pool.PromptPilot`) is a thin shell around
:class:`PilotCore`; the standing task's logic is :mod:`panray.core.prompt_task`. Detectors map
to pilots by rendezvous hashing (:class:`RendezvousRing`), so a detector finds its calibration
cached visit after visit.

Examples:
    >>> check_detectors("LSSTCam", [0, 188])
    >>> check_detectors("LSSTCam", [189])
    Traceback (most recent call last):
    ...
    panray.exceptions.UnknownDetectorError: unknown LSSTCam detector 189; valid detectors are 0..188
"""

from __future__ import annotations

import hashlib
import importlib
import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from panray.core.messages import Dispatch
from panray.core.payload_runner import PayloadProcess, RunnerServices
from panray.exceptions import PanrayError, UnknownDetectorError, UnknownInstrumentError

DEFAULT_LOADER = "panray.core.prompt_core:simulated_load"
DEFAULT_PAYLOAD = "panray.core.prompt_core:noop_payload"
#: Science detectors per instrument, numbered 0..n-1 (LSSTCam: 189 science sensors).
INSTRUMENTS: Mapping[str, int] = {"LSSTCam": 189, "LSSTComCam": 9, "LATISS": 1}


def check_detectors(instrument: str, detectors: Iterable[Any]) -> None:
    """Raise unless ``instrument`` is known and every detector is an int in its range, once."""
    n = INSTRUMENTS.get(instrument)
    if n is None:
        raise UnknownInstrumentError(instrument, sorted(INSTRUMENTS))
    dets = list(detectors)
    bad = [d for d in dets if type(d) is not int or not 0 <= d < n]
    if bad:
        raise UnknownDetectorError(instrument, bad, n)
    if len(set(dets)) != len(dets):
        dupes = sorted({d for d in dets if dets.count(d) > 1})
        raise PanrayError(f"{instrument} detectors named more than once: {', '.join(map(str, dupes))}")


# -- what travels ------------------------------------------------------------------------------


class CalibKey(NamedTuple):
    """What a cached calibration is keyed by; the instrument keeps detector numbers apart."""

    instrument: str
    detector: int
    calib_version: str


class Push(NamedTuple):
    """One pilot's share of one visit: a single actor call carries all its detectors."""

    instrument: str
    visit: int
    calib_version: str
    notified: float  #: wall time of the notification
    detectors: tuple[int, ...]
    payload: str  #: "module:function" run in the pilot, when ``command`` is empty
    command: str  #: encoded argv (panray.payload) run as a subprocess; "" = use ``payload``
    request_memory: int  #: MB, for the subprocess memory monitor


class JobResult(NamedTuple):
    """One detector's job as the pilot ran it; times are wall clock (``time.time()``)."""

    detector: int
    pilot: str
    hit: bool  #: calibration was in the pilot's cache
    notified: float
    started: float  #: the pilot began the job (dispatch done)
    payload_start: float  #: calibration ready, payload begins
    end: float
    exit_code: int | None
    error: str | None


@dataclass(frozen=True, slots=True)
class PilotConfig:
    """How prompt pilots fill their cache and where they work.

    ``loader`` is a callable or an importable ``"module:function"``; it is called as
    ``loader(key: CalibKey, calib_dir: Path)`` and returns whatever the payload needs.
    """

    loader: str | Callable[[CalibKey, Path], Any] = DEFAULT_LOADER
    calib_dir: str = "/tmp/panray-calib"
    work_dir: str = "/tmp/panray-prompt"
    slots: int = 1  #: payloads run at once per pilot; 1 runs them in the receiving thread


@dataclass(frozen=True, slots=True)
class TaskConfig:
    """What a standing task runs per detector: an in-process function or a subprocess command.

    ``payload`` (``"module:function"``) is called as ``f(key: CalibKey, visit: int, calib)`` and
    returns an exit code (``None`` = 0). A non-empty ``command`` (argv list or shell line) runs
    instead, through the batch pilots' :class:`PayloadProcess`, with ``PANRAY_VISIT``,
    ``PANRAY_DETECTOR`` and ``PANRAY_CALIB`` set.
    """

    payload: str = DEFAULT_PAYLOAD
    command: list[str] | str | None = None
    request_memory: int = 4000


def simulated_load(key: CalibKey, calib_dir: Path) -> bytes:
    """Default loader: writes a small calibration file once per key, then reads it back."""
    path = Path(calib_dir) / key.instrument / key.calib_version / f"det{key.detector:03d}.calib"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{threading.get_ident()}.tmp")
        tmp.write_bytes(hashlib.blake2b(repr(key).encode()).digest() * 1024)
        tmp.replace(path)
    return path.read_bytes()


def noop_payload(key: CalibKey, visit: int, calib: Any) -> int:
    """Default payload: touches the calibration and succeeds (the benchmark's warm path)."""
    return 0 if calib is not None else 1


def resolve(ref: str | Callable[..., Any]) -> Callable[..., Any]:
    """A callable from itself or from ``"package.module:function"``."""
    if callable(ref):
        return ref
    module, _, name = ref.partition(":")
    if not name:
        raise ValueError(f"expected 'module:function', got {ref!r}")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


# -- consistent hashing ------------------------------------------------------------------------


def _score(member: str, key: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"{member}/{key}".encode(), digest_size=8).digest(), "big")


class RendezvousRing:
    """Highest-random-weight hashing: a key's owner is the member with the highest hash score.

    Removing a member moves only that member's keys; adding one moves only the keys it wins.
    Owners are memoised, so the per-visit cost is a dict lookup per detector.

    Examples:
        >>> ring = RendezvousRing(["a", "b", "c"])
        >>> before = ring.assign(range(12))
        >>> ring.remove("b")
        >>> after = ring.assign(range(12))
        >>> all(after[m] == sorted(set(before[m]) | set(after[m])) for m in ("a", "c"))
        True
    """

    def __init__(self, members: Iterable[str] = ()):
        self._members: list[str] = sorted(set(members))
        self._owner: dict[int, str] = {}

    @property
    def members(self) -> list[str]:
        return list(self._members)

    def add(self, member: str) -> None:
        if member not in self._members:
            self._members = sorted([*self._members, member])
            self._owner.clear()

    def remove(self, member: str) -> None:
        if member in self._members:
            self._members.remove(member)
            self._owner = {k: m for k, m in self._owner.items() if m != member}

    def owner(self, key: int) -> str:
        m = self._owner.get(key)
        if m is None:
            if not self._members:
                raise LookupError("the ring has no members")
            m = self._owner[key] = max(self._members, key=lambda member: _score(member, key))
        return m

    def assign(self, keys: Iterable[int]) -> dict[str, list[int]]:
        """Keys grouped by owner, each list in the keys' order."""
        out: dict[str, list[int]] = {}
        for k in keys:
            out.setdefault(self.owner(k), []).append(k)
        return out


# -- the pilot ---------------------------------------------------------------------------------


class PilotCore:
    """A prompt pilot without Ray: the calibration cache and the running of pushed jobs."""

    def __init__(self, name: str, site: str, config: PilotConfig):
        self.name, self.site, self.config = name, site, config
        self._load = resolve(config.loader)
        self._calib_dir = Path(config.calib_dir)
        self._services = RunnerServices(work_dir=Path(config.work_dir))
        self._payloads: dict[str, Callable[..., Any]] = {}
        self._cache: dict[CalibKey, Any] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(config.slots, thread_name_prefix="prompt") if config.slots > 1 else None
        self.hits = self.misses = 0

    def calibration(self, key: CalibKey) -> tuple[Any, bool]:
        """The cached calibration for ``key`` (loaded on a miss) and whether it was a hit."""
        calib = self._cache.get(key)
        if calib is not None:
            with self._lock:
                self.hits += 1
            return calib, True
        calib = self._load(key, self._calib_dir)
        with self._lock:
            self.misses += 1
            self._cache[key] = calib
        return calib, False

    def run(self, push: Push) -> list[JobResult]:
        """Runs every detector of ``push``; payload errors become results, never exceptions."""
        if self._pool is None:
            return [self._run_one(push, d) for d in push.detectors]
        return list(self._pool.map(lambda d: self._run_one(push, d), push.detectors))

    def stats(self) -> dict[str, Any]:
        return {"pilot": self.name, "site": self.site, "cached": len(self._cache), "hits": self.hits,
                "misses": self.misses}

    def _run_one(self, push: Push, detector: int) -> JobResult:
        started = time.time()
        hit, payload_start = False, started
        try:
            calib, hit = self.calibration(CalibKey(push.instrument, detector, push.calib_version))
            payload_start = time.time()
            if push.command:
                return self._run_subprocess(push, detector, calib, started)
            code = self._payload(push.payload)(CalibKey(push.instrument, detector, push.calib_version),
                                               push.visit, calib)
            code = 0 if code is None else int(code)
            error = None if code == 0 else f"payload returned {code}"
        except Exception as exc:  # a failing loader or payload fails this job, not the visit
            code, error = None, f"{type(exc).__name__}: {exc}"[:500]
        return JobResult(detector, self.name, hit, push.notified, started, payload_start, time.time(), code, error)

    def _payload(self, ref: str) -> Callable[..., Any]:
        fn = self._payloads.get(ref)
        if fn is None:
            fn = self._payloads[ref] = resolve(ref)
        return fn

    def _run_subprocess(self, push: Push, detector: int, calib: Any, started: float) -> JobResult:
        env = {"PANRAY_VISIT": str(push.visit), "PANRAY_DETECTOR": str(detector),
               "PANRAY_INSTRUMENT": push.instrument, "PANRAY_CALIB": str(calib)[:4096]}
        d = Dispatch(job_id=detector, attempt_nr=1, workflow_id=push.visit, task_id=0,
                     label=f"prompt:{push.instrument}", payload=push.command, environment=json.dumps(env),
                     request_memory=push.request_memory, request_cpus=1, site=self.site, manager=f"prompt:{push.instrument}:{push.visit}")
        r = PayloadProcess(d, self.name, self._services).run()  # in <work_dir>/prompt_<instrument>_<visit>/
        return JobResult(detector, self.name, True, push.notified, started, r.start_time, r.end_time,
                         r.exit_code, r.diag)


def run_cold(config: PilotConfig, push: Push) -> list[JobResult]:
    """The cold path the benchmark compares with: a fresh pilot core (empty cache) per call."""
    return PilotCore("cold", "", config).run(push)
