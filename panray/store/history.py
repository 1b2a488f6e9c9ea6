"""A job's status changes stored as paths: one row per job, attempt and batch, every move kept.

A no-op job moves about seven times between two flushes of its manager (defined -> assigned ->
... -> finished), and a row per move was about a third of the store's write cost. Consecutive
moves of one attempt in one batch, each leaving the status the one before reached, are stored as
one row: its ``previous`` is where the path began, its ``status``/``time``/``cause`` the last move,
and ``path`` the moves before it (NULL for a single move). :func:`expand` gives back exactly the
:class:`HistoryRow` of each move, cause included.

``path`` is packed, not JSON, because formatting floats as text cost as much as the rows it saved:
the number of moves n (uint32), their n times (float64, little-endian), their statuses joined by
",", and only when a move's cause differs from the last one's, a newline and the JSON list of
the n causes.

Examples:
    >>> rows = [HistoryRow(1, 1, "assigned", 1.0, "defined", "brokerage"),
    ...         HistoryRow(1, 1, "activated", 2.0, "assigned", "queued")]
    >>> stored = compact(rows, {"assigned", "activated"})
    >>> len(stored), expand(stored) == rows
    (1, True)
"""

from __future__ import annotations

import json
import struct
from collections.abc import Collection, Iterable, Sequence
from typing import Any

from panray.store.base import HistoryRow

#: The columns of ``job_history`` that :func:`compact` fills, in its rows' order.
STORED_COLUMNS = (*HistoryRow._fields, "path")

_dumps = json.JSONEncoder(separators=(",", ":")).encode
_COUNT = struct.Struct("<I")


def compact(rows: Sequence[HistoryRow], statuses: Collection[str]) -> list[tuple[Any, ...]]:
    """The rows to store for ``rows`` (in order), a path per run of chained moves of one attempt.

    Raises ValueError for a status not in ``statuses`` (the table's CHECK sees only each stored
    row's last move)."""
    unknown = {r[2] for r in rows}.difference(statuses)
    if unknown:
        raise ValueError(f"history: {', '.join(map(repr, sorted(unknown)))} is not a job status")
    runs: list[list[HistoryRow]] = []
    latest: dict[int, list[HistoryRow]] = {}  #: job_id -> its latest run
    for r in rows:
        run = latest.get(r[0])
        if run is not None and run[-1][1] == r[1] and run[-1][2] == r[4]:
            run.append(r)
        else:
            latest[r[0]] = run = [r]
            runs.append(run)
    out: list[tuple[Any, ...]] = []
    for run in runs:
        last = run[-1]
        if len(run) == 1:
            out.append((*last, None))
            continue
        earlier = run[:-1]
        n, cause = len(earlier), last[5]
        path = (_COUNT.pack(n) + struct.pack(f"<{n}d", *[r[3] for r in earlier])
                + ",".join([r[2] for r in earlier]).encode())
        if any(r[5] != cause for r in earlier):
            path += b"\n" + _dumps([r[5] for r in earlier]).encode()
        out.append((last[0], last[1], last[2], last[3], run[0][4], cause, path))
    return out


def expand(stored: Iterable[Sequence[Any]]) -> list[HistoryRow]:
    """Every move of the stored rows (STORED_COLUMNS order), oldest first."""
    out: list[HistoryRow] = []
    for job_id, attempt_nr, status, t, previous, cause, path in stored:
        if path:
            path = bytes(path)
            [n] = _COUNT.unpack_from(path)
            times = struct.unpack_from(f"<{n}d", path, _COUNT.size)
            names, _, causes = path[_COUNT.size + 8 * n:].decode().partition("\n")
            for step, step_time, step_cause in zip(names.split(","), times,
                                                   json.loads(causes) if causes else [cause] * n, strict=True):
                out.append(HistoryRow(job_id, attempt_nr, step, step_time, previous, step_cause))
                previous = step
        out.append(HistoryRow(job_id, attempt_nr, status, t, previous, cause))
    return out
