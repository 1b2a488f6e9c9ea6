"""Workflows that no manager drives, and how to end them.

An embedded cluster lives only as long as the process that started it: when an embedded
``bps submit`` or ``panray submit`` is interrupted (Ctrl-C, a killed terminal), its workflow
manager dies with it and the store still says the workflow is running. Such a run is an
*orphan*: nothing will move it until it is resumed (``bps restart``, ``panray resume``) or
cancelled. Cancelling an orphan needs no cluster: the workflow's own core, which is Ray-free,
applies the cancel to the stored state in this process, through the same transitions a manager
would make, and the store records them in one batch.
"""

from __future__ import annotations

import time

from panray.config import Settings
from panray.core.cluster_core import make_core
from panray.serve import cluster_owner
from panray.store import StateStore


def driven(settings: Settings) -> bool:
    """Whether some panray process may be driving this home's workflows.

    A server or a cluster named by address may (it cannot be told from here which workflows
    it drives); an embedded cluster does while the process that owns it lives (its
    ``cluster.json`` names that process, and every process that joins it found it there).
    """
    return settings.ray_address is not None or cluster_owner(settings) is not None


def cancel_orphan(store: StateStore, workflow_id: int, now: float | None = None) -> int:
    """Cancel every job not final of a workflow no manager drives; returns how many were cancelled.

    Only for orphans (see :func:`driven`): a live manager would overwrite these rows.
    """
    now = time.time() if now is None else now
    store.set_cancelled(workflow_id, True)
    core = make_core(store.load_workflow(workflow_id))
    core.cancel(now)
    batch = core.drain_changes(now)
    store.apply(batch)
    return sum(1 for j in batch.jobs if j.status == "cancelled")
