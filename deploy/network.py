"""NetworkPolicies: who may reach what inside the install.

- Every pod of the install, and every pod CNPG creates for its database (instances, jobs,
  PgBouncer), denies ingress unless a policy below admits it.
- Ray's ports (all pinned, see :mod:`panray.deploy.raycluster`) admit only Ray nodes: the head,
  the site workers and the server's own node.
- The pooler admits PostgreSQL only from the pods that open the store (the server, the head
  with its workflow managers, and the workers of sites that run prompt processing); the
  database admits it only from the pooler (or those pods when there is no pooler) and from its
  own pods (replication, the jobs that join a replica), and the CNPG operator's status port
  from its namespace.
- Clients reach only the server's HTTP port (from any namespace, or those listed in values).
- Prometheus, in the namespaces listed as ``monitoring_namespaces``, reaches the metrics ports.

Egress is not restricted: pilots ship logs to Cloud Logging and files to GCS.
"""

from __future__ import annotations

from typing import Any

from panray.deploy import database, raycluster
from panray.deploy.objects import DB_CLIENT, INSTALL, RAY_NODE, metadata, selector
from panray.deploy.server import SERVER
from panray.deploy.values import Values

_NS = "kubernetes.io/metadata.name"


def _policy(values: Values, name: str, pods: dict[str, str], rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": metadata(values, f"{values.name}-{name}", "network"),
        "spec": {"podSelector": {"matchLabels": pods}, "policyTypes": ["Ingress"], "ingress": rules},
    }


def _tcp(*ports: int) -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": p} for p in ports]


def ray_ports() -> list[dict[str, Any]]:
    """Every port a Ray node listens on; the worker processes' range as one ``endPort`` span."""
    fixed = [v for k, v in raycluster.NODE_PORTS.items() if k not in ("min-worker-port", "max-worker-port")]
    span = {"protocol": "TCP", "port": raycluster.NODE_PORTS["min-worker-port"],
            "endPort": raycluster.NODE_PORTS["max-worker-port"]}
    return [*_tcp(*raycluster.HEAD_PORTS.values(), *fixed), span]


def policies(values: Values) -> list[dict[str, Any]]:
    ray_nodes = {INSTALL: values.name, RAY_NODE: "true"}
    db_clients = {"podSelector": {"matchLabels": {INSTALL: values.name, DB_CLIENT: "true"}}}
    own_pods = {"podSelector": {"matchLabels": database.cluster_pods(values)}}
    if values.server.client_namespaces:
        clients = [{"namespaceSelector": {"matchLabels": {_NS: ns}}} for ns in values.server.client_namespaces]
    else:
        clients = [{"namespaceSelector": {}}]
    pg_from = [{"podSelector": {"matchLabels": database.pooler_pods(values)}}] \
        if values.database.pooler.enabled else [db_clients]
    monitoring = [{"namespaceSelector": {"matchLabels": {_NS: ns}}} for ns in values.monitoring_namespaces]

    def scraped(port: int) -> list[dict[str, Any]]:
        return [{"from": monitoring, "ports": _tcp(port)}] if monitoring else []

    out = [
        _policy(values, "default-deny", {INSTALL: values.name}, []),
        _policy(values, "ray", ray_nodes, [{"from": [{"podSelector": {"matchLabels": ray_nodes}}],
                                             "ports": ray_ports()},
                                            *scraped(raycluster.NODE_PORTS["metrics-export-port"])]),
        _policy(values, "server", selector(values, SERVER), [{"from": clients, "ports": _tcp(values.server.port)}]),
        # CNPG's pods carry CNPG's labels, not necessarily the install's: they get their own deny
        _policy(values, "database-default-deny", database.cluster_pods(values), []),
        _policy(values, "database", database.instance_pods(values), [
            {"from": [*pg_from, own_pods], "ports": _tcp(database.PORT)},
            {"from": [{"namespaceSelector": {"matchLabels": {_NS: values.database.operator_namespace}}}],
             "ports": _tcp(database.STATUS_PORT)},
            *scraped(database.METRICS_PORT),
        ]),
    ]
    if values.database.pooler.enabled:
        out.append(_policy(values, "pooler", database.pooler_pods(values),
                           [{"from": [db_clients], "ports": _tcp(database.PORT)},
                            *scraped(database.POOLER_METRICS_PORT)]))
    return out
