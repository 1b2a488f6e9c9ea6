"""What every rendered object shares: names, labels, pod security, the image and the settings.

Selectors match ``panray.io/*`` labels, which the renderer puts on the pod templates and no
operator rewrites: CloudNativePG overwrites ``app.kubernetes.io/instance`` and ``component``
on the pods it creates (KubeRay lets the template's win). CNPG's own pods are selected by the
labels CNPG gives them (:mod:`panray.deploy.database`).
"""

from __future__ import annotations

from typing import Any

from panray.deploy.values import Values

INSTALL = "panray.io/install"  #: the install's name, on every pod template
COMPONENT = "panray.io/component"
RAY_NODE = "panray.io/ray-node"  #: on every pod that runs a raylet: head, site workers, server
DB_CLIENT = "panray.io/db-client"  #: on every pod whose processes open the state store
SITE = "panray.io/site"

#: The Ray base image runs as user ``ray`` (uid 1000, group users = 100).
RAY_UID, RAY_GID = 1000, 100

SITES_MOUNT = "/etc/panray/sites"  #: where the sites catalog ConfigMap is mounted
GCP_MOUNT = "/var/run/secrets/panray/gcp"  #: where the Cloud Logging / GCS key Secret is mounted
RAY_TMP = "/tmp/ray"  #: Ray's session directory (sockets, logs)


def labels(values: Values, component: str, **extra: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "panray",
        "app.kubernetes.io/instance": values.name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": "panray-deploy",
        INSTALL: values.name,
        COMPONENT: component,
        **extra,
    }


def selector(values: Values, component: str) -> dict[str, str]:
    """The labels that identify one component's pods of this install."""
    return {INSTALL: values.name, COMPONENT: component}


def metadata(values: Values, name: str, component: str) -> dict[str, Any]:
    return {"name": name, "namespace": values.namespace, "labels": labels(values, component)}


def pod_security() -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": RAY_UID, "runAsGroup": RAY_GID, "fsGroup": RAY_GID,
            "seccompProfile": {"type": "RuntimeDefault"}}


def container_security() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def sites_config_map(values: Values) -> str:
    return f"{values.name}-sites"


def settings_env(values: Values) -> list[dict[str, Any]]:
    """``PANRAY_*`` settings every panray process of the install reads (server, head, workers).

    Ray actors inherit their raylet's environment, so the pilots on a site's workers log and
    upload with the same settings as the server.
    """
    env: list[dict[str, Any]] = [
        {"name": "PANRAY_SITES_FILE", "value": f"{SITES_MOUNT}/sites.yaml"},
        {"name": "PANRAY_HOME", "value": "/home/ray/panray"},
        {"name": "PANRAY_LOG_SINK", "value": values.gcp.log_sink},
        {"name": "PANRAY_LOG_NAME", "value": values.gcp.log_name},
        {"name": "PANRAY_GCP_PROJECT", "value": values.gcp.project},
    ]
    if values.gcp.storage:
        env.append({"name": "PANRAY_STORAGE", "value": values.gcp.storage})
    if values.gcp.credentials_secret:
        env.append({"name": "GOOGLE_APPLICATION_CREDENTIALS", "value": f"{GCP_MOUNT}/{values.gcp.credentials_key}"})
    return env


def settings_volumes(values: Values) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, mounts) for the sites catalog and, if named, the Google key Secret."""
    volumes: list[dict[str, Any]] = [{"name": "sites", "configMap": {"name": sites_config_map(values)}}]
    mounts: list[dict[str, Any]] = [{"name": "sites", "mountPath": SITES_MOUNT, "readOnly": True}]
    if values.gcp.credentials_secret:
        volumes.append({"name": "gcp-key", "secret": {"secretName": values.gcp.credentials_secret}})
        mounts.append({"name": "gcp-key", "mountPath": GCP_MOUNT, "readOnly": True})
    return volumes, mounts
