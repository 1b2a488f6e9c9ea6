"""Helpers shared by the test modules (test modules do not import each other)."""

from __future__ import annotations

import importlib.resources
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

import yaml

from panray.core.cluster_core import make_core
from panray.core.workflow_core import CoreSettings, WorkflowCore
from panray.models import Campaign, Workflow
from panray.sites import SiteCatalog, load_catalog, parse_catalog
from panray.store import SubmittedWorkflow, WorkflowSnapshot, planned_snapshot
from panray.submission import build_campaign

T = TypeVar("T")

#: Explicit limits where the shipped catalog says ``auto`` (which follows the machine), as a
#: production catalog states them: tests of those limits read the same figures on every machine.
PRODUCTION_LIMITS: dict[str, dict[str, Any]] = {
    "USDF": {"memory_max_mb": 8000, "max_cores": 8}, "FrDF": {"max_cores": 8}, "UKDF": {"max_cores": 4},
}


def production_catalog() -> SiteCatalog:
    """The shipped catalog with :data:`PRODUCTION_LIMITS` in place of its machine-sized limits."""
    data = yaml.safe_load(importlib.resources.files("panray.configs").joinpath("sites.yaml").read_text())
    for site, limits in PRODUCTION_LIMITS.items():
        data["sites"][site].update(limits)
    return parse_catalog(data, "production sites.yaml")


def wait_for(cond: Callable[[], T], timeout: float = 60.0, what: str = "condition") -> T:
    """Poll a condition with a deadline (observing external state, not standing in for a sync)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def snapshot(wf: Workflow, first_job_id: int = 1) -> WorkflowSnapshot:
    """The snapshot a store would load right after ``wf`` was submitted; no database."""
    [new] = build_campaign(Campaign(name="c", workflows=[wf]), load_catalog()).workflows
    return planned_snapshot(new, SubmittedWorkflow(1, first_job_id, 1))


def core_of(wf: Workflow, settings: CoreSettings | None = None, manager: str = "") -> WorkflowCore:
    """A fresh workflow core (clustered if ``wf`` clusters its quanta) for ``wf``."""
    return make_core(snapshot(wf), settings, manager=manager)
