"""Names of panray's actors in Ray's ``panray`` namespace: what operators see in the dashboard.

Examples:
    >>> queue_name("FrDF"), pilot_name("USDF", 3)
    ('site-queue:FrDF', 'pilot:USDF:3')
"""

from __future__ import annotations

import hashlib
from typing import Any


def manager_name(db_url: str, workflow_id: int) -> str:
    """The Ray actor name of a workflow's manager in the ``panray`` namespace.

    Ids are unique per state store only, so the name carries a short digest of the store URL:
    one cluster may serve several stores (tests, staging and production catalogs). The name
    is an address: the actor behind it hosts many workflows (:mod:`panray.actors.manager_pool`).
    """
    return f"{MANAGER_PREFIX}{store_digest(db_url)}:{workflow_id}"


def store_digest(db_url: str) -> str:
    """A short digest of a store URL, in the names of that store's managers."""
    return hashlib.sha1(db_url.encode()).hexdigest()[:8]


def _is_manager_address(name: str) -> bool:
    return name.startswith(MANAGER_PREFIX) and name.rsplit(":", 1)[1].isdigit()


def queue_name(site: str) -> str:
    return f"site-queue:{site}"


def pilot_name(site: str, n: int) -> str:
    return f"pilot:{site}:{n}"


MANAGER_PREFIX = "workflow-manager:"
BROKERAGE_NAME = "brokerage"
SUPERVISOR_NAME = "supervisor"
NAMESPACE = "panray"


def actor(name: str) -> Any | None:
    """The handle of the actor named ``name`` in the ``panray`` namespace now, or None; not cached.

    A workflow manager's address gives the :class:`~panray.actors.manager_pool.ManagerHandle`
    of the actor hosting it."""
    import ray

    if _is_manager_address(name):
        from panray.actors.manager_pool import resolve

        return resolve(name)

    try:
        return ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return None


class Handles:
    """Named actors of the ``panray`` namespace, looked up once and then cached.

    The one way panray finds an actor by name. A cached handle keeps pointing at the actor it
    found, so a pilot restarted under the same name is not mistaken for the lost one until the
    caller :meth:`forget`\\ s it.

    Examples:
        >>> h = Handles()
        >>> h.forget("pilot:USDF:0")  # nothing cached: no-op
    """

    def __init__(self) -> None:
        self._cache: dict[str, Any] = {}

    def get(self, name: str) -> Any | None:
        """The handle of actor ``name``, or None if no actor has that name."""
        handle = self._cache.get(name)
        if handle is None:
            handle = actor(name)
            if handle is not None:
                self._cache[name] = handle
        return handle

    def require(self, name: str) -> Any:
        """Like :meth:`get`, but a missing actor raises ``ValueError`` (Ray's own error)."""
        handle = self.get(name)
        if handle is None:
            raise ValueError(f"no actor {name!r} in namespace {NAMESPACE!r}")
        return handle

    def forget(self, name: str) -> None:
        self._cache.pop(name, None)
