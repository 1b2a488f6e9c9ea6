"""Keeping every site's pilots alive, free of Ray: liveness answers in, actions out.

Like PanDA's Harvester, the supervisor keeps a site's configured pilots running. Each round it
pings every pilot it knows (a live one answers its incarnation key);
:meth:`SupervisorCore.observe` turns the answers into what to do: forget a pilot that died, or
every older incarnation of one that answers under a new key (the queue gives back the jobs
they had taken, their slots stop counting),
start a replacement under the same name (again each round until one answers: the name of a
just-killed actor is released a moment after its death), and tell brokerage which pilots of a
site answer, so a site whose pilots are all gone takes no work until they return.

No replacement starts while its site has no node: it could never run there, and a pending
actor under the dead pilot's name would hide the death from the managers, whose liveness
checks look pilots up by name (with the site's queue gone with its node, nothing else gives the
lost pilot's jobs back before the heartbeat timeout). The pilot starts once its node is back.

Examples:
    >>> core = SupervisorCore({"UKDF": ["pilot:UKDF:0", "pilot:UKDF:1"]})
    >>> a = core.observe({"pilot:UKDF:0": "pilot:UKDF:0#a", "pilot:UKDF:1": "pilot:UKDF:1#b"})
    >>> a.views
    {'UKDF': ['pilot:UKDF:0', 'pilot:UKDF:1']}
    >>> a = core.observe({"pilot:UKDF:0": DEAD, "pilot:UKDF:1": "pilot:UKDF:1#b"})
    >>> a.forget, a.start, a.views
    ([('UKDF', 'pilot:UKDF:0', None)], [('UKDF', 'pilot:UKDF:0')], {'UKDF': ['pilot:UKDF:1']})
    >>> core.observe({"pilot:UKDF:0": DEAD, "pilot:UKDF:1": DEAD}, with_nodes=set()).start  # its node is gone
    []
"""

from __future__ import annotations

from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum


class Liveness(Enum):
    """What one ping of a pilot told, when it did not answer its key."""

    DEAD = "dead"  #: the actor died (or its name is not registered)
    SILENT = "silent"  #: no answer yet: starting, or waiting for its site's node


DEAD, SILENT = Liveness.DEAD, Liveness.SILENT
Answer = str | Liveness  #: the incarnation key of a live pilot, or why there is none


@dataclass
class Actions:
    """What the supervisor must do after one round."""

    #: (site, pilot, keep): forget at the queue every incarnation of ``pilot`` but ``keep`` (None: it died)
    forget: list[tuple[str, str, str | None]] = field(default_factory=list)
    start: list[tuple[str, str]] = field(default_factory=list)  #: (site, pilot) to start (again)
    views: dict[str, list[str]] = field(default_factory=dict)  #: site -> pilots that answer, where it changed


class SupervisorCore:
    """The pilots each site should have, and which of them answer."""

    def __init__(self, pilots: Mapping[str, Sequence[str]] | None = None):
        self.site_of: dict[str, str] = {}
        self.live: dict[str, set[str]] = {}
        self._told: dict[str, list[str]] = {}  #: the last view given to brokerage, per site
        self._forgotten: set[str] = set()  #: dead pilots already forgotten at their queue
        self.keys: dict[str, str] = {}  #: pilot -> the incarnation that last answered
        self.add(pilots or {})

    def add(self, pilots: Mapping[str, Sequence[str]]) -> None:
        """Supervise these pilots too (a site's node joined late); known ones are kept."""
        for site, names in pilots.items():
            self.live.setdefault(site, set())
            for name in names:
                self.site_of[name] = site

    def names(self) -> list[str]:
        return list(self.site_of)

    def observe(self, answers: Mapping[str, Answer], with_nodes: Container[str] | None = None) -> Actions:
        """Apply one round of pings (pilots not in ``answers`` are taken as silent); dead pilots
        are started again only at ``with_nodes``, the sites that have a node now (None: all)."""
        out = Actions()
        for name, site in self.site_of.items():
            answer = answers.get(name, SILENT)
            live = self.live[site]
            if isinstance(answer, str):
                live.add(name)
                self._forgotten.discard(name)
                if self.keys.get(name) != answer:
                    self.keys[name] = answer
                    out.forget.append((site, name, answer))
            elif answer is DEAD:
                live.discard(name)
                if name not in self._forgotten:
                    self._forgotten.add(name)
                    out.forget.append((site, name, None))
                if with_nodes is None or site in with_nodes:
                    out.start.append((site, name))
        for site, live in self.live.items():
            view = sorted(live)
            if self._told.get(site) != view:
                self._told[site] = view
                out.views[site] = view
        return out
