"""The state store: one interface, an SQLite and a PostgreSQL implementation.

Examples:
    >>> import tempfile
    >>> store = open_store(f"sqlite:///{tempfile.mkdtemp()}/sub/state.db")
    >>> store.url.endswith("/sub/state.db")
    True
    >>> store.close()
"""

from __future__ import annotations

import os
from pathlib import Path

from panray.exceptions import ConfigError, StoreError
from panray.home import create_private
from panray.store.base import (
    SCHEMA_VERSION,
    AttemptRow,
    AuditRow,
    ChangeBatch,
    DecisionRow,
    ErrorGroupRow,
    HistoryRow,
    JobPage,
    JobQuery,
    JobRow,
    JobState,
    LocationRow,
    NewCampaign,
    NewJob,
    NewTask,
    NewWorkflow,
    StateStore,
    SubmittedCampaign,
    SubmittedWorkflow,
    TaskRow,
    TaskStatsRow,
    TransferRow,
    WorkflowQuery,
    WorkflowRow,
    WorkflowSnapshot,
)
from panray.store.schema import planned_snapshot

__all__ = [
    "SCHEMA_VERSION",
    "AttemptRow",
    "AuditRow",
    "ChangeBatch",
    "DecisionRow",
    "ErrorGroupRow",
    "HistoryRow",
    "JobPage",
    "JobQuery",
    "JobRow",
    "JobState",
    "LocationRow",
    "NewCampaign",
    "NewJob",
    "NewTask",
    "NewWorkflow",
    "StateStore",
    "SubmittedCampaign",
    "SubmittedWorkflow",
    "TaskRow",
    "TaskStatsRow",
    "TransferRow",
    "WorkflowQuery",
    "WorkflowRow",
    "WorkflowSnapshot",
    "open_store",
    "planned_snapshot",
    "store_exists",
]

_SQLITE = "sqlite://"
_POSTGRES = ("postgresql://", "postgres://")


def open_store(url: str) -> StateStore:
    """Open (creating tables if needed) the store at ``sqlite:///abs/path`` or ``postgresql://...``.

    The backend modules are imported here, on demand, so that an SQLite user never needs psycopg.
    """
    if url.startswith(_SQLITE):
        path = url[len(_SQLITE) :]
        if not path.startswith("/"):
            raise ConfigError(f"state store URL {url!r}: give an absolute path, sqlite:///abs/path")
        from panray.store.sqlite import SQLiteStore

        try:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)  # new directories are private
        except OSError as exc:
            raise StoreError(f"state store {url}: cannot create its directory: {exc.strerror}") from None
        if os.path.exists(path) and not os.path.isfile(path):
            raise StoreError(f"state store {url}: not a regular file")
        try:
            create_private(Path(path))  # SQLite gives -wal/-shm the file's mode
        except OSError as exc:
            raise StoreError(f"state store {path}: cannot open: {exc.strerror}") from None
        return SQLiteStore(path)
    if url.startswith(_POSTGRES):
        from panray.store.postgres import PostgresStore

        return PostgresStore(url)
    raise ConfigError(f"state store URL {url!r}: expected sqlite:///abs/path or postgresql://...")


def store_exists(url: str) -> bool:
    """Whether a store is there to read, without creating one (a read-only query must not).

    An SQLite store is its file; a PostgreSQL server is taken to hold one (its tables are checked
    when it is opened).
    """
    if url.startswith(_SQLITE):
        return os.path.isfile(url[len(_SQLITE) :])
    return True
