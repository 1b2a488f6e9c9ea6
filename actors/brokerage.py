"""The Brokerage actor: chooses a site for each released job, a batch per call.

The policy is pure (:mod:`panray.sites.brokerage`); this actor only keeps the live picture of
each site (status, queued and running from the site queues, live pilots) fresh enough, and
counts what it has just assigned so a burst is split by shares before queues report back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import ray

from panray.actors.names import actor, queue_name
from panray.sites import Decision, JobRequest, SiteCatalog, SiteLoad, SiteStatus, broker

log = logging.getLogger(__name__)

#: What a manager asks per job: (memory MB, cores, pinned site[, fraction of inputs per site[, site to avoid]]).
Request = (tuple[int, int, str | None] | tuple[int, int, str | None, Mapping[str, float]]
           | tuple[int, int, str | None, Mapping[str, float], str | None])

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
        self.noop_backlog = {s.name: 0.0 for s in catalog}  #: recent no-op assignments, halved per refresh
        self.stats_time = 0.0
        self.seed = seed
        self.calls = 0

    def __repr__(self) -> str:
        """What the dashboard shows: ``Brokerage(3 sites, 9 pilots)``."""
        return f"Brokerage({len(self.pilots)} sites, {sum(map(len, self.pilots.values()))} pilots)"

    async def _refresh(self) -> None:
        if time.monotonic() - self.stats_time < STATS_TTL:
            return
        names = [n for n in self.loads if self.pilots[n]]
        stats = await asyncio.gather(*(_queue_stats(n) for n in names), return_exceptions=True)
        for n, st in zip(names, stats):
            if st is None:  # its node is gone: no live pilots there
                log.warning("site %s: queue lost; it takes no work until its pilots return", n)
                self.pilots[n] = []
                self.loads[n] = [0, 0, 0]
            elif not isinstance(st, BaseException):
                self.loads[n] = list(st)
                self.assigned_since[n] = 0
        for n in self.noop_backlog:
            self.noop_backlog[n] *= 0.5
        self.stats_time = time.monotonic()

    def _site_loads(self, noop: bool) -> list[SiteLoad]:
        """Live loads; for no-op batches a decaying count of recent no-op choices instead.

        No-ops finish inside the pilot's pull, so queue counts say only how fast each pilot
        pulls; levelling the recent no-op choices per unit of share splits them by shares.
        """
        out = []
        for s in self.catalog:
            queued, running, _ = self.loads[s.name]
            if noop:
                queued, running = self.noop_backlog[s.name], 0  # type: ignore[assignment]
            out.append(SiteLoad(
                name=s.name, status=SiteStatus(self.status[s.name]), share=s.drp_share,
                memory_min_mb=s.memory_min_mb, memory_max_mb=s.memory_max_mb, max_cores=s.max_cores,
                live_pilots=len(self.pilots[s.name]), n_running=running,
                n_queued=queued + (0 if noop else self.assigned_since[s.name]), n_assigned=0,
            ))
        return out

    async def broker(self, requests: Sequence[Request], noop: bool = False) -> list[str | None]:
        """Sites for the requests; ``None`` = cannot place now.

        The throttle protects pilot slots; ``noop`` batches (completed in-process by pilots,
        occupying no slot) are split by the same weights but not throttled.
        """
        return [d.site for d in await self._decide(requests, noop, explain=False)]

    async def broker_explained(self, requests: Sequence[Request], noop: bool = False
                               ) -> tuple[list[str | None], list[str]]:
        """As :meth:`broker`, plus each decision as compact JSON (``Decision.to_dict``) to store."""
        decisions = await self._decide(requests, noop, explain=True)
        return [d.site for d in decisions], [_compact(d.to_dict()) for d in decisions]

    async def _decide(self, requests: Sequence[Request], noop: bool, explain: bool) -> list[Decision]:
        await self._refresh()
        jobs = [JobRequest(r[0], r[1], r[2], r[3] if len(r) > 3 else {}, r[4] if len(r) > 4 else None)  # type: ignore[misc]
                for r in requests]
        self.calls += 1
        floor = _UNTHROTTLED if noop else self.floor
        decisions = broker(jobs, self._site_loads(noop), seed=self.seed + self.calls, explain=explain, floor=floor)
        counts = self.noop_backlog if noop else self.assigned_since
        for d in decisions:
            if d.site is not None:
                counts[d.site] += 1
        return decisions

    async def register_pilots(self, site: str, names: list[str]) -> None:
        self.pilots[site] = list(names)

    async def set_status(self, site: str, status: str) -> None:
        """Change what brokerage sends to ``site``; offline closes its queue, whose jobs go back
        to their managers to be brokered elsewhere, and leaving offline opens it again."""
        new = SiteStatus(status)
        self.catalog.get(site)
        old, self.status[site] = self.status[site], new.value
        if (old == SiteStatus.OFFLINE.value) == (new is SiteStatus.OFFLINE) or not self.pilots[site]:
            return
        q = actor(queue_name(site))
        if q is None:  # the site's node is gone: its queue with it
            return
        await (q.close.remote() if new is SiteStatus.OFFLINE else q.open.remote())

    async def idle_sites(self) -> list[str]:
        """Sites without a live pilot: what is queued there waits for nothing."""
        return [n for n, pilots in self.pilots.items() if not pilots]

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


async def _queue_stats(site: str) -> tuple[int, int, int] | None:
    """A site queue's counts, or None when the queue is gone (its node left the cluster)."""
    q = actor(queue_name(site))
    if q is None:
        return None
    try:
        return await q.stats.remote()
    except ray.exceptions.RayActorError:
        return None


_compact = json.JSONEncoder(separators=(",", ":")).encode
