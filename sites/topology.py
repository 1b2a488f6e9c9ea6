"""Where sites live in the Ray cluster: one or more nodes carrying a ``site:<NAME>`` resource.

Embedded mode starts one raylet per site on 127.0.0.1 (``ray.cluster_utils.Cluster``) so that
placement is real; production nodes join with
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
                        dashboard_port: int = 8265) -> Any:
    """A Ray cluster of one node per site, all on 127.0.0.1; the caller owns its shutdown.

    Each node carries its ``site:<NAME>`` resource and a ``panray.io/site`` label; with
    ``dashboard`` the head runs Ray's dashboard on 127.0.0.1:``dashboard_port`` (0 = any free port).
    """
    loopback_env()
    from ray.cluster_utils import Cluster

    def node_args(site: str, head: bool) -> dict[str, Any]:
        args: dict[str, Any] = {
            "num_cpus": cpus_per_site,
            "resources": {SITE_PREFIX + site: SITE_UNITS},
            "labels": {SITE_LABEL: site},
            "node_ip_address": "127.0.0.1",
            "object_store_memory": 200 * 1024 * 1024,
        }
        if head:  # Ray's default port moves on to the next free one when taken; others are strict
            port = None if dashboard_port == DEFAULT_DASHBOARD_PORT else dashboard_port
            args.update(include_dashboard=dashboard, dashboard_host="127.0.0.1", dashboard_port=port,
                        _system_config={"metrics_report_interval_ms": METRICS_REPORT_MS})
        return args

    cluster = Cluster(initialize_head=True, head_node_args=node_args(sites[0], True))
    for site in sites[1:]:
        cluster.add_node(**node_args(site, False))
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
