"""Plain-text tables for operators (the CLI renderer of the monitor), in the spirit of the PanDA monitor."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

from panray.api import WorkflowSummary
from panray.store.base import AttemptRow, JobRow, QuantumRow


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _printable(text: str) -> str:
    """A cell with control characters escaped: a stored name or diagnostic never drives the terminal."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text) if _CONTROL.search(text) else text


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[("" if v is None else _printable(str(v))) for v in r] for r in rows]
    widths = [max([len(h)] + [len(r[k]) for r in cells]) for k, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(out)


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else ""


def _counts(d: dict[str, int]) -> str:
    return " ".join(f"{k}:{v}" for k, v in sorted(d.items())) or "-"


def workflows_table(rows: Sequence[WorkflowSummary]) -> str:
    return table(
        ["id", "name", "owner", "status", "tasks", "finished", "failed", "pruned", "total", "quanta", "created"],
        [(w.workflow_id, w.name, w.owner, w.status, _counts(w.tasks), w.jobs.get("finished", 0),
          w.jobs.get("failed", 0), w.jobs.get("closed", 0), w.total, _quanta(w.quanta), _when(w.created))
         for w in rows],
    )


def _quanta(counts: dict[str, int]) -> str:
    """``finished/failed/pruned/total`` quanta."""
    return "/".join(str(counts.get(s, 0)) for s in ("finished", "failed", "closed")) + f"/{sum(counts.values())}"


def quanta_table(rows: Sequence[QuantumRow]) -> str:
    return table(
        ["job", "quantum", "label", "status", "attempt", "duration", "exit", "diag"],
        [(q.job_id, q.name, q.label, q.status, q.attempt_nr, _duration(q), q.exit_code, (q.diag or "")[:60])
         for q in rows],
    )


def _duration(j: JobRow | AttemptRow | QuantumRow) -> str:
    if j.start_time and j.end_time:
        return f"{j.end_time - j.start_time:.2f}s"
    return ""


def max_pss_gb(j: JobRow, pss: Mapping[int, int]) -> tuple[float | None, float | None]:
    """(max PSS, max PSS per requested core) in GB (2**20 kB): a multi-core job may use
    proportionally more memory, so per core is what compares across jobs."""
    kb = pss.get(j.job_id)
    if kb is None:
        return None, None
    gb = kb / 2**20
    return gb, gb / max(j.request_cpus, 1)


def jobs_table(rows: Sequence[JobRow], pss: Mapping[int, int] | None = None) -> str:
    """``pss``: ``{job_id: max PSS kB}`` of the latest ended attempt (``StateStore.max_pss``)."""
    pss = pss or {}

    def gb(v: float | None) -> str:
        return "" if v is None else f"{v:.3f}"

    return table(
        ["job", "attempt", "label", "name", "status", "site", "duration", "max PSS GB", "PSS/core GB", "exit",
         "error", "diag"],
        [(j.job_id, f"{j.attempt_nr} of {j.max_attempts}", j.label, j.name, j.status, j.site, _duration(j),
          *map(gb, max_pss_gb(j, pss)), j.exit_code, j.error_class, (j.diag or "")[:60]) for j in rows],
    )


def job_records(rows: Sequence[JobRow], pss: Mapping[int, int]) -> list[dict[str, Any]]:
    """Jobs for ``--json``, with the max PSS (kB, GB, GB per core) of their latest ended attempt."""
    out = []
    for j in rows:
        gb, per_core = max_pss_gb(j, pss)
        out.append({**j._asdict(), "max_pss_kb": pss.get(j.job_id), "max_pss_gb": gb, "max_pss_per_core_gb": per_core})
    return out


def attempts_table(rows: Sequence[AttemptRow]) -> str:
    return table(
        ["attempt", "status", "site", "pilot", "start", "duration", "exit", "error", "memory MB", "max PSS MB", "logs"],
        [(a.attempt_nr, a.status, a.site, a.pilot, _when(a.start_time), _duration(a), a.exit_code, a.error_class,
          a.request_memory, f"{a.max_pss_kb / 1024:.1f}" if a.max_pss_kb else "", a.log_url) for a in rows],
    )


def to_json(rows: Sequence[Any]) -> str:
    def conv(r: Any) -> Any:
        if hasattr(r, "_asdict"):
            return r._asdict()
        if hasattr(r, "__dataclass_fields__"):
            d = {k: getattr(r, k) for k in r.__dataclass_fields__}
            if hasattr(r, "total"):
                d["total"] = r.total
            return d
        return r

    return json.dumps([conv(r) for r in rows], indent=2, default=str)
