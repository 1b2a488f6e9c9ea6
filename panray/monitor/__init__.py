"""The operator's views of panray: plain-text tables for the CLI (:mod:`.tables`) and web pages
(:mod:`.web`, imported on demand: it needs FastAPI) over the same reads.

Examples:
    >>> from panray.monitor import table
    >>> table(["id", "status"], [(1, "running")]).splitlines()[2]
    '1   running'
"""

from panray.monitor.tables import (
    attempts_table,
    job_records,
    jobs_table,
    max_pss_gb,
    quanta_table,
    table,
    to_json,
    workflows_table,
)

__all__ = [
    "attempts_table",
    "job_records",
    "jobs_table",
    "max_pss_gb",
    "quanta_table",
    "table",
    "to_json",
    "workflows_table",
]
