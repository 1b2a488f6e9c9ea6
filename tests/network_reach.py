"""Who can reach whom under a set of NetworkPolicies: Kubernetes' ingress rules, evaluated.

Covers what the rendered policies use (``matchLabels`` pod and namespace selectors, numeric
ports with ``endPort``); anything else raises rather than being misjudged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Pod:
    name: str
    namespace: str
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def namespace_labels(self) -> dict[str, str]:
        return {"kubernetes.io/metadata.name": self.namespace}


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if set(selector) - {"matchLabels"}:
        raise NotImplementedError(f"selector {selector}")
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _peer_admits(peer: dict[str, Any], source: Pod, target: Pod) -> bool:
    if set(peer) - {"podSelector", "namespaceSelector"}:
        raise NotImplementedError(f"peer {peer}")
    if "namespaceSelector" in peer:
        if not _matches(peer["namespaceSelector"], source.namespace_labels):
            return False
    elif source.namespace != target.namespace:
        return False  # a bare podSelector means pods of the policy's own namespace
    return "podSelector" not in peer or _matches(peer["podSelector"], source.labels)


def _port_admits(ports: list[dict[str, Any]] | None, port: int) -> bool:
    if not ports:
        return True
    for p in ports:
        if p.get("protocol", "TCP") != "TCP" or not isinstance(p["port"], int):
            raise NotImplementedError(f"port {p}")
        if p["port"] == port or p["port"] <= port <= p.get("endPort", p["port"]):
            return True
    return False


def reaches(policies: list[dict[str, Any]], source: Pod, target: Pod, port: int) -> bool:
    """Whether ``source`` may open TCP ``port`` on ``target`` (ingress side only)."""
    selecting = [p for p in policies if p["metadata"]["namespace"] == target.namespace
                 and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
                 and _matches(p["spec"]["podSelector"], target.labels)]
    if not selecting:
        return True  # a pod no policy selects accepts everything
    for policy in selecting:
        for rule in policy["spec"].get("ingress", []):
            peers = rule.get("from")
            if (not peers or any(_peer_admits(peer, source, target) for peer in peers)) \
                    and _port_admits(rule.get("ports"), port):
                return True
    return False
