"""Clustering: many quanta per job, so that short quanta do not drown in scheduling.

Rubin's BPS groups the quanta of one or more labels that share dimension values (``isr +
characterizeImage + calibrate`` per ``visit, detector``; all ``makeWarp`` of a ``visit``) into one
job, optionally capped in size; a rule without dimensions puts "N quanta of a label" in a job.
This module is the pure part: a quanta graph and rules (:class:`panray.models.ClusterRule`) in,
clusters and the cluster graph out.
A cluster graph with a cycle cannot run, so such rules are refused, naming the quanta involved.

Examples:
    >>> from panray.dag import build_graph
    >>> g = build_graph(["isr:1", "calib:1", "isr:2", "calib:2", "coadd"],
    ...                 [[], ["isr:1"], [], ["isr:2"], ["calib:1", "calib:2"]])
    >>> labels = ["isr", "calib", "isr", "calib", "coadd"]
    >>> tags = [{"visit": 1}, {"visit": 1}, {"visit": 2}, {"visit": 2}, {}]
    >>> c = cluster_quanta(g, labels, tags, [ClusterRule(name="single", labels=["isr", "calib"], dimensions=["visit"])])
    >>> c.names, c.members, sorted(c.edges)
    (['single:visit=1', 'single:visit=2', 'coadd'], [[0, 1], [2, 3], [4]], [(2, 0), (2, 1)])
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from panray.exceptions import ClusterCycleError, CycleError, DuplicateJobError, WorkflowValidationError
from panray.models import ClusterRule

from .graph import JobGraph

__all__ = ["ClusterRule", "Clustering", "cluster_quanta", "parse_rules"]


@dataclass(slots=True)
class Clustering:
    """Clusters over quanta ``0..n-1``, numbered in the order of their lowest quantum.

    ``members[c]`` lists cluster ``c``'s quanta in dependency order, ``cluster_of[q]`` the
    cluster of quantum ``q``; ``edges`` are ``(child cluster, parent cluster)``, each once; a
    cluster of one unmatched quantum keeps its name and label, a rule's cluster takes the rule's.
    """

    members: list[list[int]]
    cluster_of: array
    names: list[str]
    labels: list[str]
    rules: list[ClusterRule | None]
    edges: list[tuple[int, int]]

    def __len__(self) -> int:
        return len(self.members)


def cluster_quanta(
    graph: JobGraph, labels: Sequence[str], tags: Sequence[Mapping[str, Any]], rules: Sequence[ClusterRule]
) -> Clustering:
    """Group quanta by the first rule naming their label; raise :class:`ClusterCycleError` on a cycle.

    Raises :class:`WorkflowValidationError` for a rule label no quantum has, a quantum lacking a
    rule's dimension, or a cluster name that is also a quantum's name.
    """
    n = len(graph)
    rule_of = {}
    for r, rule in enumerate(rules):
        for label in rule.labels:
            rule_of.setdefault(label, r)
    missing = sorted(set(rule_of) - set(labels))
    if missing:
        raise WorkflowValidationError(f"clustering: no quantum has label {', '.join(map(repr, missing))}")
    rank = array("i", bytes(4 * n))
    for pos, q in enumerate(graph.topological_order()):
        rank[q] = pos
    groups: dict[tuple[int, tuple[Any, ...]], list[int]] = {}
    singles: list[int] = []
    for q in range(n):
        r = rule_of.get(labels[q])
        if r is None:
            singles.append(q)
        else:
            groups.setdefault((r, _key(rules[r], graph.names[q], tags[q])), []).append(q)
    found: list[tuple[list[int], str, str, ClusterRule | None]] = [
        ([q], graph.names[q], labels[q], None) for q in singles
    ]
    for (r, values), qs in groups.items():
        rule = rules[r]
        qs.sort(key=rank.__getitem__)
        size = rule.max_size or len(qs)
        base = rule.name + ":" + ",".join(f"{d}={v}" for d, v in zip(rule.dimensions, values)) if values else rule.name
        chunks = [qs[k : k + size] for k in range(0, len(qs), size)]
        for k, chunk in enumerate(chunks):
            name = f"{base}#{k}" if len(chunks) > 1 or not values else base
            found.append((chunk, name, rule.name, rule))
    found.sort(key=lambda f: min(f[0]))
    cluster_of = array("i", bytes(4 * n))
    for c, (qs, *_) in enumerate(found):
        for q in qs:
            cluster_of[q] = c
    clustering = Clustering(
        [f[0] for f in found], cluster_of, [f[1] for f in found], [f[2] for f in found], [f[3] for f in found],
        _cluster_edges(graph, cluster_of),
    )
    _check_names(clustering)
    _check_acyclic(clustering, graph)
    return clustering


def _key(rule: ClusterRule, quantum: str, tags: Mapping[str, Any]) -> tuple[Any, ...]:
    try:
        values = [tags[d] for d in rule.dimensions]
    except KeyError as exc:
        raise WorkflowValidationError(
            f"clustering rule {rule.name!r}: quantum {quantum!r} has no dimension {exc.args[0]!r} in its tags"
        ) from None
    return tuple(v if isinstance(v, (str, int, float, bool)) else json.dumps(v, sort_keys=True) for v in values)


def _cluster_edges(graph: JobGraph, cluster_of: array) -> list[tuple[int, int]]:
    return list(dict.fromkeys(
        (cluster_of[child], cluster_of[parent])
        for child, parent in graph.edges()
        if cluster_of[child] != cluster_of[parent]
    ))


def _check_names(c: Clustering) -> None:
    """A rule's cluster name must not be taken by a quantum left alone."""
    seen: set[str] = set()
    dupes = [name for name in c.names if name in seen or seen.add(name)]  # type: ignore[func-returns-value]
    if dupes:
        raise DuplicateJobError(dupes)


def _check_acyclic(c: Clustering, graph: JobGraph) -> None:
    """Name one cycle of the cluster graph by its jobs and, per step, one quantum edge causing it."""
    cluster_graph = JobGraph.from_edges(len(c), c.edges, c.names)
    try:
        cluster_graph.topological_order()
    except CycleError as err:
        jobs = err.cycle
        index = {name: k for k, name in enumerate(c.names)}
        steps = [(index[a], index[b]) for a, b in zip(jobs, jobs[1:] + jobs[:1])]
        links = [_witness(c, graph, parent, child) for parent, child in steps]
        raise ClusterCycleError(jobs, links) from None


def _witness(c: Clustering, graph: JobGraph, parent: int, child: int) -> tuple[str, str]:
    """A quantum edge from cluster ``parent`` into cluster ``child``."""
    for q in c.members[child]:
        for p in graph.parents(q):
            if c.cluster_of[p] == parent:
                return graph.names[p], graph.names[q]
    raise AssertionError(f"no quantum edge from cluster {parent} to {child}")


def parse_rules(text: str) -> list[ClusterRule]:
    """Rules from ``NAME=LABEL[+LABEL...][@DIM[,DIM...]][:MAX]``, separated by ``;`` (benchmarks, CLI).

    Examples:
        >>> parse_rules("calib=isr+characterizeImage+calibrate@visit,detector;warp=makeWarp@visit:5")[1]
        ClusterRule(name='warp', labels=['makeWarp'], dimensions=['visit'], max_size=5)
        >>> parse_rules("fp=forcedPhotCcd:20")[0].max_size
        20
    """
    rules = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, eq, rest = part.partition("=")
        rest, colon, size = rest.partition(":")
        label_text, _, dims = rest.partition("@")
        if not eq or not label_text or (colon and not size.isdigit()):
            raise WorkflowValidationError(f"clustering rule {part!r}: expected NAME=LABEL[+LABEL][@DIM,DIM][:MAX]")
        try:
            rules.append(ClusterRule(name=name.strip(), labels=label_text.split("+"),
                                     dimensions=[d for d in dims.split(",") if d], max_size=int(size) if colon else None))
        except ValidationError as exc:
            raise WorkflowValidationError(f"clustering rule {part!r}: {exc.errors()[0]['msg']}") from None
        except WorkflowValidationError as exc:  # the model's own one-line refusal
            raise WorkflowValidationError(f"clustering rule {part!r}: {exc}") from None
    return rules
