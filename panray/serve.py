"""``panray serve``: one long-lived panray system that separate processes share.

An embedded cluster lives only as long as the process that started it, so ``bps submit`` or
``panray submit`` has to wait for its run. ``panray serve`` keeps the cluster (its own embedded
3-site cluster, or the one ``PANRAY_RAY_ADDRESS`` names) and panray's actors up, detached in the
``panray`` namespace, until SIGTERM/SIGINT or ``panray serve --stop``. Clients find it through
``PANRAY_HOME/cluster.json`` (or ``PANRAY_RAY_ADDRESS``); the workflow managers they start are
detached too, so a submitting process may exit while its run goes on.

``cluster.json`` holds ``address``, ``pid`` and, for a server, ``serve: true``, the process'
start time (so a reused pid is not taken for the server), whether it owns the cluster and the
URL of Ray's dashboard (or null).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from panray.config import Settings
from panray.exceptions import PanrayError
from panray.home import write_private

CLUSTER_FILE = "cluster.json"


def _cluster_file(settings: Settings) -> Path:
    return settings.home / CLUSTER_FILE


def _alive(pid: int, started: float | None = None) -> bool:
    """The process runs (a zombie has ended) and, if ``started`` is given, is that same process."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or abs(proc.create_time() - started) < 1.0
    except psutil.Error:
        return False


def _read(settings: Settings) -> dict[str, Any] | None:
    try:
        info = json.loads(_cluster_file(settings).read_text())
        pid = int(info["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return info if _alive(pid, info.get("started")) else None


def cluster_owner(settings: Settings) -> dict[str, Any] | None:
    """``cluster.json`` of the live panray process (a server, or an embedded run) of this home."""
    return _read(settings)


def server_info(settings: Settings) -> dict[str, Any] | None:
    """``cluster.json`` of a live ``panray serve`` in this home, else None."""
    info = _read(settings)
    return info if info and info.get("serve") else None


def persistent(settings: Settings) -> bool:
    """Runs submitted now outlive the submitting process (a server, or a cluster named by address)."""
    return settings.ray_address is not None or server_info(settings) is not None


def _cluster_address() -> str:
    import ray

    return str(ray.get_runtime_context().gcs_address)


def _kill_panray_actors() -> None:
    """Detached actors outlive their creator: on a cluster we do not own, stop panray's by name."""
    import ray

    from panray.actors.names import NAMESPACE, SUPERVISOR_NAME

    entries = [e for e in ray.util.list_named_actors(all_namespaces=True) if e["namespace"] == NAMESPACE]
    for entry in sorted(entries, key=lambda e: e["name"] != SUPERVISOR_NAME):  # first, or it restarts pilots
        try:
            ray.kill(ray.get_actor(entry["name"], namespace=NAMESPACE), no_restart=True)
        except ValueError:
            pass  # already gone


def serve(settings: Settings) -> int:
    """Start (or join) the cluster with detached actors and block until told to stop."""
    from panray.runtime import connect
    from panray.server import FrontDoor

    existing = _read(settings)
    if existing is not None:
        what = "panray server" if existing.get("serve") else "panray process with an embedded cluster"
        raise PanrayError(f"a {what} (pid {existing['pid']}, {existing['address']}) already runs in "
                          f"{settings.home}; stop it first or use another PANRAY_HOME")
    stop = threading.Event()

    def on_signal(*_: object) -> None:
        stop.set()

    signals = (signal.SIGTERM, signal.SIGINT)
    previous = {sig: signal.signal(sig, on_signal) for sig in signals}  # a stop while starting still cleans up
    rt = connect(settings, start=True, detached=True)
    owns = rt.cluster is not None
    http = None
    try:
        for sig in signals:  # ray.init may have installed its own handlers
            signal.signal(sig, on_signal)
        address = _cluster_address()
        http = FrontDoor.open(settings, rt)  # the HTTP API; the local user's token in the home
        me = psutil.Process()
        write_private(_cluster_file(settings), json.dumps({
            "address": address, "pid": me.pid, "started": me.create_time(), "serve": True, "owns_cluster": owns,
            "url": http.url,
            "dashboard": rt.dashboard_url,
        }))
        print(f"panray serving {', '.join(rt.catalog.names())} on {address} "
              f"({'embedded' if owns else 'joined'}; home {settings.home})\n"
              f"reach it with PANRAY_HOME={settings.home} or PANRAY_RAY_ADDRESS={address}\n"
              f"HTTP API on {http.url} (PANRAY_URL={http.url}; `panray token` prints a token)\n"
              f"Ray dashboard: {rt.dashboard_url or 'none (the cluster runs none; dashboard: false?)'}\n"
              "stop with `panray serve --stop` or SIGTERM", flush=True)
        if os.geteuid() == 0 and settings.payload_user is None:
            print("warning: payloads run as root and can read this home; set payload_user (PANRAY_PAYLOAD_USER)",
                  file=sys.stderr, flush=True)
        while not stop.wait(1.0):
            pass
        print("panray server stopping", flush=True)
    finally:
        if http is not None:
            http.close()
        if not owns:
            _kill_panray_actors()
        rt.shutdown()  # embedded: disconnects, stops every raylet and removes cluster.json
        if not owns:
            _cluster_file(settings).unlink(missing_ok=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def stop_server(settings: Settings, timeout: float = 120.0) -> int:
    """SIGTERM the server of this home and wait until its process has ended.

    Work still running is named first (its payloads end with the server), and once the server
    is gone the store is brought to what a restarted manager would find: jobs that were on
    pilots failed as system errors and retried, queued ones back to wait, so ``panray resume``
    (after the next ``panray serve``) runs them on and the store no longer says ``running``.
    """
    from panray.store import open_store

    info = server_info(settings)
    if info is None:
        print(f"no panray server runs in {settings.home}", file=sys.stderr)
        return 1
    store = open_store(settings.resolved_db_url)
    try:
        warning = running_work(store)
        if warning:
            print(f"warning: {warning}", file=sys.stderr, flush=True)
        pid = int(info["pid"])
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid, info.get("started")):
            if time.monotonic() > deadline:
                raise PanrayError(f"panray server pid {pid} still runs {timeout:.0f} s after SIGTERM")
            time.sleep(0.2)
        print(f"panray server pid {pid} stopped")
        settled = settle(store)
        if settled:
            print(f"stored workflows {', '.join(map(str, settled))} as interrupted: `panray resume` after the next "
                  "`panray serve` runs them on")
    finally:
        store.close()
    return 0


def running_work(store: Any) -> str:
    """What stopping would interrupt, in one line ("" if nothing runs)."""
    from panray.statuses import HELD_BY_PILOT

    active = store.workflows(active_only=True)
    if not active:
        return ""
    held = {s.value for s in HELD_BY_PILOT}
    on_pilots = sum(n for w in active for counts in store.job_counts(w.workflow_id).values()
                    for s, n in counts.items() if s in held)
    return (f"workflows {', '.join(str(w.workflow_id) for w in active)} are not finished ({on_pilots} jobs on "
            "pilots): their payloads end with the server; their jobs are stored back to wait (the interrupted "
            "ones as system errors, not counted against max_attempts) and nothing finished is lost")


def settle(store: Any, now: float | None = None) -> list[int]:
    """After the server stopped: store every unfinished workflow as its restarted manager would
    (:meth:`WorkflowCore.start`); returns the workflows changed."""
    from panray.core.cluster_core import make_core
    from panray.statuses import HELD_BY_PILOT, JobStatus

    now = time.time() if now is None else now
    placed = {s.value for s in HELD_BY_PILOT} | {JobStatus.ASSIGNED.value, JobStatus.ACTIVATED.value}
    changed = []
    for w in store.workflows(active_only=True):
        if not any(s in placed for counts in store.job_counts(w.workflow_id).values() for s in counts):
            continue  # nothing of it was on a pilot or in a queue: its manager starts it as it is
        core = make_core(store.load_workflow(w.workflow_id))
        core.start(now)
        batch = core.drain_changes(now)
        if batch.jobs:
            store.apply(batch)
            changed.append(w.workflow_id)
    return changed
