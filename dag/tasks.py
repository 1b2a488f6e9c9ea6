"""Group a workflow's jobs into tasks: one per pipeline label, chunked when a label is large.

PanDA/iDDS split a label's jobs into tasks of at most ~10k-30k jobs so that one task's bookkeeping
stays bounded; chunks are balanced so no tiny trailing task is made.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

__all__ = ["partition_tasks"]


def partition_tasks(
    labels: Sequence[str], chunk_size: int = 10_000
) -> tuple[list[tuple[str, int, int]], list[int]]:
    """Return ``(tasks, task_of_job)``: tasks as ``(label, chunk, n_jobs)`` and each job's task index.

    Tasks follow the labels' order of first appearance. A label with more than ``chunk_size`` jobs
    is split into the fewest chunks of at most ``chunk_size`` jobs, sizes differing by at most one,
    numbered from 0; its jobs fill the chunks in their order in ``labels``.

    Examples:
        >>> partition_tasks(["isr", "calibrate", "isr", "isr", "isr", "isr"], chunk_size=2)
        ([('isr', 0, 2), ('isr', 1, 2), ('isr', 2, 1), ('calibrate', 0, 1)], [0, 3, 0, 1, 1, 2])
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, not {chunk_size}")
    tasks: list[tuple[str, int, int]] = []
    first_task: dict[str, int] = {}
    bounds: dict[str, tuple[int, int, int]] = {}
    for label, n in Counter(labels).items():
        n_chunks = -(-n // chunk_size)
        small, n_big = divmod(n, n_chunks)
        first_task[label] = len(tasks)
        bounds[label] = (small + 1, n_big, small)
        tasks.extend((label, chunk, small + (chunk < n_big)) for chunk in range(n_chunks))
    seen = dict.fromkeys(first_task, 0)
    task_of_job = []
    for label in labels:
        k = seen[label]
        seen[label] = k + 1
        big, n_big, small = bounds[label]
        in_big = n_big * big
        chunk = k // big if k < in_big else n_big + (k - in_big) // small
        task_of_job.append(first_task[label] + chunk)
    return tasks, task_of_job

