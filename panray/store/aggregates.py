"""The monitor's kept aggregates, changed once per batch by deltas instead of per row by triggers.

A batch that moves 1,000 jobs touches a handful of aggregate keys (task, status, site, error
class, exit code): the store reads the batch's jobs as they were, sums in Python what leaves and
what enters each key, and writes one upsert per key. A row trigger did two upserts per moved job,
which was about half of SQLite's write cost. The sums are the ones the triggers kept, so a store
whose aggregates triggers kept (schema version 4) goes on with exact counts.

Examples:
    >>> d = Deltas()
    >>> d.job((7, "pending", None, None, None, None, None, 2048), -1)
    >>> d.job((7, "running", "USDF", None, None, 10.0, None, 2048), +1)
    >>> sorted(d.job_rows())
    [(7, 'pending', '', '', -2147483648, -1, 0.0, 2048), (7, 'running', 'USDF', '', -2147483648, 1, 0.0, 2048)]
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from panray.store.monitor_sql import NO_EXIT

#: What the deltas need of a job as stored, in this order (read before the batch overwrites it).
JOB_STAT_COLUMNS = ("task_id", "status", "site", "error_class", "exit_code", "start_time", "end_time", "request_memory")
#: What the error deltas need of a stored failed attempt, in this order.
ATTEMPT_STAT_COLUMNS = ("job_id", "attempt_nr", "error_class", "exit_code", "cause", "diag")

UPSERT_JOB_STATS = (
    "INSERT INTO task_job_stats AS s (task_id, status, site, error_class, exit_code, n, wall, max_request)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (task_id, status, site, error_class, exit_code) DO UPDATE SET"
    " n = s.n + excluded.n, wall = s.wall + excluded.wall,"
    " max_request = CASE WHEN excluded.max_request > s.max_request THEN excluded.max_request ELSE s.max_request END"
)
UPSERT_MAX_PSS = (
    "INSERT INTO task_max_pss AS p (task_id, max_pss_kb) VALUES (?, ?) ON CONFLICT (task_id) DO UPDATE SET"
    " max_pss_kb = CASE WHEN excluded.max_pss_kb > p.max_pss_kb THEN excluded.max_pss_kb ELSE p.max_pss_kb END"
)
UPSERT_ERROR_STATS = (
    "INSERT INTO task_error_stats AS e (task_id, error_class, exit_code, cause, n, example_job_id, example_diag)"
    " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (task_id, error_class, exit_code, cause) DO UPDATE SET"
    " n = e.n + excluded.n,"
    " example_diag = CASE WHEN excluded.example_job_id < e.example_job_id THEN excluded.example_diag"
    " ELSE e.example_diag END,"
    " example_job_id = CASE WHEN excluded.example_job_id < e.example_job_id THEN excluded.example_job_id"
    " ELSE e.example_job_id END"
)


@dataclass(slots=True)
class Deltas:
    """What one batch adds to (and takes from) each aggregate key."""

    jobs: dict[tuple[Any, ...], list[Any]] = field(default_factory=dict)  #: key -> [n, wall, max_request]
    pss: dict[int, int] = field(default_factory=dict)  #: task_id -> largest max PSS kB
    errors: dict[tuple[Any, ...], list[Any]] = field(default_factory=dict)  #: key -> [n, example job, its diag]

    def job(self, row: tuple[Any, ...], sign: int) -> None:
        """Count a job (JOB_STAT_COLUMNS) into (``sign`` +1) or out of (-1) its key."""
        task_id, status, site, error_class, exit_code, start, end, memory = row
        key = (task_id, status, site or "", error_class or "", NO_EXIT if exit_code is None else exit_code)
        wall = end - start if start is not None and end is not None else 0.0
        kept = self.jobs.get(key)
        if kept is None:
            self.jobs[key] = [sign, sign * wall, memory]
        else:
            kept[0] += sign
            kept[1] += sign * wall
            if memory > kept[2]:
                kept[2] = memory

    def jobs_of_new_tasks(self, counts: Iterable[tuple[int, str, int, int]]) -> None:
        """Count freshly submitted jobs: ``(task_id, status, n, largest memory request)``."""
        for task_id, status, n, memory in counts:
            self.jobs[(task_id, status, "", "", NO_EXIT)] = [n, 0.0, memory]

    def max_pss(self, task_id: int, kb: int | None) -> None:
        if kb is not None and kb > self.pss.get(task_id, -1):
            self.pss[task_id] = kb

    def error(self, task_id: int, job_id: int, error_class: str | None, exit_code: int | None, cause: str | None,
              diag: str | None, sign: int) -> None:
        """Count a failed attempt into or out of its (task, class, exit code, cause) group; the group's
        example is its lowest job id, the first attempt of it that came wins a tie (as the triggers did)."""
        key = (task_id, error_class or "", NO_EXIT if exit_code is None else exit_code, cause or "")
        kept = self.errors.get(key)
        if kept is None:
            self.errors[key] = [sign, job_id, diag]
            return
        kept[0] += sign
        if job_id < kept[1]:
            kept[1], kept[2] = job_id, diag

    def job_rows(self) -> list[tuple[Any, ...]]:
        """UPSERT_JOB_STATS parameters."""
        return [(*k, n, wall, memory) for k, (n, wall, memory) in self.jobs.items()]

    def pss_rows(self) -> list[tuple[int, int]]:
        return list(self.pss.items())

    def error_rows(self) -> list[tuple[Any, ...]]:
        return [(*k, n, job_id, diag) for k, (n, job_id, diag) in self.errors.items()]
