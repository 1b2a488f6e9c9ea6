"""The HTTP front door under load: a huge submit through the API, and many users polling at once.

What is measured
    One ``panray serve`` (embedded 3-site cluster, SQLite) in its own process; this process is
    its client.

    1. ``submit``: a DRP-shaped workflow of ``--jobs`` no-op jobs submitted embedded (this
       process opens the server's store and joins its cluster, as before the server existed)
       and then through ``POST /api/v1/workflows`` (client serialisation, upload, server-side
       parsing and validation, the same service call); seconds of each and their ratio. Each
       workflow is cancelled as soon as it is in, so that its jobs do not run.
    2. ``polling``: a workflow of ``--poll-jobs`` no-op jobs runs twice, alone and while
       ``--clients`` concurrent clients (asyncio, one connection each) loop over
       ``GET /status?workflow_id`` and a random 100-job page of ``GET /workflows/{id}/jobs``,
       then wait ``--interval`` seconds (a monitor page refreshing; 0 = as fast as they can);
       p50/p99 latency of those requests, and the workflow's throughput (jobs/s from created
       to ended) with and without the polling, and their ratio.

Usage
    python -m benchmarks.server --jobs 200000 --poll-jobs 50000 --clients 50 [--interval 1] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import format_table, machine_info, print_header, versions, write_json  # noqa: E402

PANRAY = [sys.executable, "-m", "panray.cli"]


@contextmanager
def served(home: Path) -> Iterator[dict[str, Any]]:
    """``panray serve`` for ``home``; yields its cluster.json; stops it on exit."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PANRAY_")}, "PANRAY_HOME": str(home)}
    proc = subprocess.Popen([*PANRAY, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                info = json.loads((home / "cluster.json").read_text())
                if info.get("url") and (home / "token").exists():
                    break
            except (OSError, ValueError):
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"panray serve did not come up (rc {proc.poll()})")
            time.sleep(0.2)
        yield info
    finally:
        subprocess.run([*PANRAY, "serve", "--stop"], env=env, capture_output=True, timeout=180)
        proc.wait(timeout=60)


def _workflow(n: int, name: str) -> Any:
    from panray.dag import drp
    from panray.models import Job, Workflow

    shape = drp(n)
    jobs = [Job(name=a, label=b, parents=c, tags=d) for a, b, c, d in zip(shape.names, shape.labels, shape.parents,
                                                                          shape.tags)]
    return Workflow(name=name, jobs=jobs)


def _cancelled(pr: Any, wf_id: int) -> None:
    pr.cancel(wf_id)
    pr.wait([wf_id], timeout=600)


def measure_submit(home: Path, info: dict[str, Any], n: int) -> dict[str, Any]:
    from panray import Panray, Settings

    wf = _workflow(n, f"bench-server-{n}")
    settings = Settings(home=home)
    with Panray(settings) as embedded:
        embedded.runtime  # noqa: B018 - joins the server's cluster before the clock starts
        t0 = time.perf_counter()
        [a] = embedded.submit(wf)
        embedded_s = time.perf_counter() - t0
        _cancelled(embedded, a)
    with Panray(settings, url=info["url"]) as remote:
        t0 = time.perf_counter()
        [b] = remote.submit(wf)
        http_s = time.perf_counter() - t0
        stored = remote.status(b)[0].total
        _cancelled(remote, b)
    return {"jobs": len(wf.jobs), "embedded_s": embedded_s, "http_s": http_s, "http_over_embedded": http_s / embedded_s,
            "stored_jobs": stored, "ok": stored == len(wf.jobs)}


async def _poll(url: str, token: str, wf_id: int, n_jobs: int, interval: float, stop: asyncio.Event,
                out: list[float]) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=url + "/api/v1", headers={"Authorization": f"Bearer {token}"},
                                 timeout=60) as c:
        rng = random.Random()
        while not stop.is_set():
            for path, params in (("/status", {"workflow_id": wf_id}),
                                 (f"/workflows/{wf_id}/jobs", {"limit": 100, "offset": rng.randrange(max(n_jobs - 100, 1))})):
                t0 = time.perf_counter()
                r = await c.get(path, params=params)
                out.append(time.perf_counter() - t0)
                r.raise_for_status()
            if interval:
                await asyncio.sleep(rng.uniform(0.5, 1.5) * interval)  # think time of a user, not a sync


async def _run_polled(pr: Any, url: str, token: str, n: int, clients: int, interval: float) -> tuple[int, list[float]]:
    [wf_id] = await asyncio.to_thread(pr.submit, _workflow(n, f"bench-poll-{n}-{clients}"))
    stop, latencies = asyncio.Event(), []
    pollers = [asyncio.create_task(_poll(url, token, wf_id, n, interval, stop, latencies)) for _ in range(clients)]
    await asyncio.to_thread(pr.wait, [wf_id], timeout=1800)
    stop.set()
    await asyncio.gather(*pollers)
    return wf_id, latencies


def measure_polling(home: Path, info: dict[str, Any], n: int, clients: int, interval: float) -> dict[str, Any]:
    from panray import Panray, Settings

    token = (home / "token").read_text().strip()
    out: dict[str, Any] = {"jobs": n, "clients": clients, "interval_s": interval}
    with Panray(Settings(home=home), url=info["url"]) as pr:
        for mode, k in (("alone", 0), ("polled", clients)):
            wf_id, latencies = asyncio.run(_run_polled(pr, info["url"], token, n, k, interval))
            [w] = [w for w in pr.workflows() if w.workflow_id == wf_id]
            assert w.status == "Finished", w.status
            out[f"{mode}_jobs_per_s"] = n / (w.ended - w.created)
            if latencies:
                q = statistics.quantiles(latencies, n=100)
                out.update(requests=len(latencies), p50_ms=1000 * q[49], p99_ms=1000 * q[98])
    out["throughput_ratio"] = out["polled_jobs_per_s"] / out["alone_jobs_per_s"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=200_000, help="size of the submitted workflow")
    ap.add_argument("--poll-jobs", type=int, default=50_000, help="size of the workflow run under polling")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--interval", type=float, default=1.0, help="seconds each client waits between polls")
    ap.add_argument("--json", action="store_true", help="also print the result JSON on stdout")
    args = ap.parse_args(argv)
    info_m, vers = machine_info(), versions()
    print_header("panray server: submit over HTTP and concurrent polling", info_m, vers)
    home = Path(tempfile.mkdtemp(prefix="panray-bench-server-"))
    with served(home) as info:
        submit = measure_submit(home, info, args.jobs)
        print(format_table([submit], ["jobs", "embedded_s", "http_s", "http_over_embedded", "stored_jobs", "ok"]))
        polling = measure_polling(home, info, args.poll_jobs, args.clients, args.interval)
        print(format_table([polling], ["jobs", "clients", "interval_s", "requests", "p50_ms", "p99_ms", "alone_jobs_per_s",
                                       "polled_jobs_per_s", "throughput_ratio"]))
    payload = {"machine": info_m, "versions": vers, "submit": submit, "polling": polling}
    path = write_json("server", payload)
    print(f"results: {path}", file=sys.stderr)
    if args.json:
        print(json.dumps(payload, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
