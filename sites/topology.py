"""Where sites live in the Ray cluster: one or more nodes carrying a ``site:<NAME>`` resource.

Embedded mode starts one raylet on 127.0.0.1 carrying every site's resource (a start of a few
seconds), or with ``nodes_per_site`` one raylet per site (``ray.cluster_utils.Cluster``), for
runs that lose a site's node; placement by site resource is real either way. Production nodes join with
``ray start --address=HEAD:6379 --resources='{"site:FrDF": 1000}'`` and are discovered here.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

SITE_PREFIX = "site:"
SITE_UNITS = 1000  #: each site node offers this many units; a pilot or queue takes one

#: Ray binds the machine's public address unless told otherwise; panray stays on loopback.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def loopback_env() -> None:
    """Keep local Ray on 127.0.0.1, even when ``ray`` was imported before panray."""
    for k, v in LOOPBACK_ENV.items():
        os.environ.setdefault(k, v)
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None and os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0":
        constants.ENABLE_RAY_CLUSTER = False


SITE_LABEL = "panray.io/site"  #: node label naming a node's site in the dashboard's cluster view
#: How often (ms) workers push ``ray.util.metrics`` values to their node's exporter (Ray's default
#: is 10 s); the embedded cluster reports every 2 s so the Metrics view and tests follow a run.
METRICS_REPORT_MS = 2000
DEFAULT_DASHBOARD_PORT = 8265


def start_local_cluster(sites: Sequence[str], cpus_per_site: int = 8, dashboard: bool = False,
                        dashboard_port: int = 8265, nodes_per_site: bool = False) -> Any:
    """A Ray cluster on 127.0.0.1 carrying every site's resource; the caller owns its shutdown.

    By default one raylet carries all of ``sites`` (each raylet costs seconds of start-up and a few
    hundred MiB of agents); with ``nodes_per_site`` each site gets a raylet of its own, so that a
    site's node can be lost alone. Each node carries its ``site:<NAME>`` resources and a
    ``panray.io/site`` label (the sites it carries, joined by ``.``); with ``dashboard`` the head
    runs Ray's dashboard on 127.0.0.1:``dashboard_port`` (0 = any free port).
    """
    loopback_env()
    from ray.cluster_utils import Cluster

    def node_args(group: Sequence[str], head: bool) -> dict[str, Any]:
        args: dict[str, Any] = {
            "num_cpus": cpus_per_site * len(group),
            "resources": {SITE_PREFIX + site: SITE_UNITS for site in group},
            "labels": {SITE_LABEL: ".".join(group)},
            "node_ip_address": "127.0.0.1",
            "object_store_memory": 200 * 1024 * 1024,
        }
        if not dashboard:  # what only the dashboard's views read: its log streams, the autoscaler's status
            args.update(include_log_monitor=False, no_monitor=True)
        if head:  # Ray's default port moves on to the next free one when taken; others are strict
            port = None if dashboard_port == DEFAULT_DASHBOARD_PORT else dashboard_port
            args.update(include_dashboard=dashboard, dashboard_host="127.0.0.1", dashboard_port=port,
                        _system_config={"metrics_report_interval_ms": METRICS_REPORT_MS})
        return args

    groups = [[site] for site in sites] if nodes_per_site else [list(sites)]
    cluster = Cluster(initialize_head=True, head_node_args=node_args(groups[0], True))
    for group in groups[1:]:
        cluster.add_node(**node_args(group, False))
    cluster.wait_for_nodes()
    return cluster


def site_nodes() -> dict[str, list[str]]:
    """Alive nodes per site, from the ``site:<NAME>`` resources they carry."""
    import ray

    out: dict[str, list[str]] = {}
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        for key in node.get("Resources", {}):
            if key.startswith(SITE_PREFIX):
                out.setdefault(key[len(SITE_PREFIX):], []).append(node["NodeID"])
    return out
