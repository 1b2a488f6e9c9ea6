"""The state store: one interface, an SQLite and a PostgreSQL implementation.

Examples:
    >>> import tempfile
    >>> store = open_store(f"sqlite:///{tempfile.mkdtemp()}/sub/state.db")
    >>> store.url.endswith("/sub/state.db")
    True
    >>> store.close()
"""

from __future__ import annotations

from pathlib import Path

from panray.exceptions import ConfigError
from panray.home import create_private, private_dir
from panray.store.base import (
    SCHEMA_VERSION,
    AttemptRow,
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

__all__ = [
    "SCHEMA_VERSION",
    "AttemptRow",
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
            create_private(private_dir(Path(path).parent) / Path(path).name)  # SQLite gives -wal/-shm its mode
        except OSError as exc:
            raise ConfigError(f"state store {path}: cannot open: {exc.strerror}") from None
        return SQLiteStore(path)
    if url.startswith(_POSTGRES):
        from panray.store.postgres import PostgresStore

        return PostgresStore(url)
    raise ConfigError(f"state store URL {url!r}: expected sqlite:///abs/path or postgresql://...")
