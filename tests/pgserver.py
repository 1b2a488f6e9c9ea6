"""A throwaway PostgreSQL 15 cluster for tests: temp directory, loopback port, trust auth, no fsync.

initdb and pg_ctl refuse to run as root, so as root they run as the ``postgres`` user on a
directory handed to it.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psycopg

_BIN_GLOBS = ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/*/bin")


class PgServerError(RuntimeError):
    """The cluster could not be set up; the message carries the commands' output and server log."""


def _find_bindir() -> Path | None:
    for pattern in _BIN_GLOBS:
        for candidate in sorted(glob.glob(pattern), reverse=True):
            if os.access(os.path.join(candidate, "pg_ctl"), os.X_OK):
                return Path(candidate)
    return None


def _bindir() -> Path:
    """The server binaries, installing the distribution's package once if they are missing."""
    found = _find_bindir()
    if found is None and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "postgresql"], capture_output=True, check=False)
        found = _find_bindir()
    if found is None:
        raise PgServerError(f"no PostgreSQL server binaries in {', '.join(_BIN_GLOBS)} (apt-get install postgresql)")
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgServer:
    """One running cluster; ``url(db)`` names a database on it."""

    root: Path
    port: int
    bindir: Path
    as_user: list[str]
    options: str = ""

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _run(self, *argv: str) -> None:
        cmd = [*self.as_user, str(self.bindir / argv[0]), *argv[1:]]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode:
            log = self.log.read_text() if self.log.exists() else "(no server log)"
            raise PgServerError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout}{done.stderr}\n{log}")

    def restart(self, mode: str = "fast") -> None:
        """``pg_ctl restart -m MODE``: every connection is cut, the server is back when this returns."""
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-m", mode, "-w", "-t", "60", "restart")

    def halt(self, mode: str = "fast") -> None:
        """Stop the server, keeping its data for :meth:`boot`."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def boot(self) -> None:
        """Start a halted server again with the options it was first started with."""
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", self.options, "-w", "-t", "60", "start")

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def start() -> PgServer:
    """initdb + pg_ctl start on a fresh temp directory; raises PgServerError with the log on failure."""
    root = Path(tempfile.mkdtemp(prefix="panray-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    sockets = root / "sockets"
    options = (
        f"-c listen_addresses=127.0.0.1 -p {port} -k {sockets} "
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=50"
    )
    server = PgServer(root, port, _bindir(), as_user, options)
    try:
        server._run("initdb", "-D", str(server.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync", "--locale=C")
        os.makedirs(sockets)
        if as_user:
            os.chown(sockets, pwd.getpwnam("postgres").pw_uid, -1)
        server.boot()
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return server
