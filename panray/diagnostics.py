"""Normalised diagnostics: the cause of a failure without the numbers, ids and paths in its message.

Messages differ by the numbers, ids and paths in them (``file /repo/visit_1234.fits missing``);
replacing those by placeholders folds thousands of distinct diagnostics into the few real causes.
The state store keys its error aggregates by this form (so a domain module, below the store), and
the monitor's error summary shows it.

Examples:
    >>> normalise("PSS 523412 kB above request 4000 MB in /scratch/u/job_17/work")
    'PSS <n> kB above request <n> MB in <path>'
    >>> normalise("lost pilot pilot:UKDF:3 (node 0a1b2c3d4e5f)")
    'lost pilot pilot:UKDF:<n> (node <id>)'
"""

from __future__ import annotations

import re
from functools import lru_cache

MAX_CAUSE = 300  #: characters of a normalised message kept (it is part of an index key)

_RULES = (
    (re.compile(r"(?:[A-Za-z][A-Za-z0-9+.-]*://)?(?:/[^\s/:;,'\"()]+)+/?"), "<path>"),
    (re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b"), "<id>"),
    (re.compile(r"\b(?=[0-9a-fA-F]*[a-fA-F])(?=[0-9a-fA-F]*[0-9])[0-9a-fA-F]{8,}\b"), "<id>"),
    (re.compile(r"(?<![A-Za-z<])[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"), "<n>"),
)
_SPACES = re.compile(r"\s+")


@lru_cache(maxsize=65536)
def normalise(message: str | None) -> str:
    """The message with paths, ids and numbers replaced by ``<path>``, ``<id>``, ``<n>``, at most
    :data:`MAX_CAUSE` characters. Cached: the same diagnostics come again and again."""
    text = (message or "").strip()
    for pattern, placeholder in _RULES:
        text = pattern.sub(placeholder, text)
    return _SPACES.sub(" ", text)[:MAX_CAUSE] or "(no diagnostic)"
