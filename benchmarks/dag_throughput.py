"""DAG throughput: one DRP-shaped DAG of no-op jobs through panray, raw Ray, Parsl and Dask distributed.

What is measured
    The same graph, ``panray.dag.drp(n)`` (fan-out per detector, fan-in per visit, visits x patches,
    coadds, cross-band merges, a second detector wave), run end to end by three systems:

    * **panray** (``--backends sqlite,postgres``): the embedded default (a 3-node local Ray cluster,
      brokerage, site queues, pilots) with a fresh PANRAY home and a fresh database per run. Jobs
      have ``command=None`` (in-process no-op completed by the pilot) but *every state change is
      persisted* as usual. Timed from ``Panray.submit`` (validate + build + store write + start the
      manager) to the end of ``Panray.wait`` (workflow ended and its state written); the submit
      part is also reported alone. Building the pydantic ``Workflow`` and starting the cluster are
      not timed (reported as ``model_s`` / setup). After the run the store must say every job is
      ``finished``, else the run is marked failed.
    * **raw Ray**: a plain ``ray.init(address="local", num_cpus=2)`` on 127.0.0.1 (a new cluster of its own), one ``@ray.remote`` no-op task per
      node, the parents' ObjectRefs passed as arguments, submitted in topological order, timed from
      the first ``.remote()`` to ``ray.get`` of every ref.
    * **Parsl** (the in-process peer, default beside raw Ray): Parsl's ``ThreadPoolExecutor`` with 2
      threads, a ``python_app`` per node with its parents' futures as arguments, timed from the first
      call to the last result. Without Parsl installed the stdlib thread-pool DAG executor below
      (``threads``) stands in, and the row says so (``stand_in``).
    * **Dask**: ``LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host=127.0.0.1)``,
      a task graph ``{name: (noop, *parent_names)}`` computed by ``client.get(dsk, sinks)``, timed
      from ``client.get`` to its return (graph upload, scheduling and execution included).

Why it is fair
    Same graph, same machine, same run; each system runs in its own subprocess (no shared cluster,
    memory or warm caches), started after the previous one has exited. Setup (cluster start) is
    excluded for every system; what the user does to run a workflow is included. The peak RSS of
    each subprocess tree (driver + cluster processes) is sampled from outside every 0.5 s.

Usage
    python -m benchmarks.dag_throughput --jobs 10000 --jobs 50000 \
        [--backends sqlite,postgres] [--baselines ray,parsl,threads,dask] [--json] [--profile DIR] [--cluster RULES]

``--cluster RULES`` runs panray a second time per backend with those clustering rules on the same graph
(``panray.dag.parse_rules`` syntax); ``nodes_per_s`` counts quanta, ``vs_unclustered`` compares the two.

``--payload function`` gives every node a trivial Python function instead (``math:hypot(3, 4)``):
panray runs each as a function job (a Ray task named after the job, launched by a pilot slot, its
output tailed and its result stored like any payload's), raw Ray as a task calling it, and the
``parsl`` baseline (``--baselines ray,parsl``) as an app on Parsl's ThreadPoolExecutor (2 threads,
in-process), and the ``threads`` baseline as a stdlib thread-pool DAG executor of the same design
(a child submitted when its last parent ends) for machines without Parsl.

``--metrics-cost`` runs panray a second time per backend with ``metrics: false`` (same graph, same
run, order alternating); ``slowdown`` is how much slower the run with metrics on is (0.03 = 3%).

What keeping the monitor's aggregates costs the store's writers is ``benchmarks.monitor_writes``'s
figure: since schema version 5 the manager's own store changes them per batch (no trigger to drop).

``--profile DIR`` runs py-spy (raw collapsed stacks, sampled at 100 Hz) on the panray driver,
WorkflowManager, Pilot, SiteQueue and Brokerage processes during each panray run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402
from benchmarks.common import (  # noqa: E402
    RESULT_TAG,
    format_table,
    machine_info,
    postgres_server,
    print_header,
    versions,
    write_json,
)

PROFILED_ACTORS = ("WorkflowManager", "Pilot", "SiteQueue", "Brokerage")


# -- the three systems, each run in its own subprocess ---------------------------------------


def _topological(shape: Any) -> list[int]:
    """Indices of the shape in an order where parents come first (drp() already is one)."""
    pos = {name: i for i, name in enumerate(shape.names)}
    if all(pos[p] < i for i, ps in enumerate(shape.parents) for p in ps):
        return list(range(len(shape)))
    from graphlib import TopologicalSorter

    return [pos[n] for n in TopologicalSorter(dict(zip(shape.names, shape.parents))).static_order()]


FUNCTION, FUNCTION_ARGS = "math:hypot", [3, 4]  #: the trivial function of ``--payload function``


def run_panray(n_jobs: int, db_url: str | None, profile_dir: str | None, cluster: str | None = None,
               metrics: bool = True, payload: str = "noop") -> dict[str, Any]:
    import panray  # noqa: F401  (first: keeps Ray on loopback)
    from panray import Job, Panray, Settings, Workflow
    from panray.dag import drp, parse_rules

    shape = drp(n_jobs)
    t0 = time.perf_counter()
    call = {"function": FUNCTION, "args": FUNCTION_ARGS, "request_memory": 100} if payload == "function" else {}
    jobs = [Job(name=n, label=lb, parents=ps, tags=tg, **call)
            for n, lb, ps, tg in zip(shape.names, shape.labels, shape.parents, shape.tags)]
    wf = Workflow(name=f"bench-drp-{len(shape)}", jobs=jobs, clustering=parse_rules(cluster or ""))
    model_s = time.perf_counter() - t0
    del jobs
    home = Path(tempfile.mkdtemp(prefix="panray-bench-"))
    with Panray(Settings(home=home, db_url=db_url, metrics=metrics)) as pr:
        t_setup = time.perf_counter()
        pr.runtime  # start the embedded cluster and actors outside the timing
        setup_s = time.perf_counter() - t_setup
        warm_s = _warm_functions(pr, Job, Workflow) if payload == "function" else 0.0
        t1 = time.perf_counter()
        ids = pr.submit(wf)
        t2 = time.perf_counter()
        profilers = _start_profilers(profile_dir, f"{len(shape)}-{'pg' if db_url else 'sqlite'}")
        statuses = pr.wait(ids)
        t3 = time.perf_counter()
        _stop_profilers(profilers)
        summary = pr.status(ids[0])[0]
    finished = summary.quanta.get("finished", 0)  # a job unclustered is one quantum
    return {
        "jobs": summary.total, "quanta": len(shape), "seconds": t3 - t1, "submit_s": t2 - t1, "run_s": t3 - t2,
        "model_s": model_s, "setup_s": setup_s, "warm_s": warm_s, "status": statuses[ids[0]], "counts": summary.jobs,
        "ok": finished == len(shape) and statuses[ids[0]] == "Finished",
    }


def _warm_functions(pr: Any, job: Any, workflow: Any) -> float:
    """Run a few function jobs per pilot slot first, untimed: the Ray workers that run the calls
    start then, as raw Ray's are started before its timing."""
    t0 = time.perf_counter()
    slots = sum(site.pilots * site.slots for site in pr.catalog)
    warm = workflow(name="warm-functions", jobs=[job(name=f"warm{k}", label="warm", function=FUNCTION,
                                                     args=FUNCTION_ARGS, request_memory=100) for k in range(2 * slots)])
    pr.wait(pr.submit(warm))
    return time.perf_counter() - t0


def run_ray(n_jobs: int, payload: str = "noop") -> dict[str, Any]:
    import panray  # noqa: F401  (loopback environment)
    import ray
    from panray.dag import drp
    from panray.sites.topology import loopback_env

    loopback_env()
    shape = drp(n_jobs)
    order = _topological(shape)
    pos = {name: i for i, name in enumerate(shape.names)}
    parents = [[pos[p] for p in ps] for ps in shape.parents]
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",  # never another's cluster
             logging_level="WARNING", log_to_driver=False)

    @ray.remote
    def noop(*_parents: Any) -> Any:
        return math.hypot(*FUNCTION_ARGS) if payload == "function" else None

    ray.get([noop.remote() for _ in range(200)])  # warm the worker pool, as panray's pilots are warm
    t0 = time.perf_counter()
    refs: list[Any] = [None] * len(shape)
    for i in order:
        refs[i] = noop.remote(*[refs[p] for p in parents[i]])
    submit_s = time.perf_counter() - t0
    ray.get(refs)
    seconds = time.perf_counter() - t0
    ray.shutdown()
    return {"jobs": len(shape), "seconds": seconds, "submit_s": submit_s, "ok": True}


def _noop(*_parents: Any) -> None:
    return None


def run_threads(n_jobs: int) -> dict[str, Any]:
    """A stdlib thread-pool DAG executor: a node runs on one of 2 threads once its parents ended."""
    from concurrent.futures import ThreadPoolExecutor

    from panray.dag import drp

    shape = drp(n_jobs)
    pos = {name: i for i, name in enumerate(shape.names)}
    children: list[list[int]] = [[] for _ in range(len(shape))]
    for i, ps in enumerate(shape.parents):
        for p in ps:
            children[pos[p]].append(i)
    waiting = [len(ps) for ps in shape.parents]
    lock, done, ended = threading.Lock(), threading.Event(), [0]
    with ThreadPoolExecutor(max_workers=2) as pool:
        def run(i: int) -> None:
            math.hypot(*FUNCTION_ARGS)
            ready = []
            with lock:
                for c in children[i]:
                    waiting[c] -= 1
                    if not waiting[c]:
                        ready.append(c)
                ended[0] += 1
                if ended[0] == len(shape):
                    done.set()
            for c in ready:
                pool.submit(run, c)

        roots = [i for i in range(len(shape)) if not waiting[i]]  # before any node runs
        t0 = time.perf_counter()
        for i in roots:
            pool.submit(run, i)
        done.wait()
        seconds = time.perf_counter() - t0
    return {"jobs": len(shape), "seconds": seconds, "ok": ended[0] == len(shape)}


def run_parsl(n_jobs: int, payload: str = "noop") -> dict[str, Any]:
    """Parsl's ThreadPoolExecutor (2 threads, in-process): one app per node, its parents' futures as
    arguments. Without Parsl installed, the stdlib thread-pool executor stands in."""
    try:
        import parsl
        from parsl.app.app import python_app
        from parsl.config import Config
        from parsl.executors.threads import ThreadPoolExecutor
    except ImportError:
        return {**run_threads(n_jobs), "stand_in": "threads (parsl not installed)"}
    from panray.dag import drp

    shape = drp(n_jobs)
    pos = {name: i for i, name in enumerate(shape.names)}
    parents = [[pos[p] for p in ps] for ps in shape.parents]
    parsl.load(Config(executors=[ThreadPoolExecutor(max_threads=2, label="threads")], usage_tracking=0,
                      run_dir=tempfile.mkdtemp(prefix="parsl-bench-"), initialize_logging=False))

    @python_app
    def node(*_parents: Any) -> Any:
        return math.hypot(*FUNCTION_ARGS) if payload == "function" else None

    node().result()  # executor up
    t0 = time.perf_counter()
    futures: list[Any] = [None] * len(shape)
    for i in _topological(shape):
        futures[i] = node(*[futures[p] for p in parents[i]])
    for f in futures:
        f.result()
    seconds = time.perf_counter() - t0
    parsl.dfk().cleanup()
    parsl.clear()
    return {"jobs": len(shape), "seconds": seconds, "ok": True}


def run_dask(n_jobs: int) -> dict[str, Any]:
    from dask.distributed import Client, LocalCluster

    from panray.dag import drp

    shape = drp(n_jobs)
    has_child = {p for ps in shape.parents for p in ps}
    sinks = [n for n in shape.names if n not in has_child]
    dsk = {n: (_noop, *ps) for n, ps in zip(shape.names, shape.parents)}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        client.submit(_noop).result()  # workers up and warm
        t0 = time.perf_counter()
        client.get(dsk, sinks)
        seconds = time.perf_counter() - t0
    return {"jobs": len(shape), "seconds": seconds, "ok": True}


# -- py-spy around the panray actors ----------------------------------------------------------


def _descendants(root: int) -> set[int]:
    """pids of every process below ``root`` (this run's cluster only, not other Ray sessions)."""
    out = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True).stdout
    children: dict[int, list[int]] = {}
    for line in out.splitlines():
        pid, ppid = map(int, line.split())
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _actor_pids(timeout: float = 15.0) -> dict[str, int]:
    """pid of each panray actor process of this run, by its Ray process title ``ray::<Class>...``."""
    found: dict[str, int] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        mine = _descendants(os.getpid())
        out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
        for line in out.splitlines():
            pid, _, args = line.strip().partition(" ")
            for cls in PROFILED_ACTORS:
                if args.startswith(f"ray::{cls}") and int(pid) in mine:
                    found.setdefault(f"{cls}-{pid}", int(pid))
        if any(k.startswith("WorkflowManager") for k in found):
            break
        time.sleep(0.2)
    return found


def _start_profilers(profile_dir: str | None, tag: str) -> list[subprocess.Popen]:
    if not profile_dir:
        return []
    Path(profile_dir).mkdir(parents=True, exist_ok=True)
    targets = _actor_pids()
    targets[f"driver-{os.getpid()}"] = os.getpid()
    spy = str(Path(sys.executable).with_name("py-spy"))
    procs = []
    for name, pid in targets.items():
        out = Path(profile_dir) / f"{tag}-{name}.txt"
        procs.append(subprocess.Popen(
            [spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "100", "--threads",
             "--nonblocking", "--output", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return procs


def _stop_profilers(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.send_signal(signal.SIGINT)
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()


# -- the parent: one subprocess per run ------------------------------------------------------


def _child(spec: dict[str, Any]) -> None:
    system = spec["system"]
    if system == "panray":
        result = run_panray(spec["jobs"], spec.get("db_url"), spec.get("profile_dir"), spec.get("cluster"),
                            spec.get("metrics", True), spec.get("payload", "noop"))
    elif system == "ray":
        result = run_ray(spec["jobs"], spec.get("payload", "noop"))
    elif system == "threads":
        result = run_threads(spec["jobs"])
    elif system == "parsl":
        result = run_parsl(spec["jobs"], spec.get("payload", "noop"))
    else:
        result = run_dask(spec["jobs"])
    print(RESULT_TAG + json.dumps(result), flush=True)


def run_isolated(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter; returns its result plus the tree's peak RSS."""
    return common.run_isolated("benchmarks.dag_throughput", spec, timeout)


def _specs(n: int, backends: list[str], baselines: list[str], pg: Any, profile: str | None,
           cluster: str | None = None, metrics_cost: bool = False, payload: str = "noop") -> list[dict[str, Any]]:
    specs: list[dict[str, Any]] = []
    for k, backend in enumerate(backends):
        variants = [(None, True)] + ([(cluster, True)] if cluster else [])
        # alternate the order so that neither side always runs on a warmer machine
        if metrics_cost:
            variants[:1] = [(None, False), (None, True)][::1 if k % 2 == 0 else -1]
        for rules, metrics in variants:
            spec = {"system": "panray", "backend": backend, "jobs": n, "profile_dir": profile, "cluster": rules,
                    "metrics": metrics, "payload": payload}
            if backend == "postgres":
                spec["db_url"] = pg.create_database(f"bench_{n}_{int(time.time() * 1000)}")
            specs.append(spec)
    specs += [{"system": b, "backend": "-", "jobs": n, "payload": payload} for b in baselines]
    return specs


_BASELINES = ("ray", "dask", "threads", "parsl")


def _add_ratios(rows: list[dict[str, Any]]) -> None:
    for n in {r["jobs_requested"] for r in rows}:
        group = [r for r in rows if r["jobs_requested"] == n]
        ref = {r["system"]: r.get("nodes_per_s") for r in group if r["system"] in _BASELINES}
        for r in group:
            rate = r.get("nodes_per_s")
            for base in _BASELINES:
                r[f"vs_{base}"] = rate / ref[base] if rate and ref.get(base) else None
        plain = {r["backend"]: r.get("nodes_per_s") for r in group
                 if r["system"] == "panray" and not r.get("cluster") and r.get("metrics", True)}
        bare = {r["backend"]: r.get("nodes_per_s") for r in group if r["system"] == "panray" and r.get("metrics") is False}
        for r in group:
            rate, off = r.get("nodes_per_s"), bare.get(r["backend"])
            on = r["system"] == "panray" and r.get("metrics") and not r.get("cluster")
            r["slowdown"] = off / rate - 1 if on and rate and off else None
        for r in group:
            rate, ref_rate = r.get("nodes_per_s"), plain.get(r["backend"])
            r["vs_unclustered"] = rate / ref_rate if r.get("cluster") and rate and ref_rate else None


def measure(jobs: list[int], backends: list[str], baselines: list[str], profile: str | None,
            cluster: str | None = None, metrics_cost: bool = False, payload: str = "noop") -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    pg_ctx = postgres_server() if "postgres" in backends else None
    pg = pg_ctx.__enter__() if pg_ctx else None
    try:
        for n in jobs:
            for spec in _specs(n, backends, baselines, pg, profile, cluster, metrics_cost, payload):
                timeout = 300 + n / 50  # bounded: even a 50 nodes/s system ends
                label = (f"{spec['system']}/{spec['backend']}/{n}" + ("/clustered" if spec.get("cluster") else "")
                         + ("/metrics-off" if spec.get("metrics") is False else ""))
                print(f"-- running {label} ...", file=sys.stderr, flush=True)
                r = run_isolated({k: v for k, v in spec.items() if k != "backend"}, timeout)
                r.update(system=spec["system"], backend=spec["backend"], jobs_requested=n, cluster=spec.get("cluster"),
                         metrics=spec.get("metrics"))
                if r.get("seconds"):
                    r["nodes_per_s"] = r.get("quanta", r["jobs"]) / r["seconds"]  # DAG nodes are quanta
                print(f"   {label}: {json.dumps({k: v for k, v in r.items() if k != 'counts'})}",
                      file=sys.stderr, flush=True)
                rows.append(r)
    finally:
        if pg_ctx:
            pg_ctx.__exit__(None, None, None)
    _add_ratios(rows)
    return rows


COLUMNS = ["system", "backend", "cluster", "metrics", "quanta", "jobs", "seconds", "submit_s", "nodes_per_s", "vs_ray",
           "vs_parsl", "vs_dask", "vs_threads", "vs_unclustered", "slowdown", "peak_rss_mib", "ok"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, action="append", help="graph size (repeatable); default 10000")
    ap.add_argument("--backends", default="sqlite,postgres", help="panray state stores; '' for none")
    ap.add_argument("--baselines", default="ray,parsl", help="comparison systems among ray, parsl (Parsl's "
                    "ThreadPoolExecutor, in-process; the stdlib thread-pool executor when Parsl is not installed), "
                    "threads, dask; '' for none")
    ap.add_argument("--json", action="store_true", help="also print the result JSON on stdout")
    ap.add_argument("--profile", metavar="DIR", help="py-spy the panray processes into DIR")
    ap.add_argument("--cluster", metavar="RULES", help="also run panray with these clustering rules, e.g. "
                    "'single=isr+characterizeImage+calibrate@visit,detector;warp=makeWarp@visit' "
                    "(NAME=LABEL[+LABEL][@DIM,DIM][:MAX], ';'-separated)")
    ap.add_argument("--payload", choices=["noop", "function"], default="noop",
                    help="no-op jobs, or a trivial Python function per node (function jobs as Ray tasks)")
    ap.add_argument("--metrics-cost", action="store_true", help="also run panray with metrics off (same run)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(json.loads(args.child))
        return 0
    backends = [b for b in args.backends.split(",") if b]
    baselines = [b for b in args.baselines.split(",") if b]
    info, vers = machine_info(), versions()
    what = "no-op jobs" if args.payload == "noop" else f"function jobs ({FUNCTION}{tuple(FUNCTION_ARGS)})"
    print_header(f"dag_throughput: DRP-shaped DAG of {what}", info, vers)
    rows = measure(args.jobs or [10_000], backends, baselines, args.profile, args.cluster, args.metrics_cost, args.payload)
    print(format_table(rows, COLUMNS))
    payload = {"benchmark": "dag_throughput", "machine": info, "versions": vers, "results": rows}
    path = write_json("dag_throughput", payload)
    print(f"results: {path}")
    if args.json:
        print(json.dumps(payload, indent=2, default=str))
    return 0 if all(r.get("ok") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
