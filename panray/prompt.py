"""Prompt processing from Python and the CLI: start the USDF pool, notify a visit, read stats.

Arguments are checked here, before any Ray call, so a bad instrument or detector costs nothing
and names the valid range. The work happens in :mod:`panray.actors.prompt_pool` (actors) over
:mod:`panray.core.prompt_core` and :mod:`panray.core.prompt_task` (Ray-free); errors are in
:mod:`panray.exceptions`.

Examples:
    >>> from panray.runtime import connect                      # doctest: +SKIP
    >>> rt = connect(settings)                                  # doctest: +SKIP
    >>> start(settings, catalog=rt.catalog)                     # doctest: +SKIP
    >>> print(format_report(notify(visit=1, detectors=[0, 1]))) # doctest: +SKIP
    >>> print(format_stats(stats()))                            # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from panray.core.prompt_core import INSTRUMENTS, check_detectors
from panray.exceptions import PanrayError, PromptPoolError, UnknownDetectorError, UnknownInstrumentError

if TYPE_CHECKING:
    from panray.core.prompt_core import PilotConfig, TaskConfig
    from panray.core.prompt_task import PromptStats, VisitReport
    from panray.config import Settings
    from panray.sites import SiteCatalog

__all__ = [
    "INSTRUMENTS", "PROMPT_SITE", "PromptPoolError", "UnknownDetectorError", "UnknownInstrumentError",
    "check_detectors", "flush", "format_report", "format_stats", "notify", "notify_async", "start", "stats",
]

PROMPT_SITE = "USDF"
DEFAULT_CALIB_VERSION = "default"


# -- the pool ----------------------------------------------------------------------------------

_handles: dict[tuple[str, str], Any] = {}  # (ray job id, instrument) -> standing task handle
#: Handles of the actors this driver created: Ray ends a non-detached actor when its owner drops it.
_owned: list[Any] = []


def start(
    settings: Settings | None = None,
    *,
    catalog: SiteCatalog | None = None,
    pilots: PilotConfig | None = None,
    tasks: Mapping[str, TaskConfig] | None = None,
    site: str = PROMPT_SITE,
    detached: bool = False,
) -> list[str]:
    """Start (or find) ``site``'s prompt pilots and a standing task per instrument; Ray must be up.

    The pool size is the catalog's ``prompt_pilots`` for ``site``. ``tasks`` configures the
    payload per instrument (default :class:`TaskConfig` for every instrument). Returns the pilot
    names. Calling it again re-binds the standing tasks to the pilots now alive.
    """
    import ray

    from panray.actors.names import NAMESPACE
    from panray.actors.prompt_pool import PromptDispatcher, PromptPilot, prompt_pilot_name, prompt_task_name
    from panray.core.prompt_core import PilotConfig, TaskConfig
    from panray.config import Settings
    from panray.sites import load_catalog

    if not ray.is_initialized():
        raise PromptPoolError("Ray is not connected; call panray.runtime.connect(settings) first")
    settings = settings or Settings.load()
    catalog = catalog or load_catalog(settings.sites_file)
    conf = catalog.get(site)
    if conf.prompt_pilots <= 0:
        raise PromptPoolError(f"site {site} has prompt_pilots = 0 in the site catalog")
    pilots = pilots or PilotConfig(calib_dir=str(settings.home / "calib"), work_dir=str(settings.work_dir / "prompt"))
    opts: dict[str, Any] = {"namespace": NAMESPACE, "get_if_exists": True, "resources": {conf.ray_resource: 1}}
    if detached:
        opts["lifetime"] = "detached"
    names = [prompt_pilot_name(site, k) for k in range(conf.prompt_pilots)]
    handles = [PromptPilot.options(name=n, **opts).remote(n, site, pilots) for n in names]
    ray.get([h.ready.remote() for h in handles])
    wanted = dict(tasks) if tasks is not None else {i: TaskConfig() for i in INSTRUMENTS}
    pending = []
    for instrument, task in wanted.items():
        check_detectors(instrument, ())
        d = PromptDispatcher.options(name=prompt_task_name(instrument), **opts).remote(
            instrument, names, task, settings.resolved_db_url, site
        )
        pending += [d.set_pilots.remote(names), d.configure.remote(task)]
        _owned.append(d)
    ray.get(pending)
    _owned.extend(handles)
    _handles.clear()
    return names


def _task(instrument: str) -> Any:
    import ray

    key = (ray.get_runtime_context().get_job_id(), instrument)
    handle = _handles.get(key)
    if handle is None:
        from panray.actors.names import actor
        from panray.actors.prompt_pool import prompt_task_name

        handle = actor(prompt_task_name(instrument))
        if handle is None:
            raise PromptPoolError(f"no standing prompt task for {instrument}; start the pool with panray.prompt.start()")
        _handles[key] = handle
    return handle


# -- notifications and stats -------------------------------------------------------------------


def notify_async(
    visit: int,
    detectors: Sequence[int] | None = None,
    instrument: str = "LSSTCam",
    calib_version: str = DEFAULT_CALIB_VERSION,
) -> Any:
    """Like :func:`notify` but returns at once with an ``ObjectRef`` to the :class:`VisitReport`."""
    notified = time.time()
    dets = list(range(INSTRUMENTS[instrument])) if detectors is None and instrument in INSTRUMENTS else detectors
    check_detectors(instrument, dets or ())
    if type(visit) is not int or visit < 0:
        raise PanrayError(f"visit must be a non-negative integer, got {visit!r}")
    return _task(instrument).notify.remote(visit, dets, calib_version, notified)


def notify(
    visit: int,
    detectors: Sequence[int] | None = None,
    instrument: str = "LSSTCam",
    calib_version: str = DEFAULT_CALIB_VERSION,
    *,
    timeout: float | None = None,
) -> VisitReport:
    """Wake ``instrument``'s standing task for a visit: one job per detector (default: all).

    Returns when every job has run; recording in the state store follows in the background.

    Examples:
        >>> report = notify(visit=42, detectors=[0, 1, 2])          # doctest: +SKIP
        >>> report.placement                                         # doctest: +SKIP
        {0: 'prompt-pilot:USDF:3', 1: 'prompt-pilot:USDF:0', 2: 'prompt-pilot:USDF:3'}
    """
    import ray

    return ray.get(notify_async(visit, detectors, instrument, calib_version), timeout=timeout)  # type: ignore[no-any-return]


def stats(instrument: str | None = None) -> list[PromptStats]:
    """Counters and latency percentiles of one standing task, or of every one that runs."""
    import ray

    if instrument is not None:
        check_detectors(instrument, ())
        return [ray.get(_task(instrument).stats.remote())]
    out = []
    for name in INSTRUMENTS:
        try:
            out.append(_task(name))
        except PromptPoolError:
            continue
    return list(ray.get([h.stats.remote() for h in out]))


def flush(instrument: str = "LSSTCam", timeout: float = 30.0) -> bool:
    """Wait until every visit notified so far is recorded in the state store."""
    import ray

    return bool(ray.get(_task(instrument).flush.remote(timeout)))


def _ms(p: Any) -> str:
    return "-" if not p.n else f"{p.p50:.2f} / {p.p95:.2f} / {p.p99:.2f}"


def format_stats(rows: Sequence[PromptStats]) -> str:
    """What ``panray prompt stats`` prints."""
    if not rows:
        return "no standing prompt tasks are running"
    lines = []
    for s in rows:
        hit = "-" if s.hits + s.misses == 0 else f"{s.hit_rate:.1%}"
        lines += [
            f"{s.instrument}: {s.visits} visits, {s.jobs} jobs ({s.failed} failed), cache hit rate {hit} "
            f"({s.hits} hits, {s.misses} misses), {s.remapped} re-mapped",
            f"  pilots live: {len(s.live_pilots)}" + (f"; lost: {', '.join(s.lost_pilots)}" if s.lost_pilots else ""),
            "  latency ms (p50 / p95 / p99):",
            f"    notification -> dispatched     {_ms(s.dispatch_ms)}",
            f"    notification -> payload start  {_ms(s.start_ms)}",
            f"    payload end  -> recorded       {_ms(s.record_ms)}" + (f"  ({s.unrecorded} pending)" if s.unrecorded else ""),
        ]
        lines += [f"  record error: {e}" for e in s.record_errors]
    return "\n".join(lines)


def format_report(r: VisitReport) -> str:
    """What ``panray prompt notify`` prints."""
    p = r.start_ms
    text = (f"{r.instrument} visit {r.visit}: {len(r.jobs)} jobs on {len(set(r.placement.values()))} pilots, "
            f"{len(r.failed)} failed, {r.hits} cache hits, {r.misses} misses; "
            f"notification -> payload start p50 {p.p50:.2f} ms, p99 {p.p99:.2f} ms")
    if r.lost_pilots:
        text += f"\n  lost {', '.join(r.lost_pilots)}; re-mapped detectors {', '.join(map(str, r.remapped))}"
    if r.failed:
        text += f"\n  failed detectors: {', '.join(map(str, r.failed))}"
    return text
