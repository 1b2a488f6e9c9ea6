"""Site operations: what each facility is doing, and an operator's status changes that outlive restarts.

A status set by hand is written to the state store first and then told to the running
brokerage; every panray process that connects re-applies the stored statuses, so a restarted
cluster keeps a site offline until an operator puts it back online.

Examples:
    >>> from panray import Panray                                   # doctest: +SKIP
    >>> with Panray() as pr:
    ...     set_site_status(pr, "UKDF", "brokeroff")
    ...     [r["status"] for r in site_rows(pr) if r["site"] == "UKDF"]
    ['brokeroff']
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from panray.exceptions import PanrayError
from panray.sites import SiteCatalog, SiteStatus
from panray.store import StateStore

if TYPE_CHECKING:
    from panray.runtime import Runtime


class Operated(Protocol):
    """What site operations need of a session (:class:`panray.Panray` is one); they sit below the API."""

    store: StateStore
    catalog: SiteCatalog

    def running(self) -> Runtime | None:
        """The cluster if one runs; never starts one."""

#: The statuses an operator may set (``test`` belongs to the catalog).
OPERATOR_STATUSES = (SiteStatus.ONLINE, SiteStatus.BROKEROFF, SiteStatus.OFFLINE)


def apply_stored_statuses(store: StateStore, rt: Runtime) -> None:
    """Tell brokerage the statuses operators set, so they survive a restart of the cluster."""
    import ray

    overrides = store.site_statuses()
    ray.get([rt.brokerage.set_status.remote(site, status)
             for site, status in overrides.items() if site in rt.catalog])


def set_site_status(pr: Operated, site: str, status: str) -> bool:
    """Persist ``status`` for ``site`` and apply it to the running brokerage; False if none runs.

    Taking a site offline sends its queued jobs back to their managers, which broker them
    elsewhere; jobs already running there finish there.
    """
    import ray

    pr.catalog.get(site)
    allowed = [s.value for s in OPERATOR_STATUSES]
    if status not in allowed:
        raise PanrayError(f"site status {status!r} is not one of {', '.join(allowed)}")
    pr.store.set_site_status(site, status)
    rt = pr.running()
    if rt is None:
        return False
    ray.get(rt.brokerage.set_status.remote(site, status))
    return True


def site_rows(pr: Operated) -> list[dict[str, Any]]:
    """Per site: status, nodes, live pilots, queued and running (from the cluster, if it runs),
    and finished / failed jobs over all workflows (from the store)."""
    import ray

    counts = pr.store.site_job_counts()
    rt = pr.running()
    live: dict[str, dict[str, Any]] = {}
    nodes: dict[str, list[str]] = {}
    if rt is not None:
        from panray.sites.topology import site_nodes

        live = {r["site"]: r for r in ray.get(rt.brokerage.sites.remote())}
        nodes = site_nodes()
    overrides = pr.store.site_statuses()
    rows = []
    for s in pr.catalog:
        here = live.get(s.name, {})
        done = counts.get(s.name, {})
        rows.append({
            "site": s.name,
            "status": here.get("status") or overrides.get(s.name) or s.status.value,
            "nodes": len(nodes.get(s.name, ())) if rt is not None else None,
            "pilots": here.get("pilots"),
            "queued": here.get("queued"),
            "running": here.get("running"),
            "finished": done.get("finished", 0),
            "failed": done.get("failed", 0),
        })
    return rows
