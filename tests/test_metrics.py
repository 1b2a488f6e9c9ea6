"""panray's metrics come back from Ray's own Prometheus endpoints and agree with the store."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import ray
import yaml
from prometheus_client.parser import text_string_to_metric_families

from panray import Job, Panray, Workflow
from panray.actors.metrics import sample, status_changes
from panray.actors.names import manager_name


def _scrape() -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every ``ray_panray_*`` sample of every alive node's metrics export port (HTTP on 127.0.0.1)."""
    out: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for node in ray.nodes():
        if not node["Alive"]:
            continue
        url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
        with urllib.request.urlopen(url, timeout=10) as resp:
            text = resp.read().decode()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name.startswith("ray_panray_"):
                    out[s.name].append((s.labels, s.value))
    return out


def _total(samples: list[tuple[dict[str, str], float]], by: str, **match: str) -> dict[str, float]:
    """Sum of the samples whose tags equal ``match``, grouped by tag ``by`` (over workers and nodes)."""
    acc: dict[str, float] = Counter()
    for labels, value in samples:
        if all(labels.get(k) == v for k, v in match.items()):
            acc[labels.get(by, "")] += value
    return {k: v for k, v in acc.items() if v}


@pytest.mark.slow
def test_status_gauges_match_the_store_after_a_run_with_failures(cluster: Panray) -> None:
    jobs = [Job(name=f"ok:{k}", label="ok", command=["true"], request_memory=100) for k in range(6)]
    jobs += [Job(name=f"flaky:{k}", label="flaky", command="exit 3", max_attempts=2, request_memory=100)
             for k in range(3)]
    jobs += [Job(name="broken", label="broken", command="exit 1", request_memory=100)]
    jobs += [Job(name=f"after:{k}", label="after", parents=["broken"], command=["true"]) for k in range(4)]
    wf = Workflow(name="metrics", jobs=jobs, final_job=Job(name="final", label="finalJob", command=["true"]))
    [wf_id] = cluster.submit(wf)
    assert cluster.wait([wf_id], timeout=180) == {wf_id: "SubFinished"}
    store = dict(Counter(j.status for j in cluster.jobs(wf_id)))
    assert store == {"finished": 7, "failed": 4, "closed": 4}
    by_label = Counter((j.label, j.status) for j in cluster.jobs(wf_id))

    me = {"store": manager_name(cluster.settings.resolved_db_url, wf_id).split(":")[1], "workflow": str(wf_id)}
    deadline = time.monotonic() + 60  # workers push to their node's exporter every 2 s
    while True:
        m = _scrape()
        gauges = _total(m["ray_panray_jobs"], "status", **me)
        retries = _total(m.get("ray_panray_retries_total", []), "error_class", **me)
        failed = _total(m.get("ray_panray_jobs_failed_total", []), "error_class")
        # this run's seven failed attempts (3 flaky x 2, broken), plus any earlier test's
        if gauges == store and retries == {"payload": 3} and failed.get("payload", 0) >= 7:
            break
        assert time.monotonic() < deadline, (gauges, store, retries, failed)
        time.sleep(0.5)
    for (label, status), n in by_label.items():
        assert _total(m["ray_panray_jobs"], "status", **me, label=label) == {status: n}
    assert set(_total(m["ray_panray_jobs_finished_total"], "site")) <= {"USDF", "FrDF", "UKDF"}
    slots = _total(m["ray_panray_pilot_slots"], "state")
    assert slots.get("free", 0) > 0 and set(slots) <= {"busy", "free"}
    assert _total(m["ray_panray_site_queued"], "site") == {} or set(_total(m["ray_panray_site_queued"], "site")) <= {
        "USDF", "FrDF", "UKDF"}
    counts = _total(m["ray_panray_dispatch_latency_seconds_count"], "workflow", **me)
    assert 0 < counts[str(wf_id)] <= 15 + 3  # every attempt at most once (sampled per report batch)
    assert _total(m["ray_panray_store_write_seconds_count"], "workflow", **me)[str(wf_id)] >= 1
    assert all("job" not in k for labels, _ in m["ray_panray_jobs"] for k in labels)  # no job ids as tags


def test_gauges_send_only_changes_and_zero_what_left() -> None:
    statuses = ["pending", "running", "finished"]
    labels = ["isr", "isr", "calib"]  # a label split into two task chunks counts once
    changed, last = status_changes({}, labels, [[2, 1, 0], [0, 1, 0], [3, 0, 0]], statuses)
    assert changed == {("isr", "pending"): 2, ("isr", "running"): 2, ("calib", "pending"): 3}
    changed, last = status_changes(last, labels, [[2, 0, 1], [0, 1, 0], [3, 0, 0]], statuses)
    assert changed == {("isr", "running"): 1, ("isr", "finished"): 1}
    changed, last = status_changes(last, labels, [[0, 0, 3], [0, 0, 1], [0, 0, 3]], statuses)
    assert changed == {("isr", "finished"): 4, ("calib", "finished"): 3, ("isr", "pending"): 0,
                       ("isr", "running"): 0, ("calib", "pending"): 0}
    assert last == {("isr", "finished"): 4, ("calib", "finished"): 3}
    assert sample(list(range(100)), 4) == [0, 25, 50, 75]


def test_shipped_grafana_dashboard_and_scrape_config_name_panray_metrics() -> None:
    configs = Path(__file__).parents[1] / "configs"
    dash = json.loads((configs / "grafana-panray.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {re.sub(r"_(bucket|count|sum)$", "", n) for e in exprs for n in re.findall(r"ray_panray_\w+", e)}
    source = (Path(__file__).parents[1] / "actors" / "metrics.py").read_text()
    defined = {"ray_" + n for n in re.findall(r'_metric\("\w+", "(panray_\w+)"', source)}
    assert used == defined, (used ^ defined)  # every metric drawn, none misspelt
    prom = yaml.safe_load((configs / "prometheus.yaml").read_text())
    [job] = prom["scrape_configs"]
    assert job["file_sd_configs"][0]["files"] == ["/tmp/ray/prom_metrics_service_discovery.json"]
