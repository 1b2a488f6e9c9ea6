"""Brokerage: choose a site for each released job. Pure functions, no Ray, no store.

The policy, in three steps per job:

1. **Filter** (:func:`candidates`): a pinned job may go only to its pinned site; ``brokeroff`` and
   ``test`` sites take only jobs pinned to them, ``offline`` sites nothing; the job's memory per
   core must lie within the site's range, its cores within the site's maximum, and the site must
   show live pilots. Unpinned jobs skip sites without a DRP share.
2. **Weigh** (:func:`weight`), with ``s`` the site's DRP share (35/40/25)::

       weight = (n_running + s) / (n_queued + n_assigned + s) * (1 + LOCALITY * f)

   - The first factor is PanDA's generic weight ``(nRunning + 1) / (nActivated + nAssigned + 1)``
     with every count measured per unit of share (divide top and bottom by ``s``): a site with
     40% of the share is expected to carry 40% of the load. Work goes where it moves (running)
     rather than where it waits (queued), and choosing the largest weight while counting each
     choice keeps the backlog per unit of share level, so a stream of identical jobs is split by
     share whenever the sites' throughputs are in proportion to their shares. A site that drains
     faster than its share draws more, as in PanDA. Shares matter only for unpinned (DRP) work.
   - PanDA's last factor ``1 / (nAssigned + 1)`` is dropped: it only spreads work within one
     cycle, which :func:`broker` does by counting choices; kept, it would pull the split towards
     the square root of the shares.
   - ``f`` is the fraction of the job's inputs already at the site. With ``LOCALITY = 10`` a site
     holding all of a job's inputs keeps winning until its backlog per unit of share is eleven
     times the others', so locality beats shares unless the local site is badly congested.
3. **Choose** (:func:`broker`): the candidate of largest weight that the throttle still lets
   take work (a system-error retry skips the site that just lost it while another can take
   it); exact ties go to a seeded ``random.Random``. The choice is counted into a local
   copy of the loads before the next job, so one call over 1,000 identical jobs splits them as
   1,000 calls over one job each would.

The throttle (:func:`throttle_allowance`) follows JEDI: a site's queue may hold about
``2 x n_running`` jobs, or ``floor`` while it is idle, so that it can start.

Examples:
    >>> sites = [SiteLoad("USDF", share=0.35, live_pilots=2), SiteLoad("FrDF", share=0.40,
    ...          live_pilots=2), SiteLoad("UKDF", share=0.25, live_pilots=2)]
    >>> decisions = broker([JobRequest()] * 100, sites, floor=100)
    >>> from collections import Counter
    >>> sorted(Counter(d.site for d in decisions).items())
    [('FrDF', 40), ('UKDF', 25), ('USDF', 35)]
    >>> broker([JobRequest(input_sites={"UKDF": 1.0})], sites)[0].site
    'UKDF'
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from panray.sites.catalog import SiteStatus

LOCALITY = 10.0
"""Weight bonus for a site holding all of a job's inputs: the weight is multiplied by 11."""

DEFAULT_FLOOR = 16
"""Queue depth an idle site may reach: twice the packaged catalog's 2 pilots x 4 slots."""

THROTTLED = "throttled"
NO_CANDIDATE = "no candidate site"
LOST_HERE = "just lost this job (system error)"

_PINNED_ONLY = frozenset({SiteStatus.BROKEROFF, SiteStatus.TEST})


@dataclass(slots=True)
class SiteLoad:
    """A site's limits (from the catalog) and its live counts (from the state store)."""

    name: str
    status: SiteStatus = SiteStatus.ONLINE
    share: float = 0.0
    memory_min_mb: int = 0
    memory_max_mb: int = 1_000_000
    max_cores: int = 1_000
    live_pilots: int = 0
    n_running: int = 0  #: sent, starting or running
    n_queued: int = 0  #: activated: in the site queue, waiting for a pilot
    n_assigned: int = 0  #: assigned to the site, not yet activated


@dataclass(slots=True, frozen=True)
class JobRequest:
    """What brokerage needs to know about one job.

    ``memory_mb`` is the whole job's request (BPS ``request_memory``); filters compare
    ``memory_mb / cores`` with the site's per-core range.
    """

    memory_mb: int = 2048
    cores: int = 1
    pinned_site: str | None = None
    input_sites: Mapping[str, float] = field(default_factory=dict)
    avoid_site: str | None = None  #: the site that just lost this job: skipped while another can take it


@dataclass(slots=True)
class Decision:
    """Brokerage's answer for one job.

    ``site`` is None when no site can take the job: ``reason`` then says ``"throttled"`` (try
    again next cycle) or ``"no candidate site"`` (``filtered`` says why for each site).
    ``weights`` (the competing candidates) and ``filtered`` (site -> reason) are kept when
    brokering with ``explain=True``, so ``panray explain JOB`` can show them later.
    """

    site: str | None
    weights: dict[str, float] | None = None
    filtered: dict[str, str] | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A compact JSON-ready form for storage: absent parts are left out."""
        out: dict[str, Any] = {"site": self.site}
        for key, value in (("weights", self.weights), ("filtered", self.filtered),
                           ("reason", self.reason)):
            if value:
                out[key] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Decision:
        return cls(data.get("site"), data.get("weights"), data.get("filtered"), data.get("reason"))


def _filter_reason(job: JobRequest, site: SiteLoad) -> str | None:
    """Why ``site`` cannot take ``job``, or None when it can."""
    pinned = job.pinned_site is not None
    if pinned and job.pinned_site != site.name:
        return f"job is pinned to {job.pinned_site}"
    if site.status is SiteStatus.OFFLINE:
        return "status offline"
    if site.status in _PINNED_ONLY and not pinned:
        return f"status {site.status.value} (takes only pinned jobs)"
    if not pinned and site.share <= 0:
        return "no DRP share (takes only pinned jobs)"
    per_core = job.memory_mb / job.cores
    if per_core > site.memory_max_mb:
        return f"memory {per_core:g} MB/core above max {site.memory_max_mb}"
    if per_core < site.memory_min_mb:
        return f"memory {per_core:g} MB/core below min {site.memory_min_mb}"
    if job.cores > site.max_cores:
        return f"{job.cores} cores above max {site.max_cores}"
    if site.live_pilots <= 0:
        return "no live pilots"
    return None


def candidates(job: JobRequest, sites: Sequence[SiteLoad]) -> tuple[list[str], dict[str, str]]:
    """Sites that may take ``job`` (in the given order), and why each other site may not.

    Memory is compared per core: ``job.memory_mb / job.cores`` must lie within
    ``[site.memory_min_mb, site.memory_max_mb]``, both ends included.

    Examples:
        >>> candidates(JobRequest(memory_mb=18000, cores=2),
        ...            [SiteLoad("A", share=1, memory_max_mb=8000, live_pilots=1)])
        ([], {'A': 'memory 9000 MB/core above max 8000'})
    """
    ok: list[str] = []
    filtered: dict[str, str] = {}
    for site in sites:
        reason = _filter_reason(job, site)
        if reason is None:
            ok.append(site.name)
        else:
            filtered[site.name] = reason
    return ok, filtered


def _occupancy(site: SiteLoad) -> float:
    share = site.share
    if share <= 0:
        return 0.0
    return (site.n_running + share) / (site.n_queued + site.n_assigned + share)


def weight(site: SiteLoad, job: JobRequest) -> float:
    """How much ``site`` is preferred for ``job``; see the module docstring for the formula.

    A site without a share weighs 0 (it takes only pinned jobs, which need no weighing).

    Examples:
        >>> idle = SiteLoad("UKDF", share=0.25, live_pilots=1)
        >>> weight(idle, JobRequest())
        1.0
        >>> weight(idle, JobRequest(input_sites={"UKDF": 1.0}))
        11.0
        >>> round(weight(SiteLoad("UKDF", share=0.25, n_running=10, n_queued=30), JobRequest()), 4)
        0.3388
    """
    return _occupancy(site) * (1.0 + LOCALITY * job.input_sites.get(site.name, 0.0))


def throttle_allowance(site: SiteLoad, floor: int = DEFAULT_FLOOR) -> int:
    """How many more jobs ``site`` may be given now.

    The site's queue (``n_queued + n_assigned``) may hold ``max(2 * n_running, floor)`` jobs:
    JEDI's ``2 x running - queued``, with ``floor`` (say twice the site's pilot slots) so an
    idle site can start. The floor caps the queue, not each call, so repeated brokerage cycles
    do not pile jobs onto a site that runs nothing.

    Examples:
        >>> throttle_allowance(SiteLoad("A", n_running=10, n_queued=15), floor=0)
        5
        >>> throttle_allowance(SiteLoad("A", n_running=0, n_queued=3), floor=16)
        13
    """
    return max(0, max(2 * site.n_running, floor) - site.n_queued - site.n_assigned)


def broker(
    jobs: Sequence[JobRequest],
    sites: Sequence[SiteLoad],
    *,
    seed: int = 0,
    explain: bool = False,
    floor: int | Mapping[str, int] = DEFAULT_FLOOR,
) -> list[Decision]:
    """Choose a site for each job, in order; ``sites`` is not modified.

    Each choice adds one to the chosen site's ``n_assigned`` in a local copy, which lowers its
    weight and its throttle allowance for the next job. ``floor`` (one for all sites, or by
    site name) is passed to :func:`throttle_allowance`. Equal weights are broken by
    ``random.Random(seed)``.
    """
    rng = random.Random(seed)
    loads = {s.name: replace(s) for s in sites}
    floors = floor if isinstance(floor, Mapping) else {s.name: floor for s in sites}
    allowance = {s.name: throttle_allowance(s, floors.get(s.name, DEFAULT_FLOOR)) for s in sites}
    occupancy = {s.name: _occupancy(s) for s in sites}
    filter_cache: dict[tuple[int, int, str | None], tuple[list[str], dict[str, str]]] = {}
    decisions: list[Decision] = []
    for job in jobs:
        key = (job.memory_mb, job.cores, job.pinned_site)
        found = filter_cache.get(key)
        if found is None:
            found = filter_cache[key] = candidates(job, sites)
        names, filtered = found
        if job.avoid_site in names and len(names) > 1:
            names = [n for n in names if n != job.avoid_site]
            filtered = {**filtered, job.avoid_site: LOST_HERE}
        if not names:
            decisions.append(Decision(None, {} if explain else None, dict(filtered), NO_CANDIDATE))
            continue
        weights: dict[str, float] = {}
        throttled: dict[str, str] = {}
        locality = job.input_sites
        for name in names:
            if allowance[name] <= 0:
                if explain:
                    throttled[name] = THROTTLED
                continue
            frac = locality.get(name, 0.0) if locality else 0.0
            weights[name] = occupancy[name] * (1.0 + LOCALITY * frac) if frac else occupancy[name]
        site = _pick(weights, rng)
        if site is not None:
            load = loads[site]
            load.n_assigned += 1
            allowance[site] -= 1
            occupancy[site] = _occupancy(load)
        if explain:
            decisions.append(Decision(site, weights, {**filtered, **throttled} or None,
                                      None if site else THROTTLED))
        else:
            decisions.append(Decision(site, reason=None if site else THROTTLED))
    return decisions


def _pick(weights: Mapping[str, float], rng: random.Random) -> str | None:
    """The name of largest weight; exact ties broken by ``rng``."""
    best: list[str] = []
    top = -1.0
    for name, w in weights.items():
        if w > top:
            top, best = w, [name]
        elif w == top:
            best.append(name)
    if not best:
        return None
    return best[0] if len(best) == 1 else rng.choice(best)


def format_explanation(decision: Decision) -> str:
    """Human text for ``panray explain JOB``: the choice, the weights, the filtered sites.

    Examples:
        >>> print(format_explanation(Decision("FrDF", {"FrDF": 0.4, "USDF": 0.35},
        ...                                   {"UKDF": "no live pilots"})))
        site: FrDF
        candidates (weight, highest first):
          FrDF  0.4  <- chosen
          USDF  0.35
        filtered out:
          UKDF  no live pilots
    """
    lines = [f"site: {decision.site or 'none'}" + (f" ({decision.reason})" if decision.reason else "")]
    names = list(decision.weights or {}) + list(decision.filtered or {})
    width = max((len(n) for n in names), default=0)
    if decision.weights:
        lines.append("candidates (weight, highest first):")
        for name, w in sorted(decision.weights.items(), key=lambda kv: -kv[1]):
            mark = "  <- chosen" if name == decision.site else ""
            lines.append(f"  {name:<{width}}  {w:.4g}{mark}".rstrip())
    elif decision.weights is None and decision.filtered is None:
        lines.append("(no explanation recorded: brokered without explain)")
    if decision.filtered:
        lines.append("filtered out:")
        lines.extend(f"  {name:<{width}}  {why}" for name, why in decision.filtered.items())
    return "\n".join(lines)
