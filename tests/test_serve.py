"""``panray serve``: a submitting process exits while its run goes on; ``--stop`` ends everything."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import yaml

from panray_server import panray, running_server


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PANRAY_")}
    return {**env, "PANRAY_HOME": str(home)}


@pytest.mark.slow
def test_submit_no_wait_runs_on_the_server_after_the_client_exits(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = _env(home)
    marker = tmp_path / "done.txt"
    wf = tmp_path / "wf.yaml"
    wf.write_text(yaml.safe_dump({"name": "served", "jobs": [
        {"name": "a", "label": "a", "command": "sleep 2", "request_memory": 100},
        {"name": "b", "label": "b", "command": f"echo ok > {marker}", "parents": ["a"], "request_memory": 100},
    ]}))
    with running_server(home, env):
        started = time.monotonic()
        sub = panray("submit", str(wf), "--no-wait", env=env)
        assert sub.returncode == 0, sub.stdout + sub.stderr
        assert time.monotonic() - started < 60
        wf_id = int(sub.stdout.split()[-1])
        deadline = time.monotonic() + 120
        while True:  # the submitting process has exited: only the server drives the run now
            st = panray("status", str(wf_id), "--json", env=env)
            assert st.returncode == 0, st.stderr
            [row] = json.loads(st.stdout)
            if row["status"] in ("Finished", "SubFinished", "Failed", "Cancelled"):
                break
            assert time.monotonic() < deadline, f"workflow still {row['status']}"
            time.sleep(0.3)
        assert row["status"] == "Finished" and marker.read_text() == "ok\n"
        assert panray("serve", env=env).returncode == 2  # one server per home


def test_stop_without_server(tmp_path: Path) -> None:
    out = panray("serve", "--stop", env=_env(tmp_path))
    assert out.returncode == 1 and "no panray server runs" in out.stderr
