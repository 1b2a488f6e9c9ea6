"""The state store across outages: a PostgreSQL restart or stop, a locked SQLite file, and
re-sent batches that must not be stored twice."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

import pgserver
from panray.statuses import JobStatus as J
from panray.store import ChangeBatch, DecisionRow, HistoryRow, NewCampaign, StateStore, open_store
from panray.store.sqlite import SQLiteStore
from test_integration import _wait_for
from test_store import new_workflow, state


def _in_thread(fn: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    """Run ``fn`` in a thread; its result or exception lands in the returned list."""
    out: list[object] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:  # handed to the test
            out.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def _marked(first: int, n: int, writer: str | None, seq: int) -> ChangeBatch:
    """A batch with one status change of job ``first``, its history row and a decision row."""
    status = (J.DEFINED, J.ASSIGNED, J.ACTIVATED)[n]
    return ChangeBatch(jobs=[state(first, status)], history=[HistoryRow(first, 1, status.value, float(n), "", "test")],
                       decisions=[DecisionRow(first, 1, "{}", float(n))], writer=writer, seq=seq)


def test_a_keyed_batch_is_stored_once(store: StateStore) -> None:
    first = store.submit(NewCampaign("c", "alice", [new_workflow("w", 2)])).workflows[0].first_job_id
    batch = _marked(first, 0, "wm#a", 1)
    store.apply(batch)
    store.apply(batch)  # re-sent after a commit whose acknowledgement was lost
    store.apply(_marked(first, 1, "wm#a", 2))
    store.apply(_marked(first, 2, "wm#a", 1))  # an older one of the same writer: already stored
    assert [h.status for h in store.history(first)] == ["defined", "assigned"]
    assert len(store.decisions(first)) == 2
    assert store.job(first).status == "assigned"
    store.apply(_marked(first, 2, "wm#b", 1))  # another writer's sequence is its own
    store.apply(_marked(first, 2, None, 0))  # unkeyed batches are always stored
    assert [h.status for h in store.history(first)] == ["defined", "assigned", "activated", "activated"]


def test_postgres_store_reconnects_after_a_restart_and_a_stop(own_pg: pgserver.PgServer,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    store = open_store(own_pg.create_database("reconnect"))
    try:
        w = store.submit(NewCampaign("c", "alice", [new_workflow("w", 3)])).workflows[0]
        own_pg.restart("fast")
        assert [j.status for j in store.jobs(w.workflow_id)] == ["pending"] * 3  # a new connection
        own_pg.halt("fast")
        caplog.set_level(logging.WARNING, logger="panray.store.schema")
        t, out = _in_thread(lambda: store.apply(_marked(w.first_job_id, 0, "wm#x", 1)))
        _wait_for(lambda: any("trying apply again" in r.getMessage() for r in caplog.records), timeout=20,
                  what="the write to meet the stopped server")
        assert t.is_alive(), "the write waits for the server instead of failing at once"
        own_pg.boot()
        t.join(timeout=30)
        assert out == [None]
        assert [h.status for h in store.history(w.first_job_id)] == ["defined"]
        assert store.job(w.first_job_id).status == "defined"
    finally:
        store.close()


def test_a_long_postgres_outage_ends_in_one_clear_error(own_pg: pgserver.PgServer) -> None:
    from panray.exceptions import StoreUnavailableError

    store = open_store(own_pg.create_database("gone"))
    store.retry_delays = (0.05, 0.05)
    own_pg.halt("fast")
    try:
        with pytest.raises(StoreUnavailableError, match=r"^state store postgresql://\S+/gone unavailable: "):
            store.workflows()
    finally:
        own_pg.boot()
    assert store.workflows() == []
    store.close()


def test_a_locked_sqlite_file_is_waited_for(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "state.db"
    store = SQLiteStore(str(path), busy_timeout=0.1)
    first = store.submit(NewCampaign("c", "alice", [new_workflow("w", 2)])).workflows[0].first_job_id
    caplog.set_level(logging.WARNING, logger="panray.store.schema")
    with closing(sqlite3.connect(path, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        t, out = _in_thread(lambda: store.apply(_marked(first, 0, "wm#l", 1)))
        _wait_for(lambda: any("database is locked" in r.getMessage() for r in caplog.records), timeout=20,
                  what="the write to find the file locked")
        other.execute("COMMIT")
    t.join(timeout=30)
    assert out == [None]
    assert [h.status for h in store.history(first)] == ["defined"]
    store.close()
