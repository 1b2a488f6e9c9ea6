"""panray: workload management for huge scientific DAG workflows on Ray.

Ray reads ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` when it is imported and otherwise binds the
machine's public address; panray's local modes stay on loopback, so it is set here, first.
The public names load on first use (PEP 562), so ``panray --help`` does not import the store,
the service or Ray.
"""

import os as _os
from importlib import import_module as _import
from typing import TYPE_CHECKING, Any

_os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

#: public name -> the module that defines it
_EXPORTS = {
    "Panray": "panray.api", "WorkflowSummary": "panray.api", "Settings": "panray.config",
    "PanrayError": "panray.exceptions", "Campaign": "panray.models", "ClusterRule": "panray.models",
    "Job": "panray.models", "Workflow": "panray.models", "load_campaign_file": "panray.models",
    "AttemptRow": "panray.store.base", "ErrorGroupRow": "panray.store.base", "HistoryRow": "panray.store.base",
    "JobPage": "panray.store.base", "JobQuery": "panray.store.base", "JobRow": "panray.store.base",
    "TaskRow": "panray.store.base", "WorkflowHandle": "panray.api",
}

if TYPE_CHECKING:
    from panray.api import Panray, WorkflowHandle, WorkflowSummary
    from panray.config import Settings
    from panray.exceptions import PanrayError
    from panray.models import Campaign, ClusterRule, Job, Workflow, load_campaign_file
    from panray.store.base import AttemptRow, ErrorGroupRow, HistoryRow, JobPage, JobQuery, JobRow, TaskRow


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'panray' has no attribute {name!r}")
    value = getattr(_import(module), name)
    globals()[name] = value
    return value


__all__ = sorted(_EXPORTS)
