"""Applies a workflow's clustering rules at submission: quanta in, cluster jobs (and quanta rows) out.

A cluster of one quantum is that quantum's own job. A larger cluster becomes one job whose
payload is the cluster runner (:mod:`panray.core.cluster_runner`, spec in :mod:`panray.cluster_format`) with the quanta's own command
lines, environments and in-cluster dependencies; its resource request is the largest of its
quanta's, and all of them must agree on a site pin. A cluster of no-op quanta is a no-op job.
"""

from __future__ import annotations

from dataclasses import dataclass

from panray.cluster_format import CLUSTER_ARGV0, ClusterSpec, QuantumSpec
from panray.dag import Clustering, JobGraph, build_graph, cluster_quanta
from panray.exceptions import WorkflowValidationError
from panray.models import Job, Workflow
from panray.payload import decode_command, encode_command
from panray.store.base import NewQuantum


@dataclass(slots=True)
class ClusteredJobs:
    """The jobs to store in place of the quanta, and what to record about the quanta."""

    jobs: list[Job]
    graph: JobGraph  #: the quanta graph
    labels: list[str]  #: each quantum's label
    clustering: Clustering

    def quanta(self, first_job_idx: int) -> list[NewQuantum]:
        """Quanta rows; cluster ``c`` is the job at ``first_job_idx + c`` (after an init job)."""
        names, labels = self.graph.names, self.labels
        return [
            NewQuantum(q, first_job_idx + c, pos, names[q], labels[q])
            for c, members in enumerate(self.clustering.members)
            for pos, q in enumerate(members)
        ]


def cluster_jobs(wf: Workflow) -> ClusteredJobs:
    """Validate the quanta graph, apply ``wf.clustering`` and build one :class:`Job` per cluster."""
    quanta = list(wf.jobs)
    graph = build_graph([q.name for q in quanta], [q.parents for q in quanta])
    c = cluster_quanta(graph, [q.label for q in quanta], [q.tags for q in quanta], wf.clustering)
    parents: list[list[str]] = [[] for _ in range(len(c))]
    for child, parent in c.edges:
        parents[child].append(c.names[parent])
    jobs = []
    for k, members in enumerate(c.members):
        if c.rules[k] is None:
            jobs.append(quanta[members[0]].model_copy(update={"parents": parents[k]}))
        else:
            jobs.append(_cluster_job(c.names[k], c.labels[k], [quanta[q] for q in members], members, graph,
                                     parents[k]))
    return ClusteredJobs(jobs, graph, [q.label for q in quanta], c)


def _cluster_job(name: str, label: str, members: list[Job], idxs: list[int], graph: JobGraph,
                 parents: list[str]) -> Job:
    pins = {q.site for q in members}
    if len(pins) > 1:
        raise WorkflowValidationError(
            f"cluster {name!r}: its quanta are pinned to different sites "
            f"({', '.join(sorted(str(p) for p in pins))}); pin them alike or cluster them apart"
        )
    calls = [q.name for q in members if q.function is not None]
    if calls:
        raise WorkflowValidationError(
            f"cluster {name!r}: function jobs run as Ray tasks and are not clustered ({', '.join(calls[:3])}); "
            "leave their labels out of the clustering rules"
        )
    first = members[0]
    pos = {q: k for k, q in enumerate(idxs)}
    spec = ClusterSpec(
        quanta=[QuantumSpec(q.name, q.label, decode_command(encode_command(q.command)), dict(q.environment))
                for q in members],
        deps=[[pos[p] for p in graph.parents(q) if p in pos] for q in idxs],
        retry_unless_exit=list(first.retry_unless_exit),
    )
    caps = [q.request_memory_max for q in members if q.request_memory_max]
    return Job(
        name=name, label=label, parents=parents,
        command=None if all(q.command is None for q in members) else [CLUSTER_ARGV0, spec.to_json()],
        request_memory=max(q.request_memory for q in members), request_cpus=max(q.request_cpus for q in members),
        memory_multiplier=first.memory_multiplier, request_memory_max=max(caps) if caps else None,
        max_attempts=max(q.max_attempts for q in members), retry_unless_exit=first.retry_unless_exit,
        site=first.site, queue=first.queue, priority=max(q.priority for q in members),
        inputs=list(dict.fromkeys(d for q in members for d in q.inputs)),
        outputs=list(dict.fromkeys(d for q in members for d in q.outputs)),
        tags={k: v for k, v in first.tags.items() if all(q.tags.get(k) == v for q in members)},
    )
