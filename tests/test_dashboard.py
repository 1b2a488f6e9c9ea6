"""Ray's dashboard for operators: ``panray serve`` runs it on 127.0.0.1, and its API lists panray's
named actors with reprs that say what they hold, nodes labelled with their site, and function
jobs as Ray tasks named after the jobs."""

from __future__ import annotations

import json
import os
import re
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from panray.ray_auth import TOKEN_FILE

from panray_server import panray, running_server

REPRS = {
    "brokerage": r"Brokerage\(3 sites, \d+ pilots\)",
    "site-queue:": r"SiteQueue\((USDF|FrDF|UKDF): [\d,]+ queued\)",
    "pilot:": r"Pilot\((USDF|FrDF|UKDF)#\d+: \d+/\d+ slots busy\)",
    "supervisor": r"Supervisor\(3 sites, \d+ pilots\)",
}


def _get(url: str, token: str) -> Any:
    """A dashboard API call; Ray's token authentication (on for panray's clusters) wants the token."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())


def _state(base: str, what: str, token: str) -> list[dict[str, Any]]:
    """One listing of Ray's state API (``/api/v0/actors``, ``/api/v0/nodes``) through the dashboard."""
    return _get(f"{base}/api/v0/{what}?detail=1&limit=1000", token)["data"]["result"]["result"]


@pytest.mark.slow
def test_serve_dashboard_shows_panray_actors_and_sites(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PANRAY_")}
    env |= {"PANRAY_HOME": str(home), "PANRAY_DASHBOARD_PORT": "0",  # 0: never collide with another session's
            "PANRAY_NODES_PER_SITE": "1"}  # a node per site: each node's label names one site
    with running_server(home, env) as info:
        base = str(info["dashboard"])
        token = (home / TOKEN_FILE).read_text().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", base), base
        deadline = time.monotonic() + 60
        while True:  # the state API answers once the dashboard has read the cluster's actor table
            actors = {a["name"]: a for a in _state(base, "actors", token) if a["ray_namespace"] == "panray" and a["name"]}
            if "brokerage" in actors and sum(n.startswith("pilot:") for n in actors) >= 3:
                break
            assert time.monotonic() < deadline, sorted(actors)
            time.sleep(0.5)
        for name, actor in actors.items():
            [pattern] = [p for prefix, p in REPRS.items() if name.startswith(prefix)]
            assert re.fullmatch(pattern, actor["repr_name"]), (name, actor["repr_name"])
            assert actor["state"] == "ALIVE"
        assert {n for n in actors if n.startswith("site-queue:")} == {f"site-queue:{s}" for s in ("USDF", "FrDF", "UKDF")}
        site_of = {n["node_id"]: n["labels"].get("panray.io/site") for n in _state(base, "nodes", token)}
        assert sorted(site_of.values()) == ["FrDF", "UKDF", "USDF"]
        for name, actor in actors.items():  # a site's queue and pilots run on that site's node
            m = re.match(r"(?:site-queue|pilot):(\w+)", name)
            if m:
                assert site_of[actor["node_id"]] == m.group(1), name

        wf = tmp_path / "functions.yaml"  # tests/ is on the PYTHONPATH the server's nodes start with
        wf.write_text(yaml.safe_dump({"name": "fn", "jobs": [
            {"name": "measure:3", "label": "measure", "function": "fn_payloads:measure", "args": [3, 1],
             "site": "FrDF", "request_memory": 100},
            {"name": "measure:4", "label": "measure", "function": "fn_payloads:measure", "args": [4, 1],
             "parents": ["measure:3"], "request_memory": 100},
        ]}))
        sub = panray("submit", str(wf), env=env, timeout=300)
        assert sub.returncode == 0, sub.stdout + sub.stderr
        deadline = time.monotonic() + 60  # task events reach the state API within seconds
        while True:
            listed = _state(base, "tasks", token)  # Ray's state API, through the dashboard, with the token
            tasks = {n: [(t["state"], t["node_id"]) for t in listed if t["name"] == n] for n in ("measure:3", "measure:4")}
            if all(v and v[0][0] == "FINISHED" for v in tasks.values()):
                break
            assert time.monotonic() < deadline, tasks
            time.sleep(0.5)
        assert site_of[tasks["measure:3"][0][1]] == "FrDF"  # on a node of the job's site
