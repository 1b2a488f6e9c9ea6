"""All errors panray raises to its users. Each names the offending things."""

from __future__ import annotations

SHOW_MAX = 60  #: characters of a name shown in a message; longer ones are cut and sized


def show(name: str, limit: int = SHOW_MAX, *, quote: bool = True) -> str:
    """A name for a one-line message: quoted, control characters escaped, long ones cut.

    Examples:
        >>> show("a\\nb")
        "'a\\\\nb'"
        >>> show("a" * 2**20)
        "'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa...' (1 MB)"
    """
    text = repr(name[:limit])
    if not quote:
        text = text[1:-1]
    if len(name) <= limit:
        return text
    n = len(name)
    size = f"{n / 2**20:.0f} MB" if n >= 2**20 else f"{n / 1024:.0f} kB" if n >= 1024 else f"{n} characters"
    return f"{text[:-1]}...{text[-1]} ({size})" if quote else f"{text}... ({size})"


class PanrayError(Exception):
    """Base of every panray error; catch this to handle any of them."""


class WorkflowValidationError(PanrayError, ValueError):
    """A workflow is malformed; nothing of it was stored (a ValueError too, as pydantic's errors were)."""


CYCLE_SHOWN = 20  #: jobs of a cycle named in its message


class CycleError(WorkflowValidationError):
    """The job graph has a cycle; ``cycle`` lists its nodes in order."""

    def __init__(self, cycle: list[str]):
        self.cycle = cycle
        shown = [show(n, quote=False) for n in cycle[:CYCLE_SHOWN]] + ([f"... ({len(cycle) - CYCLE_SHOWN} more)"] if len(cycle) > CYCLE_SHOWN else [])
        super().__init__("cycle in job graph: " + " -> ".join(shown + shown[:1]))


class DanglingParentError(WorkflowValidationError):
    """A job names a parent that is not in the workflow."""

    def __init__(self, job: str, parent: str):
        self.job, self.parent = job, parent
        super().__init__(f"job {show(job)} names parent {show(parent)}, which is not in the workflow")


class DuplicateJobError(WorkflowValidationError):
    """Two or more jobs share a name."""

    def __init__(self, names: list[str]):
        self.names = names
        shown = ", ".join(show(n) for n in names[:10]) + (" ..." if len(names) > 10 else "")
        super().__init__(f"duplicate job names: {shown}")


class UnknownSiteError(PanrayError):
    """A site name that the catalog does not know."""

    def __init__(self, site: str, known: list[str]):
        self.site, self.known = site, known
        super().__init__(f"unknown site {show(site)}; known sites: {', '.join(sorted(known))}")


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


class ConfigError(PanrayError, ValueError):
    """panray's own settings (config file or environment) are invalid."""


class StoreError(PanrayError):
    """The state store cannot be opened or used: unreachable, corrupt, read-only, wrong schema."""


class PlacementError(WorkflowValidationError):
    """A job that no site of the catalog could ever take (memory, cores, or its pinned site)."""


class ClusterCycleError(WorkflowValidationError):
    """Clustering rules would put quanta into jobs that depend on each other in a circle.

    ``jobs`` are the cluster jobs along the cycle; ``links`` one (parent quantum, child quantum)
    edge per step that makes a job depend on the previous one.
    """

    def __init__(self, jobs: list[str], links: list[tuple[str, str]]):
        self.jobs, self.links = jobs, links
        via = ", ".join(f"{show(p, quote=False)} -> {show(c, quote=False)}" for p, c in links[:CYCLE_SHOWN])
        super().__init__(
            "clustering would create a cycle between jobs " + " -> ".join(show(j, quote=False) for j in jobs + jobs[:1])
            + f" (quanta: {via}); put these quanta in the same cluster or in none"
        )


class StoreUnavailableError(StoreError):
    """The state store could not be reached (connection lost, server restarting, file locked).

    ``in_doubt`` is true when the failure came while committing: the transaction may have been
    stored, so only an idempotent call may be repeated blindly.
    """

    def __init__(self, url: str, cause: BaseException, *, in_doubt: bool = False):
        self.url, self.in_doubt = url, in_doubt
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        super().__init__(f"state store {url} unavailable: {first}")


class AuthenticationError(PanrayError):
    """A request without a valid token: missing, malformed, expired, or not from a trusted issuer."""


class PermissionDeniedError(PanrayError):
    """An authenticated user asked for an action the rules do not allow; the message names the rule."""


class ConflictError(PanrayError):
    """An action that the target's current state does not allow (e.g. retry of a running workflow)."""


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
