"""The whole benchmark set in one go, with laptop defaults, summed up in one table.

Each benchmark runs as its own process, one after the other (never two at once: they would
measure each other), with the arguments of ``SUITE``; each prints its own table and writes its
JSON as usual. This script then reads those JSON files and writes one table of the figures that
matter, each row beside its peer measured in the same run: ``benchmark``, ``case`` (the row's
system, backend, path, page ...), ``figure`` and ``value``. The table goes to stdout and, with the
per-benchmark JSON paths, to ``benchmarks/results/compare-<time>.json``.

Usage
    python -m benchmarks.compare [--only dag_throughput,submit] [--quick]

``--quick`` runs smaller sizes (a first look in a few minutes, not figures to quote).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import format_table, machine_info, print_header, versions, write_json  # noqa: E402

#: name -> (module, laptop arguments, --quick arguments)
SUITE: dict[str, tuple[str, list[str], list[str]]] = {
    "dag_throughput": ("dag_throughput", ["--jobs", "10000", "--jobs", "50000", "--baselines", "ray,parsl"],
                       ["--jobs", "5000", "--backends", "sqlite", "--baselines", "ray,parsl"]),
    "submit": ("submit", ["--jobs", "200000"], ["--jobs", "20000", "--backends", "sqlite"]),
    "concurrent": ("concurrent", ["--jobs", "200000"], ["--jobs", "20000"]),
    "subprocess": ("subprocess_payloads", ["--jobs", "3000"], ["--jobs", "300"]),
    "recovery": ("recovery", [], ["--jobs", "100"]),
    "campaign": ("campaign", ["--workflows", "200", "--jobs", "1000"], ["--workflows", "20", "--jobs", "1000"]),
}
#: The figures shown per benchmark (numeric fields of its result rows); others: every numeric field.
FIGURES = {
    "dag_throughput": ("nodes_per_s", "vs_ray", "vs_parsl", "seconds", "peak_rss_mib"),
    "submit": ("total_s", "peak_rss_mib"),
    "campaign": ("jobs_per_s", "vs_single", "managers", "control_rss_mib"),
}
_CASE_KEYS = ("system", "backend", "path", "jobs", "page", "fault", "name", "kind")


def _run(name: str, quick: bool, timeout: float) -> tuple[int, Path | None]:
    module, args, quick_args = SUITE[name]
    cmd = [sys.executable, "-m", f"benchmarks.{module}", *(quick_args if quick else args)]
    print(f"-- {name}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    try:
        done = subprocess.run(cmd, cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.PIPE, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"   {name}: no result within {timeout:.0f} s", file=sys.stderr, flush=True)
        return -1, None
    print(done.stdout, flush=True)
    paths = [ln.split("results: ", 1)[1].strip() for ln in done.stdout.splitlines() if ln.startswith("results: ")]
    return done.returncode, Path(paths[-1]) if paths else None


def summary_rows(name: str, payload: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (result row, figure) of a benchmark's JSON."""
    out = []
    for r in payload.get("results", []):
        if not isinstance(r, dict):
            continue
        case = " ".join(str(r[k]) for k in _CASE_KEYS if isinstance(r.get(k), (str, int)) and r.get(k) not in ("", "-"))
        wanted = FIGURES.get(name) or tuple(k for k, v in r.items() if isinstance(v, (int, float))
                                            and not isinstance(v, bool) and k not in _CASE_KEYS)
        for figure in wanted:
            if isinstance(r.get(figure), (int, float)):
                out.append({"benchmark": name, "case": case, "figure": figure, "value": r[figure],
                            "ok": r.get("ok", r.get("meets_targets"))})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="", help=f"comma-separated subset of {', '.join(SUITE)}")
    ap.add_argument("--quick", action="store_true", help="small sizes: a first look, not figures to quote")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per benchmark")
    args = ap.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(SUITE)
    unknown = sorted(set(names) - set(SUITE))
    if unknown:
        ap.error(f"unknown benchmarks {', '.join(unknown)}; known: {', '.join(SUITE)}")
    info, vers = machine_info(), versions()
    print_header("compare: the benchmark set, each figure beside its peer of the same run", info, vers)
    rows: list[dict[str, Any]] = []
    files: dict[str, str | None] = {}
    failed = []
    t0 = time.perf_counter()
    for name in names:
        rc, path = _run(name, args.quick, args.timeout)
        files[name] = str(path) if path else None
        if path is None or rc != 0:
            failed.append(name)
        if path is not None:
            rows += summary_rows(name, json.loads(path.read_text()))
    print(format_table(rows, ["benchmark", "case", "figure", "value", "ok"]))
    print(f"{len(names)} benchmarks in {time.perf_counter() - t0:.0f} s" + (f"; failed: {', '.join(failed)}" if failed else ""))
    out = write_json("compare", {"benchmark": "compare", "machine": info, "versions": vers, "results": rows,
                                 "files": files, "failed": failed})
    print(f"results: {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
