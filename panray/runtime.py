"""Brings up (or finds) the Ray side of panray: the cluster, brokerage, site queues and pilots.

Embedded mode (no ``ray_address``) starts one raylet per site on 127.0.0.1 and records its
address in ``PANRAY_HOME/cluster.json`` so that other panray commands (``panray cancel`` from a
second shell) reach the same cluster while it runs. With ``ray_address`` set, panray joins an
existing cluster whose nodes carry ``site:<NAME>`` resources.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from panray.config import Settings
from panray.sites import SiteCatalog, load_catalog
from panray.sites.topology import SITE_PREFIX, loopback_env, site_nodes, start_local_cluster

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

        if self.owns_ray and ray.is_initialized():
            ray.shutdown()
        if self.cluster is not None:
            self.cluster.shutdown()
            self.cluster = None
            try:
                os.unlink(self.settings.home / "cluster.json")
            except FileNotFoundError:
                pass


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


def connect(settings: Settings, *, start: bool = True, detached: bool = False) -> Runtime:
    """Connect to (or, embedded, start) the cluster and make sure panray's actors run.

    ``start=False`` only joins a cluster that already runs (e.g. for ``panray cancel``).
    """
    loopback_env()
    import ray

    from panray.actors.names import NAMESPACE

    catalog = load_catalog(settings.sites_file)
    rt = Runtime(settings, catalog)
    address = settings.ray_address or _running_embedded(settings)
    if ray.is_initialized():
        pass
    elif address:
        rt.owns_ray = True
        ctx = ray.init(address=address, namespace=NAMESPACE, logging_level=logging.WARNING, log_to_driver=False)
        rt.dashboard_url = _url(ctx.dashboard_url)
    elif not start:
        raise RuntimeError("no panray cluster is running (start one with `panray serve` or run the workflow)")
    else:
        settings.home.mkdir(parents=True, exist_ok=True)
        dashboard = detached if settings.dashboard is None else settings.dashboard  # detached: panray serve
        rt.cluster = start_local_cluster(catalog.names(), settings.embedded_cpus_per_site,
                                         dashboard=dashboard, dashboard_port=settings.dashboard_port)
        rt.owns_ray = True
        ctx = ray.init(address=rt.cluster.address, namespace=NAMESPACE, logging_level=logging.WARNING,
                       log_to_driver=False)
        rt.dashboard_url = _url(ctx.dashboard_url)
        _cluster_file(settings).write_text(json.dumps({"address": rt.cluster.address, "pid": os.getpid()}))
    ensure_actors(rt, detached=detached)
    return rt


def _url(address: str | None) -> str | None:
    """Ray reports the dashboard as ``host:port`` (or nothing when it does not run)."""
    return f"http://{address}" if address else None


def control_plane() -> Any:
    """Where brokerage and workflow managers run: the head node, preferred softly, so that
    losing a facility's node does not take the control plane with it."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    head = next((n["NodeID"] for n in ray.nodes() if n.get("Alive") and HEAD_RESOURCE in n.get("Resources", {})),
                ray.get_runtime_context().get_node_id())
    return NodeAffinitySchedulingStrategy(node_id=head, soft=True)


def ensure_actors(rt: Runtime, *, detached: bool = False) -> list[str]:
    """Get or create brokerage, one queue per site and the pilots of every site that has nodes.

    Idempotent: call it again when a site's node joins late to start that site's pilots.
    Returns (and keeps in ``rt.missing``) the configured sites that have no node.
    """
    import ray

    from panray.actors.brokerage import Brokerage
    from panray.actors.names import BROKERAGE_NAME, NAMESPACE, pilot_name, queue_name
    from panray.actors.pilot import Pilot
    from panray.actors.site_queue import SiteQueue

    opts: dict[str, Any] = {"namespace": NAMESPACE, "get_if_exists": True}
    if detached:
        opts["lifetime"] = "detached"
    rt.brokerage = Brokerage.options(name=BROKERAGE_NAME, scheduling_strategy=control_plane(), **opts).remote(rt.catalog)
    nodes = site_nodes()
    logging_cfg = rt.settings.model_dump(mode="json")
    pending = []
    rt.missing = []
    for site in rt.catalog:
        res = {site.ray_resource or SITE_PREFIX + site.name: 1}
        if site.name not in nodes:
            log.warning("site %s has no Ray node carrying %s; it gets no pilots", site.name, res)
            rt.missing.append(site.name)
            continue
        rt.queues[site.name] = SiteQueue.options(name=queue_name(site.name), resources=res, **opts).remote(
            site.name, metrics=rt.settings.metrics)
        names = [pilot_name(site.name, k) for k in range(site.pilots)]
        rt.pilots[site.name] = [
            _live_actor(lambda n=n, res=res, site=site: Pilot.options(name=n, resources=res, **opts).remote(
                n, site.name, site.slots, str(rt.settings.work_dir), logging_cfg
            ))
            for n in names
        ]
        pending.append(rt.brokerage.register_pilots.remote(site.name, names))
    _HANDLES.extend([rt.brokerage, *rt.queues.values(), *(p for ps in rt.pilots.values() for p in ps)])
    ray.get(pending)
    return rt.missing


def _live_actor(make: Any, attempts: int = 40) -> Any:
    """Get or create a named pilot that answers.

    A pilot that just died (killed, node lost) keeps its name until the cluster has processed
    its death, and ``get_if_exists`` hands back the dead handle meanwhile; asking again once the
    name is released starts a fresh pilot.
    """
    import ray

    for _ in range(attempts):
        handle = make()
        try:
            ray.get(handle.ready.remote())
            _HANDLES.append(handle)
            return handle
        except ray.exceptions.RayActorError:
            time.sleep(0.25)
    raise RuntimeError("a pilot kept dying at start")
