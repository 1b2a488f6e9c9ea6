"""A job's status changes stored as paths: one row per job, attempt and batch, every move kept.

A no-op job moves about seven times between two flushes of its manager (defined -> assigned ->
... -> finished), and a row per move was about a third of the store's write cost. Consecutive
moves of one attempt in one batch, each leaving the status the one before reached, are stored as
one row: its ``previous`` is where the path began, its ``status``/``time``/``cause`` the last move,
and ``path`` the moves before it (JSON ``[[status, time, cause], ...]``, "" for a single move).
:func:`expand` gives back exactly the :class:`HistoryRow` of each move, cause included.

Examples:
    >>> rows = [HistoryRow(1, 1, "assigned", 1.0, "defined", "brokerage"),
    ...         HistoryRow(1, 1, "activated", 2.0, "assigned", "queued")]
    >>> stored = compact(rows, {"assigned", "activated"})
    >>> len(stored), expand(stored) == rows
    (1, True)
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Sequence
from typing import Any

from panray.store.base import HistoryRow

#: The columns of ``job_history`` that :func:`compact` fills, in its rows' order.
STORED_COLUMNS = (*HistoryRow._fields, "path")

_dumps = json.JSONEncoder(separators=(",", ":")).encode


def compact(rows: Sequence[HistoryRow], statuses: Collection[str]) -> list[tuple[Any, ...]]:
    """The rows to store for ``rows`` (in order), a path per run of chained moves of one attempt.

    Raises ValueError for a move inside a path to a status not in ``statuses`` (the table's CHECK
    sees only each row's last one)."""
    runs: list[list[Any]] = []  #: [job_id, attempt_nr, previous, [(status, time, cause), ...]]
    open_run: dict[int, list[Any]] = {}  #: job_id -> its latest run
    for job_id, attempt_nr, status, t, previous, cause in rows:
        run = open_run.get(job_id)
        if run is not None and run[1] == attempt_nr and run[3][-1][0] == previous:
            run[3].append((status, t, cause))
        else:
            open_run[job_id] = run = [job_id, attempt_nr, previous, [(status, t, cause)]]
            runs.append(run)
    out = []
    for job_id, attempt_nr, previous, moves in runs:
        status, t, cause = moves[-1]
        for step in moves[:-1]:
            if step[0] not in statuses:
                raise ValueError(f"history of job {job_id}: {step[0]!r} is not a job status")
        out.append((job_id, attempt_nr, status, t, previous, cause, _dumps(moves[:-1]) if len(moves) > 1 else ""))
    return out


def expand(stored: Iterable[Sequence[Any]]) -> list[HistoryRow]:
    """Every move of the stored rows (STORED_COLUMNS order), oldest first."""
    out: list[HistoryRow] = []
    for job_id, attempt_nr, status, t, previous, cause, path in stored:
        if path:
            for step_status, step_time, step_cause in json.loads(path):
                out.append(HistoryRow(job_id, attempt_nr, step_status, step_time, previous, step_cause))
                previous = step_status
        out.append(HistoryRow(job_id, attempt_nr, status, t, previous, cause))
    return out
