"""Brings up (or finds) the Ray side of panray: the cluster, brokerage, site queues and pilots.

Embedded mode (no ``ray_address``) starts one raylet carrying every site on 127.0.0.1 (one per
site with ``nodes_per_site``) and records its
address in ``PANRAY_HOME/cluster.json`` so that other panray commands (``panray cancel`` from a
second shell) reach the same cluster while it runs. That cluster runs with Ray's token
authentication (panray.ray_auth): joining it takes the home's 0600 token file as well as the
address. With ``ray_address`` set, panray joins an existing cluster whose nodes carry
``site:<NAME>`` resources, authenticating as Ray's own ``RAY_AUTH_*`` variables say.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from panray import ray_auth
from panray.config import Settings
from panray.exceptions import ConfigError, PanrayError
from panray.home import private_dir, write_private
from panray.sites import SiteCatalog, load_catalog
from panray.sites.topology import loopback_env, site_nodes, start_local_cluster

log = logging.getLogger(__name__)

HEAD_RESOURCE = "node:__internal_head__"  #: the resource Ray puts on its head node

#: Every actor handle this process created or fetched. Ray destroys a non-detached actor once the
#: handles of its creator are gone, so replacing a handle (e.g. after restarting a lost pilot)
#: must not drop the old one.
_HANDLES: list[Any] = []


@dataclass
class Runtime:
    """A connection to panray's Ray cluster and its long-lived actors."""

    settings: Settings
    catalog: SiteCatalog
    cluster: Any = None  #: the embedded Cluster this process owns, if any
    owns_ray: bool = False  #: this runtime called ray.init and must shut it down
    brokerage: Any = None
    queues: dict[str, Any] = field(default_factory=dict)
    pilots: dict[str, list[Any]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)  #: configured sites with no Ray node carrying their resource
    dashboard_url: str | None = None  #: Ray's dashboard (http://host:port), if the cluster runs one

    def shutdown(self) -> None:
        import ray

        if self.cluster is not None and ray.is_initialized():
            self._stop_pilots()
        if self.owns_ray and ray.is_initialized():
            ray.shutdown()
        if self.cluster is not None:
            self.cluster.shutdown()
            self.cluster = None
            try:
                os.unlink(self.settings.home / "cluster.json")
            except FileNotFoundError:
                pass


    def _stop_pilots(self, timeout: float = 10.0) -> None:
        """Let this cluster's pilots close their log sinks (the rest stays in their disk spools)."""
        import ray

        refs = [p.stop.remote() for ps in self.pilots.values() for p in ps]
        if refs:
            ray.wait(refs, num_returns=len(refs), timeout=timeout)


def _cluster_file(settings: Settings) -> Any:
    return settings.home / "cluster.json"


def _running_embedded(settings: Settings) -> str | None:
    """The address of an embedded cluster another panray process runs, if it is alive."""
    path = _cluster_file(settings)
    try:
        info = json.loads(path.read_text())
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError):
        return None
    return str(info["address"])


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in one line when nothing listens at a ``host:port`` address: ray.init would retry for minutes."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in host:
        return  # ray://, auto and other forms: left to Ray
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise PanrayError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None


def connect(settings: Settings, *, start: bool = True, detached: bool = False) -> Runtime:
    """Connect to (or, embedded, start) the cluster and make sure panray's actors run.

    ``start=False`` only joins a cluster that already runs (e.g. for ``panray cancel``).
    """
    loopback_env()
    import ray

    from panray.actors.names import NAMESPACE

    catalog = load_catalog(settings.sites_file)
    _check_payload_user(settings)
    rt = Runtime(settings, catalog)
    address = settings.ray_address or _running_embedded(settings)
    if ray.is_initialized():
        pass
    elif address:
        token = None if settings.ray_address else ray_auth.known_token(settings.home)
        if token is not None:
            ray_auth.use_token(token)
        _check_reachable(address)
        rt.owns_ray = True
        ctx = ray.init(address=address, namespace=NAMESPACE, logging_level=logging.WARNING, log_to_driver=False)
        _cluster_messages_to_stderr()
        rt.dashboard_url = _url(ctx.dashboard_url)
    elif not start:
        raise RuntimeError("no panray cluster is running (start one with `panray serve` or run the workflow)")
    else:
        ray_auth.use_token(ray_auth.new_token(private_dir(settings.home)))
        dashboard = detached if settings.dashboard is None else settings.dashboard  # detached: panray serve
        rt.cluster = start_local_cluster(catalog.names(), settings.embedded_cpus_per_site,
                                         dashboard=dashboard, dashboard_port=settings.dashboard_port,
                                         nodes_per_site=settings.nodes_per_site)
        rt.owns_ray = True
        ctx = ray.init(address=rt.cluster.address, namespace=NAMESPACE, logging_level=logging.WARNING,
                       log_to_driver=False)
        _cluster_messages_to_stderr()
        rt.dashboard_url = _url(ctx.dashboard_url)
        write_private(_cluster_file(settings), json.dumps({"address": rt.cluster.address, "pid": os.getpid()}))
    ensure_actors(rt, detached=detached)
    return rt


def _cluster_messages_to_stderr() -> None:
    """Ray's driver prints the raylet's warnings (e.g. "N PYTHON worker processes have been started")
    on stdout, into the output of ``panray ... --json`` or a user's script; they are diagnostics, so
    they go to stderr. Ray has no option for it: its printer is wrapped once, where it is looked up."""
    from ray._private import worker

    printer = getattr(worker, "print_to_stdstream", None)
    if printer is None or getattr(printer, "panray_stderr", False):
        return

    def to_stderr(data: dict[str, Any], ignore_prefix: bool) -> None:
        printer({**data, "is_err": True}, ignore_prefix)

    to_stderr.panray_stderr = True  # type: ignore[attr-defined]
    worker.print_to_stdstream = to_stderr


def _check_payload_user(settings: Settings) -> None:
    """A bad ``payload_user`` fails here, with one line, rather than in every pilot."""
    if settings.payload_user is None:
        return
    from panray.core.payload_runner import PayloadUser

    try:
        PayloadUser.lookup(settings.payload_user)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _url(address: str | None) -> str | None:
    """Ray reports the dashboard as ``host:port`` (or nothing when it does not run)."""
    return f"http://{address}" if address else None


def control_plane() -> Any:
    """Where brokerage, the supervisor and workflow managers run: the head node, so that losing a
    facility's node does not take the control plane with it.

    The affinity is hard: a soft one let Ray place most zero-CPU actors on other nodes (4 of 12
    on the head of a two-node cluster), so a manager died with a site's node. The head carries
    the cluster's GCS: without it there is no cluster to run on anyway.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    head = next((n["NodeID"] for n in ray.nodes() if n.get("Alive") and HEAD_RESOURCE in n.get("Resources", {})), None)
    if head is None:  # no head resource (not expected with Ray >= 2.4): the driver's node, preferred
        return NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=True)
    return NodeAffinitySchedulingStrategy(node_id=head, soft=False)


def ensure_actors(rt: Runtime, *, detached: bool = False) -> list[str]:
    """Get or create brokerage, one queue per site and the pilots of every site that has nodes.

    Idempotent: call it again when a site's node joins late to start that site's pilots.
    Returns (and keeps in ``rt.missing``) the configured sites that have no node.
    """
    import ray

    from panray.actors.brokerage import Brokerage
    from panray.actors.names import BROKERAGE_NAME, NAMESPACE, SUPERVISOR_NAME, actor
    from panray.actors.site_queue import start_queue
    from panray.actors.supervisor import Supervisor

    opts: dict[str, Any] = {"namespace": NAMESPACE, "get_if_exists": True}
    if detached:
        opts["lifetime"] = "detached"
    rt.brokerage = Brokerage.options(name=BROKERAGE_NAME, scheduling_strategy=control_plane(), **opts).remote(rt.catalog)
    nodes = site_nodes()
    pending = []
    rt.missing = []
    with_nodes: list[str] = []
    for site in rt.catalog:
        if site.name not in nodes:
            log.warning("site %s has no Ray node carrying %s; it gets no pilots", site.name, site.ray_resource)
            rt.missing.append(site.name)
            continue
        rt.queues[site.name] = start_queue(site, metrics=rt.settings.metrics, detached=detached)
        with_nodes.append(site.name)
    # The supervisor owns the pilots: a dead pilot's name is released only once its owner drops
    # the handle, which the supervisor does when it starts the replacement.
    supervisor = Supervisor.options(name=SUPERVISOR_NAME, scheduling_strategy=control_plane(), max_restarts=-1,
                                    **opts).remote(rt.catalog, rt.settings, detached)
    started = ray.get(supervisor.supervise.remote(with_nodes))
    for site, names in started.items():
        rt.pilots[site] = [actor(n) for n in names]
        pending.append(rt.brokerage.register_pilots.remote(site, names))
    _HANDLES.extend([rt.brokerage, supervisor, *rt.queues.values(), *(p for ps in rt.pilots.values() for p in ps)])
    ray.get(pending)
    return rt.missing
