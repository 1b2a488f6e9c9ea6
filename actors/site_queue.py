"""A site's queue of activated jobs, from which that site's pilots pull batches.

The logic is the plain class :class:`SiteQueueCore` (tested without Ray); :class:`SiteQueue`
is the thin async actor around it. Pilots pull with :meth:`SiteQueue.acquire`, which waits
for work instead of polling. No-op jobs do not occupy a slot, so one pull can carry a large
batch of them. The queue remembers what each pilot took until the pilot says it ended, so a
pilot that dies gives its reserved jobs back (:meth:`SiteQueue.forget_pilot`) instead of
leaving them `activated` for good, and its slots stop counting as running. Pilots pull under
a key of their name and incarnation (``pilot:UKDF:0#3f2a...``): a dead incarnation's late
pull takes nothing, and its replacement under the same name is told apart.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict, deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import ray

from panray.actors.metrics import QueueMetrics
from panray.actors.names import NAMESPACE, actor, queue_name
from panray.core.messages import Dispatch
from panray.payload import occupies_slot

if TYPE_CHECKING:  # the queue's own process needs no pydantic (the catalog's models): ~0.4 s and 10 MiB each
    from panray.sites import SiteConfig

log = logging.getLogger(__name__)


class SiteQueueCore:
    """FIFO of :class:`Dispatch` with the counters brokerage needs (queued, running)."""

    def __init__(self, site: str, max_batch: int = 1000):
        self.site = site
        self.max_batch = max_batch
        self._jobs: deque[Dispatch] = deque()
        self._held: dict[str, dict[tuple[str, int], Dispatch]] = {}  # pilot key -> taken, not reported ended
        self._gone: set[str] = set()  #: keys of forgotten (dead) pilot incarnations
        self.n_sent = 0

    def put(self, jobs: Iterable[Dispatch]) -> int:
        self._jobs.extend(jobs)
        return len(self._jobs)

    def take(self, pilot: str, slots: int, ended: Iterable[tuple[str, int]] = ()) -> list[Dispatch]:
        """Pop jobs for ``pilot``: up to ``slots`` real payloads plus any no-ops met on the way.

        ``ended`` are the (manager, job_id) the pilot finished since its last pull. A forgotten
        pilot (a dead incarnation whose pull was still waiting) gets nothing.
        """
        if pilot in self._gone:
            return []
        held = self._held.setdefault(pilot, {})
        for key in ended:
            held.pop(key, None)
        out: list[Dispatch] = []
        real = 0
        jobs = self._jobs
        while jobs and real < slots and len(out) < self.max_batch:
            d = jobs.popleft()
            out.append(d)
            if occupies_slot(d.payload):
                real += 1
            held[(d.manager, d.job_id)] = d
        self.n_sent += len(out)
        return out

    def drain(self) -> list[Dispatch]:
        """Take every queued job out (the site goes offline)."""
        gone, self._jobs = list(self._jobs), deque()
        return gone

    def remove(self, *, manager: str | None = None, job_ids: Iterable[int] | None = None) -> list[Dispatch]:
        """Drop queued jobs of a workflow (named by its manager), or only those with given ids.

        Job ids are unique per state store only, so ids always match within their manager
        when one is named (one cluster may serve several stores).
        """
        ids = set(job_ids) if job_ids is not None else None
        keep: deque[Dispatch] = deque()
        gone: list[Dispatch] = []
        for d in self._jobs:
            hit = (manager is None or d.manager == manager) and (ids is None or d.job_id in ids)
            (gone if hit else keep).append(d)
        self._jobs = keep
        return gone

    def forget_pilot(self, name: str, keep: str | None = None) -> list[Dispatch]:
        """Pilot ``name`` died: every incarnation but ``keep`` (the one that answers now, if any)
        is forgotten, its slots no longer count; returns the jobs they took and never reported ended."""
        gone: list[Dispatch] = []
        for key in [k for k in self._held if k.split("#", 1)[0] == name and k != keep]:
            gone.extend(self._held.pop(key).values())
            self._gone.add(key)
        self._gone.discard(keep)  # type: ignore[arg-type]
        return gone

    def stats(self) -> tuple[int, int, int]:
        """(queued, running = held by pilots, live pilots)."""
        return len(self._jobs), sum(len(h) for h in self._held.values()), len(self._held)


@ray.remote(num_cpus=0)
class SiteQueue:
    """Ray actor wrapping :class:`SiteQueueCore`; pilots block in ``acquire`` until work arrives."""

    def __init__(self, site: str, max_batch: int = 1000, metrics: bool = True):
        self._core = SiteQueueCore(site, max_batch)
        self._metrics = QueueMetrics(site) if metrics else None
        self._arrived = asyncio.Event()
        self._closed = False

    def __repr__(self) -> str:
        """What the dashboard shows: ``SiteQueue(FrDF: 1,204 queued)``."""
        return f"SiteQueue({self._core.site}: {self._core.stats()[0]:,} queued)"

    async def put(self, jobs: list[Dispatch]) -> int:
        if self._closed:  # brokered just before the site went offline
            _give_back(jobs)
            return 0
        n = self._core.put(jobs)
        self._arrived.set()
        return n

    async def close(self) -> int:
        """The site went offline: give every queued job back to its manager; returns how many."""
        self._closed = True
        gone = self._core.drain()
        _give_back(gone)
        return len(gone)

    async def open(self) -> None:
        self._closed = False

    async def acquire(self, pilot: str, slots: int, ended: list[tuple[str, int]] | None = None,
                      timeout: float = 1.0) -> list[Dispatch]:
        """Up to ``slots`` real jobs for ``pilot``; waits at most ``timeout`` s when empty.

        ``ended``: (manager, job_id) of the jobs the pilot finished since its last pull.
        """
        out = self._core.take(pilot, slots, ended or ())
        if self._metrics is not None and self._metrics.due():
            self._metrics.record(*self._core.stats()[:2])
        if out or slots <= 0:
            return out
        self._arrived.clear()
        try:
            await asyncio.wait_for(self._arrived.wait(), timeout)
        except asyncio.TimeoutError:
            return []
        return self._core.take(pilot, slots)

    async def remove(self, manager: str | None = None, job_ids: list[int] | None = None) -> list[Dispatch]:
        return self._core.remove(manager=manager, job_ids=job_ids)

    async def forget_pilot(self, name: str, keep: str | None = None) -> int:
        """Pilot ``name`` died: give the jobs it had taken back to their managers; returns how many."""
        gone = self._core.forget_pilot(name, keep)
        _give_back(gone, lost_pilot=name)
        return len(gone)

    async def stats(self) -> tuple[int, int, int]:
        return self._core.stats()


def start_queue(site: SiteConfig, *, metrics: bool, detached: bool = False) -> Any:
    """The queue of ``site`` on one of its nodes, created unless it runs (at start, or when the
    site's node came back after its queue was lost with it)."""
    opts: dict[str, Any] = {"namespace": NAMESPACE, "get_if_exists": True}
    if detached:
        opts["lifetime"] = "detached"
    return SiteQueue.options(name=queue_name(site.name), resources={site.ray_resource: 1}, **opts).remote(
        site.name, metrics=metrics)


def _give_back(jobs: Iterable[Dispatch], lost_pilot: str | None = None) -> None:
    """Send jobs back to their workflows' managers, one call per manager, to be brokered again."""
    by_manager: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for d in jobs:
        by_manager[d.manager].append((d.job_id, d.attempt_nr))
    for name, ids in by_manager.items():
        manager = actor(name)
        if manager is not None:
            manager.rebroker.remote(ids, lost_pilot)
        else:  # the manager is gone; a restarted one re-brokers from the store
            log.warning("manager %s is gone; %d jobs wait for it to restart", name, len(ids))
