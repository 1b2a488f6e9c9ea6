"""The state store on Kubernetes: a CloudNativePG ``Cluster``, its PgBouncer ``Pooler``, backups.

CNPG generates the application user's credentials into the Secret ``<cluster>-app``; panray
processes get the password from it as ``PGPASSWORD`` (libpq reads it), so ``PANRAY_DB`` is a URL
without a password and no credential ever appears in a manifest or in panray's settings.
"""

from __future__ import annotations

from typing import Any

from panray.deploy.objects import labels, metadata
from panray.deploy.values import Values

PORT = 5432
STATUS_PORT = 8000  #: CNPG's instance manager, polled by the operator
METRICS_PORT, POOLER_METRICS_PORT = 9187, 9127  #: CNPG's exporters on the instances and PgBouncer
DATABASE, POOLER = "database", "pooler"


def cluster_name(values: Values) -> str:
    return f"{values.name}-db"


def pooler_name(values: Values) -> str:
    return f"{cluster_name(values)}-pooler"


def instance_pods(values: Values) -> dict[str, str]:
    """Labels CNPG puts on the PostgreSQL instance pods."""
    return {"cnpg.io/cluster": cluster_name(values), "cnpg.io/podRole": "instance"}


def cluster_pods(values: Values) -> dict[str, str]:
    """Labels CNPG puts on every pod of the cluster: instances, their init/join jobs, the pooler."""
    return {"cnpg.io/cluster": cluster_name(values)}


def pooler_pods(values: Values) -> dict[str, str]:
    """Labels CNPG puts on the PgBouncer pods (it rewrites the template's app.kubernetes.io ones)."""
    return {"cnpg.io/poolerName": pooler_name(values)}


def app_secret(values: Values) -> str:
    """The Secret CNPG creates with the owner's username and password."""
    return f"{cluster_name(values)}-app"


def url(values: Values) -> str:
    """``PANRAY_DB``: through the pooler when there is one, else the primary's ``-rw`` Service."""
    db = values.database
    host = pooler_name(values) if db.pooler.enabled else f"{cluster_name(values)}-rw"
    return f"postgresql://{db.owner}@{host}:{PORT}/{db.database}?sslmode=require"


def client_env(values: Values) -> list[dict[str, Any]]:
    """Environment of every process that opens the store."""
    return [
        {"name": "PANRAY_DB", "value": url(values)},
        {"name": "PGPASSWORD", "valueFrom": {"secretKeyRef": {"name": app_secret(values), "key": "password"}}},
    ]


def cnpg_cluster(values: Values) -> dict[str, Any]:
    db = values.database
    storage: dict[str, Any] = {"size": db.size}
    if db.storage_class:
        storage["storageClass"] = db.storage_class
    spec: dict[str, Any] = {
        "instances": db.instances,
        "primaryUpdateStrategy": "unsupervised",
        "enablePDB": True,  # CNPG's own budgets; a second PDB over the same pods would block evictions
        "storage": storage,
        "resources": db.resources.spec(),
        "inheritedMetadata": {"labels": labels(values, DATABASE)},
        "bootstrap": {"initdb": {"database": db.database, "owner": db.owner}},
        "affinity": {"podAntiAffinityType": "preferred"},
        "postgresql": {"parameters": {"max_connections": str(db.pooler.default_pool_size * 2 + 50)}},
    }
    if db.backup.enabled:
        store: dict[str, Any] = {"destinationPath": db.backup.destination_path}
        if db.backup.google_credentials_secret:
            store["googleCredentials"] = {"applicationCredentials": {
                "name": db.backup.google_credentials_secret, "key": db.backup.google_credentials_key}}
        spec["backup"] = {"barmanObjectStore": store, "retentionPolicy": db.backup.retention}
    return {"apiVersion": "postgresql.cnpg.io/v1", "kind": "Cluster",
            "metadata": metadata(values, cluster_name(values), DATABASE), "spec": spec}


def pooler(values: Values) -> dict[str, Any]:
    p = values.database.pooler
    return {
        "apiVersion": "postgresql.cnpg.io/v1", "kind": "Pooler",
        "metadata": metadata(values, pooler_name(values), POOLER),
        "spec": {
            "cluster": {"name": cluster_name(values)},
            "instances": p.instances,
            "type": "rw",
            "pgbouncer": {"poolMode": p.pool_mode, "parameters": {
                "max_client_conn": str(p.max_client_conn), "default_pool_size": str(p.default_pool_size)}},
            "template": {
                "metadata": {"labels": labels(values, POOLER)},
                "spec": {"containers": [{"name": "pgbouncer", "resources": p.resources.spec()}]},
            },
        },
    }


def scheduled_backup(values: Values) -> dict[str, Any]:
    return {
        "apiVersion": "postgresql.cnpg.io/v1", "kind": "ScheduledBackup",
        "metadata": metadata(values, f"{cluster_name(values)}-daily", DATABASE),
        "spec": {"schedule": values.database.backup.schedule, "backupOwnerReference": "self",
                 "cluster": {"name": cluster_name(values)}, "method": "barmanObjectStore"},
    }


def pooler_budget(values: Values) -> dict[str, Any]:
    """CNPG budgets its instances itself (``enablePDB``) but not the PgBouncer pods."""
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": metadata(values, pooler_name(values), POOLER),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": pooler_pods(values)}}}


def objects(values: Values) -> list[dict[str, Any]]:
    out = [cnpg_cluster(values)]
    if values.database.pooler.enabled:
        out += [pooler(values), pooler_budget(values)]
    if values.database.backup.enabled:
        out.append(scheduled_backup(values))
    return out
