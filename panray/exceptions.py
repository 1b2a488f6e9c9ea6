"""All errors panray raises to its users. Each names the offending things."""

from __future__ import annotations


class PanrayError(Exception):
    """Base of every panray error; catch this to handle any of them."""


class WorkflowValidationError(PanrayError):
    """A workflow is malformed; nothing of it was stored."""


class CycleError(WorkflowValidationError):
    """The job graph has a cycle; ``cycle`` lists its nodes in order."""

    def __init__(self, cycle: list[str]):
        self.cycle = cycle
        super().__init__("cycle in job graph: " + " -> ".join(cycle + cycle[:1]))


class DanglingParentError(WorkflowValidationError):
    """A job names a parent that is not in the workflow."""

    def __init__(self, job: str, parent: str):
        self.job, self.parent = job, parent
        super().__init__(f"job {job!r} names parent {parent!r}, which is not in the workflow")


class DuplicateJobError(WorkflowValidationError):
    """Two or more jobs share a name."""

    def __init__(self, names: list[str]):
        self.names = names
        shown = ", ".join(repr(n) for n in names[:10]) + (" ..." if len(names) > 10 else "")
        super().__init__(f"duplicate job names: {shown}")


class UnknownSiteError(PanrayError):
    """A site name that the catalog does not know."""

    def __init__(self, site: str, known: list[str]):
        self.site, self.known = site, known
        super().__init__(f"unknown site {site!r}; known sites: {', '.join(sorted(known))}")


class SiteConfigError(PanrayError):
    """The site catalog file is invalid; the message names the file and the field."""


class IllegalTransitionError(PanrayError):
    """A status change that the transition table (:mod:`panray.transitions`) does not allow."""

    def __init__(self, entity: str, entity_id: int, old: str, new: str, cause: str = ""):
        self.entity, self.entity_id, self.old, self.new, self.cause = entity, entity_id, old, new, cause
        because = f" ({cause})" if cause else ""
        super().__init__(f"illegal transition of {entity} {entity_id}: {old} -> {new}{because}")


class NotFoundError(PanrayError):
    """A campaign, workflow, task or job id that the state store does not hold."""


class ConfigError(PanrayError):
    """panray's own settings (config file or environment) are invalid."""


class ClusterCycleError(WorkflowValidationError):
    """Clustering rules would put quanta into jobs that depend on each other in a circle.

    ``jobs`` are the cluster jobs along the cycle; ``links`` one (parent quantum, child quantum)
    edge per step that makes a job depend on the previous one.
    """

    def __init__(self, jobs: list[str], links: list[tuple[str, str]]):
        self.jobs, self.links = jobs, links
        via = ", ".join(f"{p} -> {c}" for p, c in links)
        super().__init__(
            "clustering would create a cycle between jobs " + " -> ".join(jobs + jobs[:1])
            + f" (quanta: {via}); put these quanta in the same cluster or in none"
        )


class UnknownInstrumentError(PanrayError):
    """A prompt notification names an instrument that has no standing prompt task."""

    def __init__(self, instrument: str, known: list[str]):
        self.instrument, self.known = instrument, known
        super().__init__(f"unknown instrument {instrument!r}; known instruments: {', '.join(sorted(known))}")


class UnknownDetectorError(PanrayError):
    """A prompt notification names detectors outside the instrument's range ``0..n_detectors-1``."""

    def __init__(self, instrument: str, detectors: list[object], n_detectors: int):
        self.instrument, self.detectors = instrument, detectors
        shown = ", ".join(map(repr, detectors[:10])) + (" ..." if len(detectors) > 10 else "")
        s = "s" if len(detectors) > 1 else ""
        super().__init__(f"unknown {instrument} detector{s} {shown}; valid detectors are 0..{n_detectors - 1}")


class PromptPoolError(PanrayError):
    """The prompt pool cannot run a visit: not started, or every pilot is gone."""
