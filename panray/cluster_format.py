"""The format a cluster job travels in: its spec (quanta, in-cluster dependencies), the skip list
and the per-quantum results file.

Submission writes it (:mod:`panray.cluster_jobs`), the workflow core reads the skip variable, and
the cluster runner (:mod:`panray.core.cluster_runner`), a plain script, loads this file by path:
it imports only the standard library, so that script still starts in milliseconds.

Examples:
    >>> spec = ClusterSpec([QuantumSpec("a", "isr", ["true"], {}), QuantumSpec("b", "calib", None, {})], [[], [0]], [1, 2])
    >>> ClusterSpec.from_json(spec.to_json()) == spec
    True
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

CLUSTER_ARGV0 = "panray-cluster"  #: first word of a cluster job's argv; the pilot swaps in this script
SKIP_ENV = "PANRAY_QUANTA_SKIP"
RESULTS_FILE = "quanta.jsonl"
SPEC_FILE = "cluster.json"


class QuantumSpec(NamedTuple):
    name: str
    label: str
    argv: list[str] | None  #: None: a no-op quantum
    environment: dict[str, str]


@dataclass(slots=True)
class ClusterSpec:
    """What a cluster job runs: quanta in dependency order, ``deps[k]`` = positions ``k`` waits for."""

    quanta: list[QuantumSpec]
    deps: list[list[int]]
    retry_unless_exit: list[int]

    def to_json(self) -> str:
        return json.dumps({"quanta": [list(q) for q in self.quanta], "deps": self.deps,
                           "retry_unless_exit": self.retry_unless_exit}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> ClusterSpec:
        d = json.loads(text)
        return cls([QuantumSpec(*q) for q in d["quanta"]], d["deps"], d["retry_unless_exit"])


def parse_skip(text: str) -> set[int]:
    return {int(p) for p in text.split(",") if p}


def read_results(work_dir: Path) -> tuple[tuple[int, int, float, float], ...] | None:
    """``(pos, exit_code, start, end)`` per quantum run, from the work dir; None if there is no file."""
    path = work_dir / RESULTS_FILE
    if not path.exists():
        return None
    out = []
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
            out.append((int(r["pos"]), int(r["exit_code"]), float(r["start"]), float(r["end"])))
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a kill
    return tuple(out)
