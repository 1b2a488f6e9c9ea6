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

from panray.exceptions import ConfigError
from panray.store.base import (
    SCHEMA_VERSION,
    AttemptRow,
    ChangeBatch,
    DecisionRow,
    HistoryRow,
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
    TransferRow,
    WorkflowRow,
    WorkflowSnapshot,
)
from panray.store.schema import planned_snapshot

__all__ = [
    "SCHEMA_VERSION",
    "AttemptRow",
    "ChangeBatch",
    "DecisionRow",
    "HistoryRow",
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
    "TransferRow",
    "WorkflowRow",
    "WorkflowSnapshot",
    "open_store",
    "planned_snapshot",
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

        os.makedirs(os.path.dirname(path), exist_ok=True)
        return SQLiteStore(path)
    if url.startswith(_POSTGRES):
        from panray.store.postgres import PostgresStore

        return PostgresStore(url)
    raise ConfigError(f"state store URL {url!r}: expected sqlite:///abs/path or postgresql://...")
