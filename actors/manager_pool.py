"""Workflow managers multiplexed onto a bounded pool of manager actors, and how to find them.

A workflow's manager is an address, :func:`~panray.actors.names.manager_name` (what dispatches
carry, where pilots report); the pool decides which actor hosts it: workflow ``w`` of a store
goes to ``workflow-manager:<digest>:pool-<w mod manager_pool>`` (``manager_pool`` 0: an actor
of its own, ``...:wf-<w>``), so a campaign of hundreds of workflows runs in a handful of
processes. A host records each address it takes in Ray's GCS key-value store, so any process
(pilot, site queue, CLI, bps) finds the host without knowing the pool's size, and lists there
what it hosts, so that when Ray restarts it after a crash it takes the same workflows up again
from the stored state.

This module is the one place that knows the layout: callers get a :class:`ManagerHandle`,
which calls the host's methods on behalf of one workflow as a per-workflow actor would.

Examples:
    >>> host_name("sqlite:///x.db", 7, 2)
    'workflow-manager:0c40a481:pool-1'
    >>> host_name("sqlite:///x.db", 7, 0)
    'workflow-manager:0c40a481:wf-7'
"""

from __future__ import annotations

import json
from typing import Any

from panray.actors.names import MANAGER_PREFIX, NAMESPACE, manager_name, store_digest

KV_NAMESPACE = NAMESPACE
_HOSTED = "hosted:"  #: key prefix of a host's list of [workflow_id, started_by]


def host_name(db_url: str, workflow_id: int, pool_size: int) -> str:
    """The actor that hosts a workflow's manager when the service starts it."""
    slot = f"pool-{workflow_id % pool_size}" if pool_size > 0 else f"wf-{workflow_id}"
    return f"{MANAGER_PREFIX}{store_digest(db_url)}:{slot}"


class ManagerHandle:
    """A workflow's manager as its callers know it: ``handle.cancel.remote(task_id)`` calls the
    host's ``cancel(workflow_id, task_id)``. ``actor`` is the host's own handle."""

    def __init__(self, actor: Any, workflow_id: int, host: str):
        self.actor, self.workflow_id, self.host = actor, workflow_id, host

    def __repr__(self) -> str:
        return f"ManagerHandle({self.workflow_id} on {self.host})"

    def __getattr__(self, method: str) -> _Bound:
        if method.startswith("_"):
            raise AttributeError(method)
        return _Bound(getattr(self.actor, method), self.workflow_id)


class _Bound:
    def __init__(self, method: Any, workflow_id: int):
        self._method, self._workflow_id = method, workflow_id

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self._method.remote(self._workflow_id, *args, **kwargs)


def start(settings: Any, workflow_ids: list[int], *, retry: bool = False, by: str = "",
          lifetime: str | None = None) -> dict[int, ManagerHandle]:
    """Host these workflows' managers on their pool actors (started if need be, on the control
    plane), one call per actor; a workflow a live actor already hosts stays there, whatever pool
    size the caller has. Returns once every address is registered."""
    import ray

    from panray.actors.names import actor as named_actor
    from panray.actors.workflow_manager import WorkflowManager
    from panray.runtime import _HANDLES, control_plane

    db_url = settings.resolved_db_url
    by_host: dict[str, list[int]] = {}
    live: dict[str, bool] = {}  #: registered hosts looked up so far: alive?
    for workflow_id in workflow_ids:
        name = host_of(manager_name(db_url, workflow_id))
        if name is not None and name not in live:
            live[name] = named_actor(name) is not None
        if name is None or not live[name]:
            name = host_name(db_url, workflow_id, settings.manager_pool)
        by_host.setdefault(name, []).append(workflow_id)
    where = control_plane() if by_host else None
    handles: dict[int, ManagerHandle] = {}
    calls = []
    for name, ids in by_host.items():
        actor = WorkflowManager.options(
            name=name, namespace=NAMESPACE, get_if_exists=True, lifetime=lifetime,
            scheduling_strategy=where, max_restarts=-1,  # Ray restarts a dead one: it takes its workflows up
        ).remote(name, settings)
        _HANDLES.append(actor)
        calls.append(actor.host.remote(ids, retry, by))
        handles.update((w, ManagerHandle(actor, w, name)) for w in ids)
    ray.get(calls)
    return handles


def find(db_url: str, workflow_id: int) -> ManagerHandle | None:
    """The manager of a workflow of this store, or None when no live actor hosts it."""
    return resolve(manager_name(db_url, workflow_id))


def resolve(address: str) -> ManagerHandle | None:
    """The manager at a workflow's address (``workflow-manager:<digest>:<id>``), or None."""
    from panray.actors.names import actor

    host = host_of(address)
    found = None if host is None else actor(host)
    return None if found is None else ManagerHandle(found, int(address.rsplit(":", 1)[1]), host)


def host_of(address: str) -> str | None:
    """The name of the actor that hosts the manager at ``address``, if one registered it."""
    from ray.experimental.internal_kv import _internal_kv_get

    value = _internal_kv_get(address, namespace=KV_NAMESPACE)
    return None if value is None else value.decode()


def register(host: str, addresses: list[str], hosted: list[tuple[int, str]]) -> None:
    """Called by the host: ``addresses`` are served here from now on, and ``hosted`` is all it serves."""
    from ray.experimental.internal_kv import _internal_kv_put

    _internal_kv_put(_HOSTED + host, json.dumps(hosted), namespace=KV_NAMESPACE)
    for address in addresses:
        _internal_kv_put(address, host, namespace=KV_NAMESPACE)


def hosted(host: str) -> list[tuple[int, str]]:
    """What the host ``host`` served before it was restarted: (workflow_id, who started it)."""
    from ray.experimental.internal_kv import _internal_kv_get

    value = _internal_kv_get(_HOSTED + host, namespace=KV_NAMESPACE)
    return [] if value is None else [(int(w), str(by)) for w, by in json.loads(value)]
