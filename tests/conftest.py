"""Shared fixtures."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import pgserver
from panray.store import StateStore, open_store

# ---------------------------------------------------------------------------------------------
# State store fixtures: every store test runs on SQLite and on a throwaway PostgreSQL 15.
# ---------------------------------------------------------------------------------------------


def _pg_cluster() -> Iterator[pgserver.PgServer]:
    """A fresh cluster, removed afterwards. Fails (never skips): PostgreSQL is a supported backend."""
    try:
        server = pgserver.start()
    except pgserver.PgServerError as exc:
        pytest.fail(f"cannot start the test PostgreSQL server:\n{exc}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[pgserver.PgServer]:
    """One PostgreSQL cluster for the session."""
    yield from _pg_cluster()


@pytest.fixture(scope="module")
def own_pg() -> Iterator[pgserver.PgServer]:
    """A cluster of the module's own, for tests that restart or stop it under a run."""
    yield from _pg_cluster()


@pytest.fixture(scope="session")
def pg_url(pg_server: pgserver.PgServer) -> str:
    """``postgresql://postgres@127.0.0.1:PORT/panray_test`` on the session's cluster."""
    return pg_server.create_database("panray_test")


@contextmanager
def fresh_store(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database on ``backend`` ("sqlite" or "postgres"), dropped afterwards."""
    if backend == "sqlite":
        yield f"sqlite://{tmp_path}/state/panray.db"
        return
    server: pgserver.PgServer = request.getfixturevalue("pg_server")
    name = f"panray_{uuid.uuid4().hex[:12]}"
    yield server.create_database(name)
    server.drop_database(name)


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database per test on each backend."""
    with fresh_store(request.param, request, tmp_path) as url:
        yield url


@pytest.fixture
def store(store_url: str) -> Iterator[StateStore]:
    s = open_store(store_url)
    yield s
    s.close()


# ---------------------------------------------------------------------------------------------
# (end of state store fixtures)
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# Ray fixtures: one embedded three-site loopback cluster for the whole session.
# ---------------------------------------------------------------------------------------------

import panray  # noqa: E402  (sets RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER before Ray is imported)
from panray import Panray, Settings  # noqa: E402


#: Ray workers on every node of the clusters tests start import the test helpers (the modules of
#: function jobs, tests/fn_payloads.py) as any installed module: set before a raylet starts.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))

#: Second-scale lifecycle timers so that lost pilots are noticed within a test.
FAST = {"heartbeat_interval": 0.5, "heartbeat_timeout": 4.0, "sent_timeout": 10.0, "memory_tolerance": 1.0,
        "metrics": True}  # the suite exercises the metrics that users turn on


@pytest.fixture(scope="session")
def panray_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("panray-home")


@pytest.fixture(scope="session")
def cluster(panray_home: Path) -> Iterator[Panray]:
    """The session's Panray on SQLite; it owns the three-site Ray cluster the other sessions join."""
    pr = Panray(Settings(home=panray_home, flush_interval=0.05, **FAST))
    pr.runtime
    yield pr
    pr.close()


@contextmanager
def embedded_session(store_url: str, panray_home: Path) -> Iterator[Panray]:
    session = Panray(Settings(home=panray_home, db_url=store_url, flush_interval=0.05, **FAST))
    try:
        yield session
    finally:
        session.close()


@pytest.fixture
def pr(store_url: str, cluster: Panray, panray_home: Path) -> Iterator[Panray]:
    """A Panray session on a fresh state store of each backend, sharing the session's cluster."""
    with embedded_session(store_url, panray_home) as session:
        yield session


# ---------------------------------------------------------------------------------------------
# HTTP server fixtures: the API under a real uvicorn on 127.0.0.1, on the session's cluster.
# ---------------------------------------------------------------------------------------------

from panray.identity import Role  # noqa: E402
from panray.server import SUMMARY_TTL, Authenticator, HttpServer  # noqa: E402
from panray.server.auth import issue_token  # noqa: E402
from panray.service import Service  # noqa: E402


@pytest.fixture(scope="session")
def server_settings(panray_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The server's settings: the session cluster's home (its local signing key), its own SQLite store."""
    db = tmp_path_factory.mktemp("server-store") / "panray.db"
    return Settings(home=panray_home, db_url=f"sqlite://{db}", flush_interval=0.05, **FAST)


@pytest.fixture(scope="session")
def http_server(cluster: Panray, server_settings: Settings) -> Iterator[HttpServer]:
    """``panray serve``'s HTTP API (embedded issuer) on the session's cluster, in this process."""
    service = Service(server_settings, summary_ttl=SUMMARY_TTL)
    http = HttpServer(service, Authenticator(server_settings), port=0).start()
    yield http
    http.stop()
    service.close()


@pytest.fixture
def remote_pr(http_server: HttpServer, server_settings: Settings) -> Iterator[Panray]:
    """A Panray that talks to ``http_server`` as alice, with every role (as the local user has)."""
    token = issue_token(server_settings, "alice", Role, hours=1)
    session = Panray(server_settings, url=http_server.url, token=token)
    yield session
    session.close()


@pytest.fixture(params=["sqlite", "postgres", "remote"])
def pr_or_remote(request: pytest.FixtureRequest, tmp_path: Path, cluster: Panray, panray_home: Path) -> Iterator[Panray]:
    """Each test embedded on both backends, and as a client of a server over HTTP (SQLite behind it)."""
    if request.param == "remote":
        yield request.getfixturevalue("remote_pr")
        return
    with fresh_store(request.param, request, tmp_path) as url, embedded_session(url, panray_home) as session:
        yield session


#: Modules that need the process's Ray to themselves, in the order the session runs them: before
#: (None) and after the tests that share the session's cluster.
_OWN_RAY = ["test_bps", None, "test_sites_cluster", "test_prompt"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """test_bps.py runs first: its module cluster is an embedded panray of its own home (bps finds it
    through PANRAY_HOME), which a process already on the session's Ray would only join.
    test_sites_cluster.py and test_prompt.py run last: each leaves the session's Ray for a cluster
    of its own (the session cluster's actors end when their owner, this process, leaves it)."""
    def rank(item: pytest.Item) -> int:
        name = item.module.__name__ if item.module is not None else None
        return _OWN_RAY.index(name) if name in _OWN_RAY else _OWN_RAY.index(None)

    items.sort(key=rank)
