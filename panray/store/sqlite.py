"""The state store on one SQLite file: a laptop or a single node, several processes at once.

WAL lets readers proceed while one writer commits; every write transaction starts with
``BEGIN IMMEDIATE`` so that id allocation and the inserts that use the ids hold the one write
lock from the start (no upgrade deadlock between processes), and the 60 s busy timeout makes the
other workflow managers wait for it rather than fail.

Examples:
    >>> import tempfile, os
    >>> store = SQLiteStore(os.path.join(tempfile.mkdtemp(), "state.db"))
    >>> store.workflows()
    []
    >>> store.close()
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

from panray.store.base import AttemptRow, JobState
from panray.store.monitor_sql import SQLITE_TRIGGERS
from panray.store.schema import ATTEMPT_ON_CONFLICT, Cursor, Dialect, SQLStore, rejected

_BUSY_TIMEOUT_S = 60.0
_DIALECT = Dialect(
    types={"id": "INTEGER", "float": "REAL", "bool": "INTEGER", "serial": "INTEGER PRIMARY KEY"},
    param="?",
    table_exists="SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
    triggers=SQLITE_TRIGGERS,
)
#: ``?NNN`` parameters take a JobState tuple as it is: job_id is ?1, the rest follow in order.
_UPDATE_JOB = "UPDATE jobs SET {} WHERE job_id = ?1".format(
    ", ".join(f"{c} = ?{i}" for i, c in enumerate(JobState._fields[1:], start=2))
)
_UPSERT_ATTEMPT = (
    f"INSERT INTO attempts ({', '.join(AttemptRow._fields)}) "
    f"VALUES ({', '.join('?' * len(AttemptRow._fields))}) {ATTEMPT_ON_CONFLICT}"
)


class SQLiteStore(SQLStore):
    """SQLite backend; one connection per store, shared by the process's threads under a lock."""

    dialect = _DIALECT

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        self.url = "sqlite://" + self.path
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        self._conn.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = NORMAL")
        self._conn.execute("PRAGMA foreign_keys = ON")
        self._conn.execute("PRAGMA cache_size = -65536")  # 64 MiB: a 200k-job workflow's indexes stay cached
        self._ensure_schema()

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Cursor]:
        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield cur
                cur.execute("COMMIT")
            except sqlite3.IntegrityError as exc:
                self._conn.rollback()
                raise rejected(self.url, exc) from exc
            except BaseException:
                self._conn.rollback()
                raise
            finally:
                cur.close()

    def _bulk_insert(self, cur: Cursor, table: str, columns: Sequence[str], rows: Iterable[tuple]) -> None:
        marks = ", ".join("?" * len(columns))
        cur.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)

    def _bulk_update_jobs(self, cur: Cursor, states: Sequence[JobState]) -> int:
        cur.executemany(_UPDATE_JOB, states)
        return cur.rowcount

    def _bulk_upsert_attempts(self, cur: Cursor, rows: Sequence[AttemptRow]) -> None:
        cur.executemany(_UPSERT_ATTEMPT, rows)

    def close(self) -> None:
        with self._lock:
            self._conn.close()
