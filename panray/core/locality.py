"""Where a workflow's datasets are: outputs land at the site that produced them.

A workflow manager keeps one :class:`DataLocality` in memory, filled as jobs finish, so that
brokerage learns which fraction of a child's inputs each site already holds without a database
read per job. New locations and the transfers implied by running a job away from its inputs
accumulate here until the next flush writes them with the rest of the batch.

Examples:
    >>> loc = DataLocality(7)
    >>> loc.produced('["calexp:1", "src:1"]', "UKDF")
    >>> loc.fractions('["calexp:1", "src:1", "raw:1"]')
    {'UKDF': 0.6666666666666666}
    >>> loc.placed(42, 1, '["calexp:1"]', "FrDF", 0.0)
    >>> [(t.dataset, t.source, t.destination) for t in loc.transfers]
    [('calexp:1', 'UKDF', 'FrDF')]
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from panray.store.base import JobRow, LocationRow, TransferRow

_NONE = "[]"


def _names(datasets: str) -> list[str]:
    return [] if datasets == _NONE or not datasets else json.loads(datasets)


class DataLocality:
    """Dataset -> site for one workflow, plus the rows not yet written to the store."""

    def __init__(self, workflow_id: int, finished: Iterable[JobRow] = ()):
        self.workflow_id = workflow_id
        self.where: dict[str, str] = {}
        for j in finished:
            if j.site:
                for d in _names(j.outputs):
                    self.where[d] = j.site
        self.locations: list[LocationRow] = []
        self.transfers: list[TransferRow] = []

    def produced(self, outputs: str, site: str) -> None:
        """A job that ran at ``site`` finished; ``outputs`` is its JSON list of datasets."""
        for d in _names(outputs):
            self.where[d] = site
            self.locations.append(LocationRow(self.workflow_id, d, site))

    def fractions(self, inputs: str) -> dict[str, float]:
        """Fraction of the JSON list ``inputs`` already at each site (inputs from outside count nowhere)."""
        names = _names(inputs)
        if not names:
            return {}
        counts: dict[str, int] = {}
        for d in names:
            site = self.where.get(d)
            if site is not None:
                counts[site] = counts.get(site, 0) + 1
        return {s: n / len(names) for s, n in counts.items()}

    def placed(self, job_id: int, attempt_nr: int, inputs: str, site: str, now: float) -> None:
        """The job goes to ``site``: each known input held elsewhere must be transferred."""
        for d in _names(inputs):
            source = self.where.get(d)
            if source is not None and source != site:
                self.transfers.append(TransferRow(self.workflow_id, job_id, attempt_nr, d, source, site, now))

    def drain(self) -> tuple[list[LocationRow], list[TransferRow]]:
        out = self.locations, self.transfers
        self.locations, self.transfers = [], []
        return out
