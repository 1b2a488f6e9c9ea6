"""Realistic Rubin-shaped job graphs as plain data, for tests and benchmarks.

One survey layout (visits of a camera with detectors, visits alternating bands, each visit
overlapping a window of patches of one tract) drives one pipeline structure that has the shape of
a real quantum graph: fan-out per detector, fan-in per visit, many-to-many visits x patches
(warps), fan-in to coadds, across bands (mergeDetections), back out to bands (measure,
forcedPhotCoadd), then a second detector-level wave (forcedPhotCcd) behind the tract-level output.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["DagShape", "ci_hsc", "drp"]

_LSST_BANDS = ("u", "g", "r", "i", "z", "y")
_LSSTCAM_DETECTORS = 189
_PATCHES_PER_VISIT = 9
_VISITS_PER_PATCH_BAND = 4


@dataclass
class DagShape:
    """A workflow's jobs as plain data: ``parents[i]`` names the parents of ``names[i]``.

    ``labels[i]`` is the pipeline-task label and ``tags[i]`` the data ID of job ``i``.
    """

    names: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    parents: list[list[str]] = field(default_factory=list)
    tags: list[dict[str, object]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.names)

    def add(self, label: str, key: str, tags: dict[str, object], parents: list[str]) -> str:
        """Append job ``label:key`` (``label`` alone if ``key`` is empty) and return its name."""
        name = f"{label}:{key}" if key else label
        self.names.append(name)
        self.labels.append(label)
        self.parents.append(parents)
        self.tags.append(tags)
        return name


@dataclass(frozen=True)
class _Survey:
    """Where the visits fall: visit ``v`` is in band ``v % len(bands)`` and overlaps the patches
    ``offsets[v] .. offsets[v] + window - 1`` (mod ``patches``)."""

    instrument: str
    visits: int
    detectors: int
    bands: tuple[str, ...]
    patches: int
    window: int
    offsets: tuple[int, ...]

    def detectors_on(self, position: int) -> list[int]:
        """The detectors of a visit that overlap the ``position``-th patch of its window."""
        d, w = self.detectors, self.window
        return [k for k in range(d) if k * w // d <= position <= ((k + 1) * w - 1) // d]


def _n_jobs(visits: int, detectors: int, bands: int, patches: int, window: int) -> int:
    """How many jobs :func:`_pipeline` makes for a survey of these sizes."""
    per_detector = 4 * visits * detectors
    per_visit = visits * (1 + window)
    per_patch = patches * (4 * bands + 3)
    return 2 + per_detector + per_visit + per_patch


def _pipeline(s: _Survey) -> DagShape:
    """The DRP pipeline over survey ``s``: the one place that knows the graph's structure."""
    dag = DagShape()
    inst = s.instrument
    n_bands = len(s.bands)
    init = dag.add("pipetaskInit", "", {"instrument": inst}, [])
    cover = [s.detectors_on(w) for w in range(s.window)]
    calibrates: list[list[str]] = []
    summaries: list[str] = []
    warps_of: list[list[str]] = [[] for _ in range(s.patches * n_bands)]
    for v in range(s.visits):
        band = s.bands[v % n_bands]
        visit_calibrates = []
        for d in range(s.detectors):
            key = f"v{v:04d}:d{d:03d}"
            tag = {"instrument": inst, "visit": v, "detector": d, "band": band}
            isr = dag.add("isr", key, tag, [init])
            char = dag.add("characterizeImage", key, dict(tag), [isr])
            visit_calibrates.append(dag.add("calibrate", key, dict(tag), [char]))
        calibrates.append(visit_calibrates)
        visit_tag = {"instrument": inst, "visit": v, "band": band}
        summary = dag.add("consolidateVisitSummary", f"v{v:04d}", visit_tag, list(visit_calibrates))
        summaries.append(summary)
        for w in range(s.window):
            p = (s.offsets[v] + w) % s.patches
            warp_parents = [visit_calibrates[d] for d in cover[w]] + [summary]
            warp_tag = {"instrument": inst, "visit": v, "tract": 0, "patch": p, "band": band}
            warp = dag.add("makeWarp", f"v{v:04d}:p{p:03d}", warp_tag, warp_parents)
            warps_of[p * n_bands + v % n_bands].append(warp)
    forced_coadds = []
    for p in range(s.patches):
        forced_coadds += _patch_jobs(dag, p, s.bands, warps_of[p * n_bands : (p + 1) * n_bands])
    objects = dag.add("consolidateObjectTable", "t0000", {"tract": 0}, forced_coadds)
    for v in range(s.visits):
        band = s.bands[v % n_bands]
        for d in range(s.detectors):
            tag = {"instrument": inst, "visit": v, "detector": d, "band": band}
            dag.add("forcedPhotCcd", f"v{v:04d}:d{d:03d}", tag, [objects, calibrates[v][d], summaries[v]])
    return dag


def _patch_jobs(dag: DagShape, p: int, bands: tuple[str, ...], warps: list[list[str]]) -> list[str]:
    """Coadd, detect, merge bands, deblend and measure one patch; return its forcedPhotCoadd jobs."""
    patch_key, patch_tag = f"p{p:03d}", {"tract": 0, "patch": p}
    keys = [f"{patch_key}:{band}" for band in bands]
    tags = [{**patch_tag, "band": band} for band in bands]
    coadds = [dag.add("assembleCoadd", k, dict(t), w) for k, t, w in zip(keys, tags, warps)]
    detections = [dag.add("detection", k, dict(t), [c]) for k, t, c in zip(keys, tags, coadds)]
    merged = dag.add("mergeDetections", patch_key, dict(patch_tag), detections)
    deblended = dag.add("deblend", patch_key, dict(patch_tag), [merged])
    measures = [dag.add("measure", k, dict(t), [deblended, c]) for k, t, c in zip(keys, tags, coadds)]
    reference = dag.add("mergeMeasurements", patch_key, dict(patch_tag), measures)
    return [dag.add("forcedPhotCoadd", k, t, [reference, c]) for k, t, c in zip(keys, tags, coadds)]


def ci_hsc(
    visits: int = 11, detectors: int = 3, bands: tuple[str, ...] = ("g", "r"), patches: int = 1
) -> DagShape:
    """The shape of the ci_hsc test graph: every visit overlaps every patch.

    Examples:
        >>> shape = ci_hsc()
        >>> len(shape), shape.names[1], shape.parents[3]
        (167, 'isr:v0000:d000', ['characterizeImage:v0000:d000'])
    """
    if visits < len(bands) or detectors < 1 or patches < 1:
        raise ValueError(f"need visits >= bands ({len(bands)}), detectors >= 1, patches >= 1")
    survey = _Survey("HSC", visits, detectors, tuple(bands), patches, patches, (0,) * visits)
    return _pipeline(survey)


def drp(n_jobs: int, seed: int = 0) -> DagShape:
    """An LSSTCam-like DRP graph of about ``n_jobs`` jobs (within 2% from about a thousand up).

    Sizes are chosen as close to ``n_jobs`` as possible, keeping as many of the camera's 189
    detectors as that allows; ``seed`` shuffles which patches each visit of a band overlaps.

    Examples:
        >>> abs(len(drp(10_000)) - 10_000) <= 200
        True
    """
    if n_jobs < 1:
        raise ValueError(f"n_jobs must be positive, not {n_jobs}")
    visits, detectors = _drp_sizes(n_jobs)
    n_bands = len(_LSST_BANDS)
    window, patches = _drp_patches(visits, detectors)
    rng = random.Random(seed)
    offsets = [0] * visits
    for b in range(n_bands):
        band_visits = list(range(b, visits, n_bands))
        ranks = list(range(len(band_visits)))
        rng.shuffle(ranks)
        for v, rank in zip(band_visits, ranks):
            offsets[v] = rank * window % patches
    survey = _Survey("LSSTCam", visits, detectors, _LSST_BANDS, patches, window, tuple(offsets))
    return _pipeline(survey)


def _drp_patches(visits: int, detectors: int) -> tuple[int, int]:
    """(patches per visit, patches in the tract) such that every patch is seen in every band."""
    window = min(_PATCHES_PER_VISIT, detectors)
    per_band = visits // len(_LSST_BANDS)
    return window, max(window, -(-per_band * window // _VISITS_PER_PATCH_BAND))


def _drp_size(visits: int, detectors: int) -> int:
    window, patches = _drp_patches(visits, detectors)
    return _n_jobs(visits, detectors, len(_LSST_BANDS), patches, window)


def _drp_sizes(n_jobs: int) -> tuple[int, int]:
    """(visits, detectors) whose graph size is nearest ``n_jobs``, preferring more detectors."""
    best: tuple[float, int, int] | None = None
    for detectors in range(_LSSTCAM_DETECTORS, 0, -1):
        lo, hi = len(_LSST_BANDS), max(len(_LSST_BANDS), n_jobs)
        while lo < hi:
            mid = (lo + hi) // 2
            if _drp_size(mid, detectors) < n_jobs:
                lo = mid + 1
            else:
                hi = mid
        for visits in (max(len(_LSST_BANDS), lo - 1), lo):
            error = abs(_drp_size(visits, detectors) - n_jobs) / n_jobs
            if best is None or error < best[0]:
                best = (error, visits, detectors)
        if best[0] <= 0.005:
            break
    assert best is not None
    return best[1], best[2]
