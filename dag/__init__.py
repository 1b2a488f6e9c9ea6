"""Job graphs of huge workflows: validation, compact storage, dependency release, task grouping.

Pure Python (no Ray, no models): the workflow manager builds a :class:`JobGraph` once per workflow,
drives a :class:`Releaser` as jobs end, and groups jobs into tasks with :func:`partition_tasks`.
:mod:`panray.dag.shapes` makes realistic Rubin-shaped graphs for tests and benchmarks.
"""

from .clustering import ClusterRule, Clustering, cluster_quanta, parse_rules
from .graph import JobGraph, build_graph
from .release import Releaser
from .shapes import DagShape, ci_hsc, drp
from .tasks import partition_tasks

__all__ = [
    "ClusterRule", "Clustering", "DagShape", "JobGraph", "Releaser", "build_graph", "ci_hsc", "cluster_quanta", "drp",
    "parse_rules", "partition_tasks",
]
