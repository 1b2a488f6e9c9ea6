"""panray's server: the authenticated HTTP front door to one :class:`~panray.service.Service`.

``panray serve`` runs :class:`HttpServer` next to the cluster's detached actors; clients use
``Panray(url=..., token=...)`` (:mod:`panray.remote`), the CLI's ``--url/--token`` or the
bps plugin's ``<id>@http://host:port`` run ids.

Examples:
    >>> http = HttpServer(service, Authenticator(settings)).start()   # doctest: +SKIP
    >>> http.url                                                      # doctest: +SKIP
    'http://127.0.0.1:41237'
    >>> http.stop()                                                   # doctest: +SKIP
"""

from __future__ import annotations

import getpass
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import uvicorn

from panray.config import Settings
from panray.exceptions import PanrayError
from panray.identity import Role
from panray.server.app import create_app
from panray.server.auth import Authenticator, issue_token, save_token
from panray.service import Service

__all__ = ["SUMMARY_TTL", "Authenticator", "FrontDoor", "HttpServer", "create_app"]

#: Lifetime of the token ``panray serve`` leaves in the home for its local user.
LOCAL_TOKEN_HOURS = 30 * 24.0
#: Seconds a running workflow's job counts are reused between users polling it (see Service).
SUMMARY_TTL = 1.0

_START_TIMEOUT = 30.0


class HttpServer:
    """uvicorn serving the API in a background thread, on ``server_host:server_port`` (0 = any free port)."""

    def __init__(self, service: Service, authenticator: Authenticator, *, host: str | None = None,
                 port: int | None = None, max_body: int | None = None):
        s = service.settings
        where = (host or s.server_host, s.server_port if port is None else port)
        self._socket = socket.socket(socket.AF_INET6 if ":" in where[0] else socket.AF_INET)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._socket.bind(where)
        except OSError as exc:
            self._socket.close()
            raise PanrayError(f"cannot serve HTTP on {where[0]}:{where[1]} (server_host, server_port): "
                              f"{exc.strerror}") from None
        self.host, self.port = self._socket.getsockname()[:2]
        app = create_app(service, authenticator, max_body=max_body)
        config = uvicorn.Config(app, log_level="warning", timeout_keep_alive=30, access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
                                        name="panray-http", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> HttpServer:
        self._thread.start()
        deadline = time.monotonic() + _START_TIMEOUT
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise PanrayError(f"the HTTP server on {self.url} did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=_START_TIMEOUT)
        self._socket.close()


@dataclass
class FrontDoor:
    """What ``panray serve`` adds to a cluster: a service on it and the HTTP API over that service."""

    service: Service
    http: HttpServer

    @classmethod
    def open(cls, settings: Settings, runtime: Any) -> FrontDoor:
        """Serve ``runtime``'s cluster; embedded issuer: the local user's token goes to the home's token file."""
        service = Service(settings, runtime=runtime, summary_ttl=SUMMARY_TTL)
        try:
            http = HttpServer(service, Authenticator(settings)).start()
        except BaseException:
            service.close()
            raise
        if settings.auth_jwks is None:
            save_token(settings, issue_token(settings, getpass.getuser(), Role, hours=LOCAL_TOKEN_HOURS))
        return cls(service, http)

    @property
    def url(self) -> str:
        return self.http.url

    def close(self) -> None:
        self.http.stop()
        self.service.close()
