"""The Brokerage actor: chooses a site for each released job, a batch per call.

The policy is pure (:mod:`panray.sites.brokerage`); this actor only keeps the live picture of
each site (status, queued and running from the site queues, live pilots) fresh enough, and
counts what it has just assigned so a burst is split by shares before queues report back.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import ray

from panray.actors.dispatch import NAMESPACE, queue_name
from panray.sites import JobRequest, SiteCatalog, SiteLoad, broker

STATS_TTL = 0.25
_UNTHROTTLED = 1 << 40


@ray.remote(num_cpus=0)
class Brokerage:
    """Named ``brokerage`` in the ``panray`` namespace."""

    def __init__(self, catalog: SiteCatalog, seed: int = 0):
        self.catalog = catalog
        self.floor = {s.name: max(16, 2 * s.capacity) for s in catalog}
        self.status = {s.name: s.status.value for s in catalog}
        self.pilots: dict[str, list[str]] = {s.name: [] for s in catalog}
        self.loads: dict[str, list[int]] = {s.name: [0, 0, 0] for s in catalog}  # queued, running, pilots
        self.assigned_since = {s.name: 0 for s in catalog}
        self.stats_time = 0.0
        self.seed = seed
        self.calls = 0

    async def _refresh(self) -> None:
        if time.monotonic() - self.stats_time < STATS_TTL:
            return
        names = [n for n in self.loads if self.pilots[n]]
        stats = await asyncio.gather(
            *(ray.get_actor(queue_name(n), namespace=NAMESPACE).stats.remote() for n in names),
            return_exceptions=True,
        )
        for n, st in zip(names, stats):
            if not isinstance(st, BaseException):
                self.loads[n] = list(st)
                self.assigned_since[n] = 0
        self.stats_time = time.monotonic()

    def _site_loads(self) -> list[SiteLoad]:
        out = []
        for s in self.catalog:
            queued, running, _ = self.loads[s.name]
            out.append(SiteLoad(
                name=s.name, status=self.status[s.name], share=s.drp_share,
                memory_min_mb=s.memory_min_mb, memory_max_mb=s.memory_max_mb, max_cores=s.max_cores,
                live_pilots=len(self.pilots[s.name]), n_running=running,
                n_queued=queued + self.assigned_since[s.name], n_assigned=0,
            ))
        return out

    async def broker(self, requests: list[tuple[int, int, str | None]], noop: bool = False) -> list[str | None]:
        """Sites for ``(memory MB, cores, pinned site)`` requests; ``None`` = cannot place now.

        The throttle protects pilot slots; ``noop`` batches (completed in-process by pilots,
        occupying no slot) are split by the same weights but not throttled.
        """
        await self._refresh()
        jobs = [JobRequest(memory_mb=m, cores=c, pinned_site=p, input_sites={}) for m, c, p in requests]
        self.calls += 1
        floor = _UNTHROTTLED if noop else self.floor
        decisions = broker(jobs, self._site_loads(), seed=self.seed + self.calls, floor=floor)
        out = [d.site for d in decisions]
        for s in out:
            if s is not None:
                self.assigned_since[s] += 1
        return out

    async def register_pilots(self, site: str, names: list[str]) -> None:
        self.pilots[site] = list(names)

    async def set_status(self, site: str, status: str) -> None:
        self.status[site] = status

    async def site_names(self) -> list[str]:
        return list(self.status)

    async def pilot_names(self) -> list[str]:
        return [p for names in self.pilots.values() for p in names]

    async def sites(self) -> list[dict[str, Any]]:
        await self._refresh()
        return [
            {"site": n, "status": self.status[n], "pilots": len(self.pilots[n]), "queued": q, "running": r}
            for n, (q, r, _p) in self.loads.items()
        ]
