"""panray: workload management for huge scientific DAG workflows on Ray.

Ray reads ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` when it is imported and otherwise binds the
machine's public address; panray's local modes stay on loopback, so it is set here, first.
"""

import os as _os

_os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from panray.api import Panray, WorkflowSummary  # noqa: E402
from panray.config import Settings  # noqa: E402
from panray.exceptions import PanrayError  # noqa: E402
from panray.models import Campaign, ClusterRule, Job, Workflow, load_campaign_file  # noqa: E402

__all__ = ["Campaign", "ClusterRule", "Job", "Panray", "PanrayError", "Settings", "Workflow", "WorkflowSummary",
           "load_campaign_file"]
