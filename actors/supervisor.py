"""The Supervisor actor: the thin Ray shell around :class:`SupervisorCore` that heals sites.

Once per liveness interval it pings every pilot it supervises (one outstanding
``incarnation`` call per pilot, so a pilot waiting for its node is not flooded), then carries
out the core's actions: the dead pilot's queue forgets it and gives its reserved jobs back to
their managers, a replacement starts under the same name where the site still has a node (with
the site's queue, should it have been lost with the node), and brokerage learns which pilots
answer.

The supervisor also creates the pilots in the first place: Ray keeps a dead actor's name
until its owner drops the handle, so only the owner can reuse the name at once. Named
``supervisor`` in the ``panray`` namespace; Ray restarts it if it dies, and it then takes
up every site that has nodes again.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import ray

from panray.actors.names import BROKERAGE_NAME, NAMESPACE, actor, pilot_name, queue_name
from panray.actors.site_queue import start_queue
from panray.config import Settings
from panray.core.supervisor_core import DEAD, Answer, SupervisorCore
from panray.sites import SiteCatalog, SiteConfig
from panray.sites.topology import site_nodes

log = logging.getLogger(__name__)

LIVENESS_INTERVAL = 1.0
"""Seconds between two rounds of pings: a lost pilot is replaced within about this long."""

START_TIMEOUT = 300.0
"""Seconds :meth:`Supervisor.supervise` waits for new pilots to answer."""


@ray.remote(num_cpus=0, max_concurrency=4)
class Supervisor:
    """Keeps each site's pilots running; see the module docstring."""

    def __init__(self, catalog: SiteCatalog, settings: Settings, detached: bool = False,
                 interval: float = LIVENESS_INTERVAL):
        self.catalog, self.settings, self.detached, self.interval = catalog, settings, detached, interval
        self.core = SupervisorCore()
        self._lock = threading.Lock()
        self._observed = threading.Condition(self._lock)  #: notified after every round
        self._handles: dict[str, Any] = {}
        self._pings: dict[str, Any] = {}  #: pilot -> its outstanding ``incarnation`` call
        self._stop = threading.Event()
        self._kick = threading.Event()  #: run the next round now
        self.rounds = 0
        self.starts = 0  #: pilots started (first starts and replacements)
        if ray.get_runtime_context().was_current_actor_reconstructed:
            self._add(list(site_nodes()))
        threading.Thread(target=self._loop, name="supervise", daemon=True).start()


    def __repr__(self) -> str:
        """What the Ray dashboard shows for this actor."""
        return f"Supervisor({len(self.catalog)} sites, {len(self._handles)} pilots)"
    def supervise(self, sites: list[str]) -> dict[str, list[str]]:
        """Keep the pilots of these sites running (starting them now), besides those already
        supervised; returns each site's pilots once they all answer."""
        self._add(sites)
        deadline = time.monotonic() + START_TIMEOUT
        with self._observed:
            while True:
                live = {s: sorted(self.core.live.get(s, ())) for s in sites}
                if all(len(live[s]) == self.catalog.get(s).pilots for s in sites):
                    return live
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"pilots did not start within {START_TIMEOUT:.0f} s: {live}")
                self._kick.set()  # the loop thread starts and pings them
                self._observed.wait(left)

    def _add(self, sites: list[str]) -> None:
        with self._lock:
            self.core.add({s: [pilot_name(s, k) for k in range(self.catalog.get(s).pilots)]
                           for s in sites if s in self.catalog})

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"rounds": self.rounds, "starts": self.starts,
                    "live": {site: sorted(names) for site, names in self.core.live.items()}}

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._kick.wait(self.interval)
            self._kick.clear()
            try:
                self._round()
            except Exception:  # the cluster shuts down, or a node is being removed
                log.warning("supervision round failed", exc_info=True)

    def _round(self) -> None:
        with self._lock:
            names = self.core.names()
        answers: dict[str, Answer] = {}
        for name in names:
            if name not in self._pings:
                h = self._handle(name)
                if h is None:
                    answers[name] = DEAD
                    continue
                self._pings[name] = h.incarnation.remote()
        refs = {ref: name for name, ref in self._pings.items()}
        done, _ = ray.wait(list(refs), num_returns=len(refs), timeout=self.interval) if refs else ([], [])
        for ref in done:
            name = refs[ref]
            del self._pings[name]
            try:
                answers[name] = ray.get(ref)
            except ray.exceptions.RayActorError:
                answers[name] = DEAD
                self._handles.pop(name, None)
        with_nodes = self._sites_with_nodes() if DEAD in answers.values() else None
        with self._observed:
            actions = self.core.observe(answers, with_nodes)
            self.rounds += 1
            self._observed.notify_all()
        for site, name, keep in actions.forget:
            if keep is None:
                log.warning("pilot %s at %s lost: its reserved jobs go back to be brokered", name, site)
            queue = actor(queue_name(site))
            if queue is not None:  # else the site's node is gone with its queue
                queue.forget_pilot.remote(name, keep)
        for site in {site for site, _ in actions.start}:
            start_queue(self.catalog.get(site), metrics=self.settings.metrics, detached=self.detached)
        for site, name in actions.start:
            self._start(site, name)
        if actions.views:
            brokerage = actor(BROKERAGE_NAME)
            for site, view in (actions.views.items() if brokerage is not None else ()):
                brokerage.register_pilots.remote(site, view)

    def _sites_with_nodes(self) -> set[str]:
        """Sites with an alive node carrying their resource: where a dead pilot may start again."""
        resources = {r for n in ray.nodes() if n.get("Alive") for r in n.get("Resources", {})}
        return {s.name for s in self.catalog if s.ray_resource in resources}

    def _handle(self, name: str) -> Any:
        """The pilot it started, or (after its own restart) the one it finds under that name."""
        if name not in self._handles and (found := actor(name)) is not None:
            self._handles[name] = found
        return self._handles.get(name)

    def _start(self, site: str, name: str) -> None:
        """A pilot under this name; while a dead one still holds the name, the next round tries again."""
        from panray.actors.pilot import Pilot

        cfg: SiteConfig = self.catalog.get(site)
        opts: dict[str, Any] = {"namespace": NAMESPACE, "get_if_exists": True}
        if self.detached:
            opts["lifetime"] = "detached"
        self._handles[name] = Pilot.options(name=name, resources={cfg.ray_resource: 1}, **opts).remote(
            name, site, cfg.slots, self.settings)
        self.starts += 1
