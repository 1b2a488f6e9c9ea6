"""Error summaries: failed attempts grouped by a normalised message, as operators triage them.

Messages differ by the numbers, ids and paths in them (``file /repo/visit_1234.fits missing``);
replacing those by placeholders folds thousands of distinct diagnostics into the few real causes.

Examples:
    >>> normalise("PSS 523412 kB above request 4000 MB in /scratch/u/job_17/work")
    'PSS <n> kB above request <n> MB in <path>'
    >>> normalise("lost pilot pilot:UKDF:3 (node 0a1b2c3d4e5f)")
    'lost pilot pilot:UKDF:<n> (node <id>)'
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from panray.store import ErrorGroupRow

_RULES = (
    (re.compile(r"(?:[A-Za-z][A-Za-z0-9+.-]*://)?(?:/[^\s/:;,'\"()]+)+/?"), "<path>"),
    (re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b"), "<id>"),
    (re.compile(r"\b(?=[0-9a-fA-F]*[a-fA-F])(?=[0-9a-fA-F]*[0-9])[0-9a-fA-F]{8,}\b"), "<id>"),
    (re.compile(r"(?<![A-Za-z<])[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"), "<n>"),
)


@lru_cache(maxsize=65536)
def normalise(message: str | None) -> str:
    """The message with paths, ids and numbers replaced by ``<path>``, ``<id>``, ``<n>``.

    Cached: a polled error summary sees the same diagnostics again and again."""
    text = (message or "").strip()
    for pattern, placeholder in _RULES:
        text = pattern.sub(placeholder, text)
    return re.sub(r"\s+", " ", text) or "(no diagnostic)"


@dataclass(slots=True)
class ErrorSummary:
    """One line of a workflow's error summary."""

    error_class: str | None
    exit_code: int | None
    message: str  #: normalised
    attempts: int  #: failed attempts with this cause
    example_job_id: int
    example_diag: str | None  #: the diagnostic of the example, as it was


def summarise(groups: Iterable[ErrorGroupRow]) -> list[ErrorSummary]:
    """Fold the store's (class, exit code, diag) groups by normalised message; largest first."""
    merged: dict[tuple[str | None, int | None, str], ErrorSummary] = {}
    for g in groups:
        key = (g.error_class, g.exit_code, normalise(g.diag))
        found = merged.get(key)
        if found is None:
            merged[key] = ErrorSummary(g.error_class, g.exit_code, key[2], g.attempts, g.example_job_id, g.diag)
            continue
        found.attempts += g.attempts
        if g.example_job_id < found.example_job_id:
            found.example_job_id, found.example_diag = g.example_job_id, g.diag
    return sorted(merged.values(), key=lambda s: (-s.attempts, s.message))
