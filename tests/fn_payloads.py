"""Functions that tests run as panray function jobs.

Ray workers import them by name: ``tests/conftest.py`` puts ``tests/`` on the ``PYTHONPATH``
before any raylet starts.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import ray

log = logging.getLogger("fn_payloads")


def measure(visit: int, detector: int, *, band: str = "r") -> dict[str, Any]:
    """Prints a line, logs a record and says where it ran."""
    print(f"measuring visit {visit} detector {detector}")
    log.info("measured %d/%d in %s", visit, detector, band)
    ctx = ray.get_runtime_context()
    return {"visit": visit, "detector": detector, "band": band, "node": ctx.get_node_id(), "task": ctx.get_task_name()}


def flaky(marker: str) -> str:
    """Fails on its first attempt (no marker yet), succeeds on the next."""
    path = Path(marker)
    if not path.exists():
        path.write_text("tried")
        raise RuntimeError("first attempt fails on purpose")
    return "second time lucky"


def sleepy(seconds: float) -> None:
    time.sleep(seconds)
