"""Test-side login for the web monitor: RS256 tokens signed with a key made here, a FastAPI
dependency that checks them as the server does (signature, audience, expiry), and a real uvicorn
on 127.0.0.1 serving an app from a thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import jwt
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI, HTTPException, Request

AUDIENCE = "panray-monitor"


@dataclass(frozen=True)
class Identity:
    user: str
    roles: frozenset[str]


class TokenIssuer:
    """Signs tokens with a fresh RSA key; :meth:`authorize` is the matching FastAPI dependency."""

    def __init__(self) -> None:
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.public_pem = self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def token(self, user: str, roles: tuple[str, ...] = (), ttl: float = 3600) -> str:
        now = int(time.time())
        claims = {"sub": user, "roles": list(roles), "aud": AUDIENCE, "iat": now, "exp": now + int(ttl)}
        return jwt.encode(claims, self._key, algorithm="RS256")

    def authorize(self, request: Request) -> Identity:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Bearer" or not token:
            raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
        try:
            claims = jwt.decode(token, self.public_pem, algorithms=["RS256"], audience=AUDIENCE)
        except jwt.PyJWTError as exc:
            raise HTTPException(401, f"invalid token: {exc}", headers={"WWW-Authenticate": "Bearer"}) from None
        return Identity(claims["sub"], frozenset(claims.get("roles", ())))


@contextmanager
def serve(app: FastAPI, port: int = 0) -> Iterator[str]:
    """Run ``app`` on 127.0.0.1 (``port`` 0: any free one) until the block ends; yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    [sock] = server.servers[0].sockets
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
