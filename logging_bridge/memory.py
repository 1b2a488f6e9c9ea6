"""A prmon-like memory monitor: samples a payload's process tree with psutil.

There is no prmon on PyPI, so this writes the same two files the monitor already understands:
``prmon.txt`` (TSV time series, ``Time`` first, prmon's column names and units: kB, bytes, seconds)
and ``prmon.json`` (``{"Max": {...}, "Avg": {...}}``). ``on_exceed`` fires once, from the monitor
thread, the first time the tree's PSS goes over ``limit_kb``, so the pilot can act on a runaway job.

A pilot runs one :class:`MemorySampler` thread for all its payloads' monitors instead of a
thread per payload: starting a payload then costs no thread and no file write.

Examples:
    >>> monitor = MemoryMonitor(proc.pid, workdir, interval=1.0, ncores=4)   # doctest: +SKIP
    >>> monitor.start(); proc.wait(); summary = monitor.stop()              # doctest: +SKIP
    >>> summary["Max"]["pss"], monitor.max_pss_per_core_kb                   # doctest: +SKIP
    >>> sampler = MemorySampler(interval=0.5)                                # doctest: +SKIP
    >>> monitor.start(sampler); proc.wait(); summary = monitor.stop()        # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

COLUMNS = ("Time", "vmem", "pss", "rss", "swap", "rchar", "wchar", "read_bytes", "write_bytes",
           "nprocs", "nthreads", "stime", "utime", "wtime")
"""prmon's column order (without network and GPU columns)."""


def _descendants(root: psutil.Process) -> list[psutil.Process]:
    """The live descendants of ``root``.

    Reads the kernel's per-thread ``children`` lists (a few small files) instead of psutil's
    scan of every process on the node, which costs milliseconds per sample on a busy worker.
    """
    out: list[psutil.Process] = []
    stack = [root.pid]
    try:
        while stack:
            pid = stack.pop()
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    kids = [int(k) for k in f.read().split()]
                stack.extend(kids)
                out.extend(psutil.Process(k) for k in kids)
    except FileNotFoundError:  # a process ended while we walked, or no children files here
        return root.children(recursive=True) if root.is_running() else out
    except (psutil.NoSuchProcess, ProcessLookupError):
        pass
    return out


def _sample_tree(root: psutil.Process | None) -> dict[str, int] | None:
    """Sum the counters over ``root`` and its live descendants; None once the root is gone."""
    if root is None:
        return None
    try:
        procs = [root, *_descendants(root)]
    except psutil.Error:
        return None
    totals = dict.fromkeys(COLUMNS[1:-1], 0)
    cpu_user = cpu_system = 0.0
    for proc in procs:
        try:
            with proc.oneshot():
                mem = proc.memory_full_info()
                io = proc.io_counters()
                cpu = proc.cpu_times()
                nthreads = proc.num_threads()
        except psutil.Error:
            continue
        totals["vmem"] += mem.vms // 1024
        totals["pss"] += mem.pss // 1024
        totals["rss"] += mem.rss // 1024
        totals["swap"] += mem.swap // 1024
        totals["rchar"] += io.read_chars
        totals["wchar"] += io.write_chars
        totals["read_bytes"] += io.read_bytes
        totals["write_bytes"] += io.write_bytes
        totals["nprocs"] += 1
        totals["nthreads"] += nthreads
        cpu_user += cpu.user + cpu.children_user
        cpu_system += cpu.system + cpu.children_system
    if not totals["nprocs"]:
        return None
    totals["utime"], totals["stime"] = round(cpu_user), round(cpu_system)
    return totals


class MemoryMonitor:
    """Samples every ``interval`` seconds from :meth:`start` (first sample at once) until :meth:`stop`."""

    def __init__(
        self,
        pid: int,
        out_dir: Path,
        interval: float = 1.0,
        ncores: int = 1,
        limit_kb: int | None = None,
        on_exceed: Callable[[int], None] | None = None,
    ):
        try:
            self._root: psutil.Process | None = psutil.Process(pid)
        except psutil.NoSuchProcess:
            self._root = None  # the job already ended: the files get a header and no rows
        self.out_dir = Path(out_dir)
        self.interval = interval
        self.ncores = max(1, ncores)
        self.limit_kb = limit_kb
        self._on_exceed = on_exceed
        self._exceeded = False
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sampling = threading.Lock()
        self._thread: threading.Thread | None = None
        self._start = time.monotonic()
        self._header = False  #: prmon.txt has its header
        self._sampler: MemorySampler | None = None
        self._max: dict[str, int] = {}
        self._sums: dict[str, int] = {}
        self._count = 0

    @property
    def txt_path(self) -> Path:
        return self.out_dir / "prmon.txt"

    @property
    def json_path(self) -> Path:
        return self.out_dir / "prmon.json"

    @property
    def max_pss_kb(self) -> int:
        with self._lock:
            return self._max.get("pss", 0)

    @property
    def max_pss_per_core_kb(self) -> float:
        """What the monitor shows per job (as GB): memory per allocated core."""
        return self.max_pss_kb / self.ncores

    def start(self, sampler: MemorySampler | None = None) -> None:
        """Sample now (short jobs get a row too) and every ``interval`` from a thread of its own,
        or hand the monitor to a pilot's shared ``sampler``, which takes its first row at once."""
        self._start = time.monotonic()
        if sampler is not None:
            self._sampler = sampler
            sampler.add(self)
            return
        self._write_header()
        self.sample()
        self._thread = threading.Thread(target=self._loop, name="panray-memory-monitor", daemon=True)
        self._thread.start()

    def _write_header(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.txt_path.write_text("\t".join(COLUMNS) + "\n")
        self._header = True

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            if not self.sample():
                return

    def sample(self) -> bool:
        """Record one row now (the thread calls this); False when the process tree has gone."""
        with self._sampling:
            return self._record()

    def _record(self) -> bool:
        if self._stop.is_set():
            return False
        values = _sample_tree(self._root)
        if values is None:
            return False
        row = {"Time": int(time.time()), **values, "wtime": round(time.monotonic() - self._start)}
        with self._lock:
            for column in COLUMNS[1:]:
                self._max[column] = max(self._max.get(column, 0), row[column])
                self._sums[column] = self._sums.get(column, 0) + row[column]
            self._count += 1
        if not self._header:
            self._write_header()
        with self.txt_path.open("a") as out:
            out.write("\t".join(str(row[column]) for column in COLUMNS) + "\n")
        if self.limit_kb is not None and row["pss"] > self.limit_kb and not self._exceeded:
            self._exceeded = True
            if self._on_exceed is not None:
                self._on_exceed(row["pss"])
        return True

    def stop(self) -> dict[str, dict[str, float]]:
        """Stop sampling, write ``prmon.json`` and return the same summary."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._sampler is not None:
            self._sampler.remove(self)
        with self._sampling:  # a sample the shared sampler is taking ends first
            if not self._header:
                self._write_header()
        with self._lock:
            count = max(self._count, 1)
            summary = {"Max": dict(self._max),
                       "Avg": {column: total / count for column, total in self._sums.items()}}
        self.json_path.write_text(json.dumps(summary, indent=2))
        return summary


class MemorySampler:
    """One thread sampling the monitors of every payload a pilot runs, every ``interval`` seconds.

    A monitor added is sampled at once, then with the others at each round until it stops (or
    its process tree is gone).
    """

    def __init__(self, interval: float = 0.5):
        self.interval = interval
        self._cv = threading.Condition()
        self._watched: dict[MemoryMonitor, None] = {}  #: insertion-ordered set
        self._new: list[MemoryMonitor] = []
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="panray-memory-sampler", daemon=True)
        self._thread.start()

    def add(self, monitor: MemoryMonitor) -> None:
        with self._cv:
            self._new.append(monitor)
            self._cv.notify()

    def remove(self, monitor: MemoryMonitor) -> None:
        with self._cv:
            self._watched.pop(monitor, None)
            if monitor in self._new:
                self._new.remove(monitor)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join()

    def _loop(self) -> None:
        due = time.monotonic() + self.interval
        while True:
            with self._cv:
                while not (self._closed or self._new) and (wait := due - time.monotonic()) > 0:
                    self._cv.wait(wait)
                if self._closed:
                    return
                todo, self._new = self._new, []
                self._watched.update(dict.fromkeys(todo))
                if time.monotonic() >= due:
                    todo = list(self._watched)
                    due = time.monotonic() + self.interval
            for monitor in todo:
                try:
                    alive = monitor.sample()
                except Exception:  # noqa: BLE001 - a full disk must not end the sampling of the others
                    alive = True
                if not alive:
                    self.remove(monitor)
