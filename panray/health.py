"""Paths of the server's health endpoints, shared by the HTTP server and the Kubernetes probes.

``HEALTH_PATH`` answers while the process is up (liveness); ``READY_PATH`` answers 200 only
when the state store and the Ray cluster are reachable, 503 otherwise (readiness). Both are
served without authentication: kubelet probes carry no token.
"""

from __future__ import annotations

HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"

__all__ = ["HEALTH_PATH", "READY_PATH"]
