"""The embedded cluster's layout: one raylet carrying every site by default, one per site on demand."""

from __future__ import annotations

import subprocess
import sys

import ray

from panray import Panray, Settings
from panray.sites.topology import SITE_LABEL, SITE_PREFIX, SITE_UNITS, site_nodes


def test_embedded_default_is_one_raylet_carrying_every_site(cluster: Panray) -> None:
    alive = [n for n in ray.nodes() if n["Alive"]]
    assert len(alive) == 1, [n["NodeID"] for n in alive]
    [node] = alive
    sites = cluster.catalog.names()
    assert {k: v for k, v in node["Resources"].items() if k.startswith(SITE_PREFIX)} == {
        SITE_PREFIX + s: float(SITE_UNITS) for s in sites}
    assert node["Labels"][SITE_LABEL] == ".".join(sites)
    assert site_nodes() == {s: [node["NodeID"]] for s in sites}
    pilots = ray.get(cluster.runtime.brokerage.sites.remote())
    assert sorted(r["site"] for r in pilots if r["pilots"]) == sorted(sites)  # every site got its pilots


def test_nodes_per_site_is_a_setting() -> None:
    assert Settings.load(env={"PANRAY_NODES_PER_SITE": "1"}).nodes_per_site is True
    assert Settings.load(env={}).nodes_per_site is False


def test_a_one_shot_cluster_starts_no_log_monitor_and_no_autoscaler(cluster: Panray) -> None:
    """Without the dashboard nobody reads them; each is a Python process of ~80 MiB and ~1 s of CPU to start."""
    assert cluster.settings.dashboard is not True, "the session's cluster runs without the dashboard"
    running = set(cluster.runtime.cluster.head_node.all_processes)
    assert {"gcs_server", "raylet"} <= running, running
    assert not {"log_monitor", "monitor"} & running, running


def test_a_site_queue_process_imports_no_pydantic() -> None:
    """Every actor process pays its imports at start; the queue needs only names and dispatches."""
    code = ("import sys, ray, panray.actors.site_queue; "
            "print(sorted(set(sys.modules) & {'pydantic', 'fastapi', 'google.cloud'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.splitlines()[-1] == "[]", out.stdout
