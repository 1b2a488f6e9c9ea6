"""Placement at submit: refuse (or shrink) a job that no site of the catalog could ever take.

Brokerage filters a job out of a site whose per-core memory range or core limit it misses
(:func:`panray.sites.brokerage.candidates`); a job that every site filters out would stay
``defined`` forever. This check applies the same limits at the door, over every site of the
catalog whatever its status (statuses change, limits do not), or only the pinned site.
With ``placement: clamp`` the request shrinks to the largest site that could take it, with a
warning, instead.

Examples:
    >>> from panray.models import Job
    >>> from panray.sites import load_catalog
    >>> [j] = place([Job(name="merge", label="finalJob", request_cpus=16, request_memory=32768,
    ...                  site="USDF")], load_catalog(), workflow="w", mode="clamp")
    >>> j.request_cpus, j.request_memory
    (8, 32768)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

from panray.exceptions import PlacementError, show
from panray.models import Job
from panray.sites import SiteCatalog, SiteConfig

log = logging.getLogger(__name__)

Mode = Literal["refuse", "clamp"]


def fits(memory_mb: int, cores: int, site: SiteConfig) -> bool:
    """Whether ``site`` could take the request: cores within its max, memory per core within its range."""
    return cores <= site.max_cores and site.memory_min_mb <= memory_mb / cores <= site.memory_max_mb


def _limits(sites: Sequence[SiteConfig]) -> str:
    return "; ".join(f"{s.name} takes {s.memory_min_mb}-{s.memory_max_mb} MB/core, at most {s.max_cores} cores"
                     for s in sites)


def _clamped(memory_mb: int, cores: int, sites: Sequence[SiteConfig]) -> tuple[int, int]:
    """The request shrunk (or raised to a minimum) to fit the site that lets it keep the most."""
    best = (0, 0)
    for s in sites:
        c = min(cores, s.max_cores)
        m = max(min(memory_mb, s.memory_max_mb * c), s.memory_min_mb * c)
        best = max(best, (m, c), key=lambda mc: (mc[1], mc[0]))
    return best


def place(jobs: Sequence[Job], catalog: SiteCatalog, *, workflow: str, mode: Mode = "refuse") -> list[Job]:
    """The jobs, unchanged if every one fits some site, else refused or clamped (see the module docstring).

    Requests are checked once per distinct (memory, cores, pin): a workflow has a handful.
    """
    sites = list(catalog)
    verdicts: dict[tuple[int, int, str | None], tuple[int, int] | None] = {}
    out: list[Job] = []
    refused: list[Job] = []
    for j in jobs:
        key = (j.request_memory, j.request_cpus, j.site)
        if key not in verdicts:
            allowed = [catalog.get(j.site)] if j.site is not None else sites
            ok = any(fits(j.request_memory, j.request_cpus, s) for s in allowed)
            verdicts[key] = None if ok else _clamped(j.request_memory, j.request_cpus, allowed)
        new = verdicts[key]
        if new is None:
            out.append(j)
        elif mode == "clamp":
            log.warning("workflow %s: job %s asks %d MB on %d cores, which no site takes; clamped to %d MB on %d cores",
                        show(workflow), show(j.name), j.request_memory, j.request_cpus, *new)
            out.append(j.model_copy(update={"request_memory": new[0], "request_cpus": new[1]}))
        else:
            refused.append(j)
    if refused:
        j = refused[0]
        allowed = [catalog.get(j.site)] if j.site is not None else sites
        where = f"its pinned site {j.site}" if j.site is not None else "any site"
        more = f" ({len(refused) - 1} more jobs cannot be placed)" if len(refused) > 1 else ""
        raise PlacementError(
            f"job {show(j.name)} asks {j.request_memory} MB on {j.request_cpus} cores "
            f"({j.request_memory / j.request_cpus:g} MB/core), which {where} cannot take: {_limits(allowed)}{more}; "
            "lower the request, or set placement: clamp"
        )
    return out
