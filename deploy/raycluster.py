"""The Ray side as a KubeRay ``RayCluster``: a control-plane head and one worker group per site.

The head carries no site resource and no CPUs for tasks, so brokerage and the workflow managers
(placed on the head by ``panray.runtime.control_plane``) share it with nothing that runs
payloads. Each catalog site gets its own worker group whose nodes start with
``--resources={"site:<NAME>": N}``: that is how panray's discovery finds a site's nodes, and how
the autoscaler knows which group to grow when a site's pilots wait.

Every port a raylet listens on is pinned (Ray picks random ones otherwise), so that the
NetworkPolicy in :mod:`panray.deploy.network` can name them all.
"""

from __future__ import annotations

import json
import math
from typing import Any

from panray.deploy import database
from panray.deploy.objects import (
    DB_CLIENT, RAY_NODE, SITE, container_security, labels, metadata, pod_security,
    settings_env, settings_volumes,
)
from panray.deploy.values import Resources, SiteGroup, Values
from panray.prompt import INSTRUMENTS
from panray.sites import SiteCatalog, SiteConfig

GCS_PORT, DASHBOARD_PORT, CLIENT_PORT = 6379, 8265, 10001
#: ``ray start`` port options every node (head, site workers, the server's node) gets.
NODE_PORTS = {
    "node-manager-port": 6380,
    "object-manager-port": 6381,
    "runtime-env-agent-port": 6382,
    "dashboard-agent-grpc-port": 6383,
    "dashboard-agent-listen-port": 52365,
    "metrics-export-port": 8080,
    "min-worker-port": 10002,
    "max-worker-port": 10999,
}
HEAD_PORTS = {"port": GCS_PORT, "dashboard-port": DASHBOARD_PORT, "ray-client-server-port": CLIENT_PORT}
HEAD, WORKER = "ray-head", "ray-worker"


def cluster_name(values: Values) -> str:
    return f"{values.name}-ray"


def head_address(values: Values) -> str:
    """The GCS address through the head Service KubeRay creates (``<cluster>-head-svc``)."""
    return f"{cluster_name(values)}-head-svc:{GCS_PORT}"


def group_name(site: str) -> str:
    """Worker group names end up in pod names, which must be lowercase."""
    return f"site-{site.lower()}"


def site_group(values: Values, site: str) -> SiteGroup:
    return values.ray.sites.get(site, values.ray.default_site)


def db_sites(catalog: SiteCatalog) -> list[str]:
    """Sites whose workers open the store: prompt processing records its visits from there."""
    return [s.name for s in catalog if s.prompt_pilots > 0]


def site_actors(site: SiteConfig) -> int:
    """Actors that each hold one unit of the site's resource: its queue and batch pilots, and
    with prompt processing its prompt pilots and, per instrument, a dispatcher and a recorder."""
    prompt = site.prompt_pilots + 2 * len(INSTRUMENTS) if site.prompt_pilots else 0
    return 1 + site.pilots + prompt


def resources_param(resources: dict[str, int]) -> str:
    """``--resources`` as KubeRay wants it: KubeRay pastes it into a shell line, hence the quoting."""
    return '"' + json.dumps(resources).replace('"', '\\"') + '"'


def _start_params(extra: dict[str, int | str]) -> dict[str, str]:
    return {k: str(v) for k, v in {**NODE_PORTS, **extra}.items()}


def _container(values: Values, name: str, resources: Resources, env: list[dict[str, Any]],
               ports: list[dict[str, Any]]) -> dict[str, Any]:
    _, mounts = settings_volumes(values)
    return {
        "name": name,
        "image": values.image.ref,
        "imagePullPolicy": values.image.pull_policy,
        "resources": resources.spec(),
        "env": env,
        "ports": ports,
        "volumeMounts": [*mounts, {"name": "panray-home", "mountPath": "/home/ray/panray"}],
        "securityContext": container_security(),
    }


def _pod(values: Values, pod_labels: dict[str, str], container: dict[str, Any], api_token: bool = False) -> dict[str, Any]:
    """``api_token``: the pod talks to the Kubernetes API (the head's autoscaler sidecar does)."""
    volumes, _ = settings_volumes(values)
    return {
        "metadata": {"labels": pod_labels},
        "spec": {
            "securityContext": pod_security(),
            "automountServiceAccountToken": api_token,
            "containers": [container],
            "volumes": [*volumes, {"name": "panray-home", "emptyDir": {}}],
        },
    }


def _head(values: Values) -> dict[str, Any]:
    env = [*settings_env(values), *database.client_env(values)]
    ports = [{"name": "gcs-server", "containerPort": GCS_PORT}, {"name": "dashboard", "containerPort": DASHBOARD_PORT},
             {"name": "client", "containerPort": CLIENT_PORT},
             {"name": "metrics", "containerPort": NODE_PORTS["metrics-export-port"]}]
    pod_labels = labels(values, HEAD, **{RAY_NODE: "true", DB_CLIENT: "true"})
    return {
        "serviceType": "ClusterIP",  # the dashboard stays inside the cluster: kubectl port-forward
        "rayStartParams": _start_params({**HEAD_PORTS, "num-cpus": 0, "dashboard-host": "0.0.0.0"}),
        "template": _pod(values, pod_labels, _container(values, HEAD, values.ray.head.resources, env, ports),
                         api_token=values.ray.autoscaling),
    }


def _worker(values: Values, site: str, resource: str, opens_store: bool) -> dict[str, Any]:
    group = site_group(values, site)
    env = [*settings_env(values), *(database.client_env(values) if opens_store else [])]
    extra = {SITE: site, RAY_NODE: "true", **({DB_CLIENT: "true"} if opens_store else {})}
    ports = [{"name": "metrics", "containerPort": NODE_PORTS["metrics-export-port"]}]
    return {
        "groupName": group_name(site),
        "replicas": group.replicas,
        "minReplicas": group.min_replicas,
        "maxReplicas": group.max_replicas,
        "rayStartParams": _start_params({
            "num-cpus": math.ceil(_cores(group.resources.cpu)),
            "resources": resources_param({resource: group.site_resource_units}),
        }),
        "template": _pod(values, labels(values, WORKER, **extra),
                         _container(values, WORKER, group.resources, env, ports)),
    }


def _cores(cpu: str) -> float:
    return float(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)


def ray_cluster(values: Values, catalog: SiteCatalog) -> dict[str, Any]:
    prompt_sites = set(db_sites(catalog))
    spec: dict[str, Any] = {
        "rayVersion": values.ray.version,
        "enableInTreeAutoscaling": values.ray.autoscaling,
        "headGroupSpec": _head(values),
        "workerGroupSpecs": [_worker(values, s.name, s.ray_resource, s.name in prompt_sites) for s in catalog],
    }
    if values.ray.autoscaling:
        spec["autoscalerOptions"] = {
            "upscalingMode": "Default",
            "idleTimeoutSeconds": values.ray.idle_timeout_seconds,
            "resources": Resources(cpu="500m", memory="512Mi").spec(),
            "securityContext": container_security(),
        }
    return {"apiVersion": "ray.io/v1", "kind": "RayCluster",
            "metadata": metadata(values, cluster_name(values), "ray"), "spec": spec}


def node_start_args(values: Values) -> list[str]:
    """``ray start`` for the server's own node: the panray server's driver must run on a Ray node
    (Ray connects a driver to a raylet on its own host), one with no CPUs and no site resource."""
    return ["ray", "start", f"--address={head_address(values)}", "--num-cpus=0", "--block",
            *(f"--{k}={v}" for k, v in NODE_PORTS.items())]
