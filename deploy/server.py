"""The panray server on Kubernetes: Deployment, Service, optional Ingress, budget, sites ConfigMap.

A server pod holds two containers: ``panray`` (``panray serve``, the image's entrypoint) and a
``ray-node`` sidecar that joins the RayCluster with no CPUs and no site resource. Ray attaches a
driver only to a raylet on its own host, so the server needs a node of its own; the two share
the pod's network and Ray's session directory. The sidecar is a native sidecar (an init
container that keeps running) so the raylet is up before ``panray serve`` connects.

The server listens on the pod's address (``PANRAY_SERVER_HOST=0.0.0.0`` inside the pod);
NetworkPolicies decide who reaches it. Probes hit :data:`panray.health.HEALTH_PATH` and
:data:`panray.health.READY_PATH`.
"""

from __future__ import annotations

from typing import Any

from panray.deploy import database, raycluster
from panray.deploy.objects import (
    DB_CLIENT, RAY_NODE, RAY_TMP, container_security, labels, metadata, pod_security, selector,
    settings_env, settings_volumes, sites_config_map,
)
from panray.deploy.values import Values
from panray.health import HEALTH_PATH, READY_PATH

SERVER = "server"


def server_name(values: Values) -> str:
    return f"{values.name}-server"


def server_env(values: Values) -> list[dict[str, Any]]:
    """Settings only the server reads: where it listens, the cluster, the token issuer."""
    env = [
        {"name": "PANRAY_RAY_ADDRESS", "value": raycluster.head_address(values)},
        {"name": "PANRAY_SERVER_HOST", "value": "0.0.0.0"},
        {"name": "PANRAY_SERVER_PORT", "value": str(values.server.port)},
    ]
    auth = values.server.auth
    for key, value in (("PANRAY_AUTH_JWKS", auth.jwks), ("PANRAY_AUTH_ISSUER", auth.issuer),
                       ("PANRAY_AUTH_AUDIENCE", auth.audience)):
        if value:
            env.append({"name": key, "value": value})
    return env


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period, "timeoutSeconds": 5,
            "failureThreshold": failures}


def _shared_mounts() -> list[dict[str, Any]]:
    return [{"name": "ray-tmp", "mountPath": RAY_TMP}, {"name": "shm", "mountPath": "/dev/shm"}]


def deployment(values: Values) -> dict[str, Any]:
    volumes, mounts = settings_volumes(values)
    image = {"image": values.image.ref, "imagePullPolicy": values.image.pull_policy}
    ray_node = {
        "name": "ray-node", **image, "restartPolicy": "Always",
        "command": raycluster.node_start_args(values),
        # An actor Ray places on this node runs with the raylet's environment: give it panray's.
        "env": [*settings_env(values), *database.client_env(values)],
        "resources": values.server.ray_node_resources.spec(),
        "volumeMounts": [*mounts, *_shared_mounts()],
        "startupProbe": {"tcpSocket": {"port": raycluster.NODE_PORTS["node-manager-port"]},
                         "periodSeconds": 2, "failureThreshold": 60},
        "securityContext": container_security(),
    }
    panray = {
        "name": "panray", **image,
        "env": [*settings_env(values), *database.client_env(values), *server_env(values)],
        "ports": [{"name": "http", "containerPort": values.server.port}],
        "resources": values.server.resources.spec(),
        "volumeMounts": [*mounts, *_shared_mounts(), {"name": "panray-home", "mountPath": "/home/ray/panray"}],
        "startupProbe": _probe(HEALTH_PATH, 2, 90),
        "livenessProbe": _probe(HEALTH_PATH, 10, 3),
        "readinessProbe": _probe(READY_PATH, 5, 3),
        "securityContext": container_security(),
    }
    pod_labels = labels(values, SERVER, **{RAY_NODE: "true", DB_CLIENT: "true"})
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": metadata(values, server_name(values), SERVER),
        "spec": {
            "replicas": values.server.replicas,
            "strategy": {"type": values.server.update_strategy},
            "selector": {"matchLabels": selector(values, SERVER)},
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {
                    "serviceAccountName": server_name(values),
                    "automountServiceAccountToken": False,
                    "securityContext": pod_security(),
                    "initContainers": [ray_node],
                    "containers": [panray],
                    "volumes": [*volumes, {"name": "ray-tmp", "emptyDir": {}},
                                {"name": "shm", "emptyDir": {"medium": "Memory"}},
                                {"name": "panray-home", "emptyDir": {}}],
                },
            },
        },
    }


def service(values: Values) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": metadata(values, server_name(values), SERVER),
            "spec": {"type": "ClusterIP", "selector": selector(values, SERVER),
                     "ports": [{"name": "http", "port": values.server.port, "targetPort": "http"}]}}


def ingress(values: Values) -> dict[str, Any]:
    ing = values.server.ingress
    spec: dict[str, Any] = {"rules": [{"host": ing.host, "http": {"paths": [{
        "path": "/", "pathType": "Prefix",
        "backend": {"service": {"name": server_name(values), "port": {"name": "http"}}}}]}}]}
    if ing.class_name:
        spec["ingressClassName"] = ing.class_name
    if ing.tls_secret:
        spec["tls"] = [{"hosts": [ing.host], "secretName": ing.tls_secret}]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": metadata(values, server_name(values), SERVER), "spec": spec}


def budget(values: Values) -> dict[str, Any]:
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": metadata(values, server_name(values), SERVER),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(values, SERVER)}}}


def service_account(values: Values) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata(values, server_name(values), SERVER),
            "automountServiceAccountToken": False}


def sites_map(values: Values, sites_text: str) -> dict[str, Any]:
    """The site catalog, verbatim (comments kept), for every pod at ``PANRAY_SITES_FILE``."""
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata(values, sites_config_map(values), SERVER),
            "data": {"sites.yaml": sites_text}}


def objects(values: Values, sites_text: str) -> list[dict[str, Any]]:
    out = [sites_map(values, sites_text), service_account(values), deployment(values), service(values),
           budget(values)]
    if values.server.ingress.enabled:
        out.append(ingress(values))
    return out

