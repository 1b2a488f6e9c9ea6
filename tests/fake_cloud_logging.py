"""A local stand-in for the Cloud Logging REST API, for tests over real HTTP on 127.0.0.1.

It records every ``/v2/entries:write`` body, answers ``/v2/entries:list`` from what it recorded
(``field = value``, ``field >= value``, ``field : text`` joined by AND; enough for the sinks'
queries), and misbehaves on demand: ``fail(503)``, ``hang(delay)`` (answers only after the client
gave up, recording nothing) or ``refuse()`` (stops listening), each for a period or until
``recover()``.

Examples:
    >>> with FakeCloudLogging() as fake:                       # doctest: +SKIP
    ...     fake.fail(503, seconds=10)
    ...     ...  # point a CloudLoggingSink at fake.url
    ...     fake.wait_for(lambda: len(fake.entries()) == 1000, timeout=30)
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_CLAUSE = re.compile(r'^\s*([\w.]+)\s*(>=|<=|=|:)\s*(".*"|\S+)\s*$')


def _field(entry: dict[str, Any], path: str) -> Any:
    value: Any = entry
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _clause_matches(entry: dict[str, Any], clause: str) -> bool:
    match = _CLAUSE.match(clause)
    if match is None:
        raise ValueError(f"unsupported filter clause {clause!r}")
    path, op, raw = match.groups()
    wanted = json.loads(raw) if raw.startswith('"') else raw
    value = _field(entry, path)
    if value is None:
        return False
    if op == ":":
        return str(wanted).lower() in str(value).lower()
    if op == "=":
        return str(value) == str(wanted)
    if path == "timestamp":
        value, wanted = datetime.fromisoformat(value), datetime.fromisoformat(wanted)
    return value >= wanted if op == ">=" else value <= wanted


def matches(entry: dict[str, Any], filter_: str | None) -> bool:
    """Whether ``entry`` passes a conjunction of simple clauses."""
    return not filter_ or all(_clause_matches(entry, c) for c in re.split(r"\s+AND\s+", filter_))


class FakeCloudLogging:
    """Threaded HTTP server on 127.0.0.1 with an ephemeral port that survives refuse/recover."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.bodies: list[dict[str, Any]] = []
        self.body_sizes: list[int] = []
        self.requests: list[tuple[str, str]] = []
        self._mode = "ok"
        self._status = 503
        self._hang_delay = 0.0
        self._timer: threading.Timer | None = None
        self._server: ThreadingHTTPServer | None = None
        self.port = 0
        self._listen()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _listen(self) -> None:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                fake._handle(self, json.loads(body or b"{}"), len(body))

            def do_GET(self) -> None:  # noqa: N802
                fake._handle(self, {}, 0)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()

    def _handle(self, handler: BaseHTTPRequestHandler, body: dict[str, Any], size: int) -> None:
        with self._cond:
            self.requests.append((self._mode, handler.path))
            self._cond.notify_all()
            mode, status, delay = self._mode, self._status, self._hang_delay
        if mode == "hang":
            time.sleep(delay)
            self._reply(handler, 503, {"error": {"code": 503, "message": "hung"}})
        elif mode == "fail":
            self._reply(handler, status, {"error": {"code": status, "message": "injected"}})
        elif handler.path.startswith("/v2/entries:write"):
            with self._cond:
                self.bodies.append(body)
                self.body_sizes.append(size)
                self._cond.notify_all()
            self._reply(handler, 200, {})
        elif handler.path.startswith("/v2/entries:list"):
            self._reply(handler, 200, self._list(body))
        else:
            self._reply(handler, 404, {"error": {"code": 404, "message": handler.path}})

    @staticmethod
    def _reply(handler: BaseHTTPRequestHandler, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
        except OSError:
            pass  # the client gave up (a hang); nothing to tell it

    def _list(self, body: dict[str, Any]) -> dict[str, Any]:
        found = [e for e in self.entries() if matches(e, body.get("filter"))]
        if body.get("orderBy", "").endswith("desc"):
            found.reverse()
        start = int(body.get("pageToken") or 0)
        size = int(body.get("pageSize") or 1000)
        page: dict[str, Any] = {"entries": found[start:start + size]}
        if start + size < len(found):
            page["nextPageToken"] = str(start + size)
        return page

    def entries(self) -> list[dict[str, Any]]:
        """Every recorded entry in arrival order, with the request's logName/resource filled in."""
        with self._cond:
            bodies = list(self.bodies)
        return [{"logName": b.get("logName"), "resource": b.get("resource"), **e}
                for b in bodies for e in b.get("entries", [])]

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Block until ``predicate()`` holds (checked at each request), or ``timeout``."""
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    def _set(self, mode: str, seconds: float | None) -> None:
        with self._cond:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = None
            if mode == "refuse" and self._mode != "refuse":
                self._server.shutdown()
                self._server.server_close()
            elif mode != "refuse" and self._mode == "refuse":
                self._listen()
            self._mode = mode
            if seconds is not None:
                self._timer = threading.Timer(seconds, self.recover)
                self._timer.daemon = True
                self._timer.start()

    def fail(self, status: int = 503, seconds: float | None = None) -> None:
        """Answer every request with ``status`` (for ``seconds``, or until :meth:`recover`)."""
        self._status = status
        self._set("fail", seconds)

    def hang(self, delay: float, seconds: float | None = None) -> None:
        """Hold every request ``delay`` seconds before a 503, recording nothing."""
        self._hang_delay = delay
        self._set("hang", seconds)

    def refuse(self, seconds: float | None = None) -> None:
        """Stop listening: connections are refused until the port listens again."""
        self._set("refuse", seconds)

    def recover(self) -> None:
        """Behave normally again."""
        self._set("ok", None)

    def close(self) -> None:
        self.recover()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeCloudLogging:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
