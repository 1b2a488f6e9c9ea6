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
from typing import NoReturn

from panray.exceptions import StoreError, StoreUnavailableError
from panray.store.base import JobState
from panray.store.monitor_sql import SQLITE_V4_TRIGGERS
from panray.store.schema import ATTEMPT_COLUMNS, ATTEMPT_ON_CONFLICT, Cursor, Dialect, SQLStore, rejected

_BUSY_TIMEOUT_S = 60.0
#: SQLite's primary result codes that a later try can get past: BUSY, LOCKED, IOERR, FULL, CANTOPEN.
_BUSY = frozenset({5, 6})
_TRANSIENT = _BUSY | {10, 13, 14}
_DIALECT = Dialect(
    types={"id": "INTEGER", "float": "REAL", "bool": "INTEGER", "serial": "INTEGER PRIMARY KEY", "blob": "BLOB",
           "nulls_last": "",  # SQLite puts NULLs last in DESC order and takes no NULLS in an index
           "without_rowid": " WITHOUT ROWID"},  # the aggregates' upserts find a kept row in one b-tree, not two
    param="?",
    table_exists="SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
    v4_triggers=SQLITE_V4_TRIGGERS,
)
#: ``?NNN`` parameters take a JobState tuple as it is: job_id is ?1, the rest follow in order.
_UPDATE_JOB = "UPDATE jobs SET {} WHERE job_id = ?1".format(
    ", ".join(f"{c} = ?{i}" for i, c in enumerate(JobState._fields[1:], start=2))
)
_UPSERT_ATTEMPT = (
    f"INSERT INTO attempts ({', '.join(ATTEMPT_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(ATTEMPT_COLUMNS))}) {ATTEMPT_ON_CONFLICT}"
)


class SQLiteStore(SQLStore):
    """SQLite backend; one connection per store, shared by the process's threads under a lock.

    A write lock held past the busy timeout, or an I/O error, raises StoreUnavailableError;
    after an I/O error the connection is opened again on the next call.
    """

    dialect = _DIALECT

    def __init__(self, path: str, *, busy_timeout: float = _BUSY_TIMEOUT_S):
        self.path = os.path.abspath(path)
        self.url = "sqlite://" + self.path
        self._busy_timeout = busy_timeout
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        if os.path.exists(path) and not os.path.isfile(path):
            raise StoreError(f"state store {self.url}: not a regular file")
        try:
            with self._lock:
                self._connection()
        except sqlite3.Error as exc:
            raise StoreError(f"state store {self.url}: cannot open: {exc}") from None
        self._ensure_schema()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self.path, timeout=self._busy_timeout, isolation_level=None,
                                   check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA cache_size = -65536")  # 64 MiB: a 200k-job workflow's indexes stay cached
            self._conn = conn
        return self._conn

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Cursor]:
        with self._lock:
            committing = False
            try:
                conn = self._connection()
                cur = conn.cursor()
            except sqlite3.OperationalError as exc:
                self._give_up(exc, committing, reopen=True)
            try:
                cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                yield cur
                committing = True
                cur.execute("COMMIT")
            except sqlite3.IntegrityError as exc:
                conn.rollback()
                raise rejected(self.url, exc) from exc
            except sqlite3.OperationalError as exc:
                if _primary_code(exc) in _TRANSIENT:
                    self._give_up(exc, committing, reopen=_primary_code(exc) not in _BUSY)
                raise self._failed(conn, exc, write) from exc  # read-only, no such table, ...
            except sqlite3.DatabaseError as exc:  # corrupt, not a database
                raise self._failed(conn, exc, write) from exc
            except BaseException:
                conn.rollback()
                raise
            finally:
                cur.close()

    def _give_up(self, exc: sqlite3.OperationalError, committing: bool, *, reopen: bool) -> NoReturn:
        """Roll back what can be, drop a connection that met an I/O error, and say so."""
        if self._conn is not None:
            try:
                self._conn.rollback()
            except sqlite3.Error:
                reopen = True
            if reopen:
                self._conn.close()
                self._conn = None
        raise StoreUnavailableError(self.url, exc, in_doubt=committing) from exc

    def _failed(self, conn: sqlite3.Connection, exc: sqlite3.Error, write: bool) -> StoreError:
        """Roll back and say what failed: a store no retry can fix (read-only, corrupt)."""
        try:
            conn.rollback()
        except sqlite3.Error:  # the transaction was never begun (BEGIN itself failed)
            pass
        done = "; nothing of this change was stored" if write else ""
        return StoreError(f"state store {self.url}: {exc}{done}")

    def _bulk_insert(self, cur: Cursor, table: str, columns: Sequence[str], rows: Iterable[tuple]) -> None:
        marks = ", ".join("?" * len(columns))
        cur.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)

    def _bulk_update_jobs(self, cur: Cursor, states: Sequence[JobState]) -> int:
        cur.executemany(_UPDATE_JOB, states)
        return cur.rowcount

    def _bulk_upsert_attempts(self, cur: Cursor, rows: Sequence[tuple]) -> None:
        cur.executemany(_UPSERT_ATTEMPT, rows)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _primary_code(exc: sqlite3.Error) -> int:
    """The primary result code (extended codes carry it in the low byte); -1 if unknown."""
    code = getattr(exc, "sqlite_errorcode", None)
    return -1 if code is None else code & 0xFF
