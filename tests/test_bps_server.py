"""The bps plugin against a panray server: run ids ``<id>@http://host:port``, the token from the environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from panray.bps import RUN_FILE, RunRef
from panray.config import Settings
from panray.exceptions import PanrayError
from panray.identity import Role
from panray.server import HttpServer
from panray.server.auth import issue_token

BPS = [str(Path(sys.executable).parent / "bps")]


def test_run_ids_name_a_server_and_run_files_only_the_configured_one(tmp_path: Path) -> None:
    env = {"PANRAY_HOME": str(tmp_path), "PANRAY_URL": "http://127.0.0.1:8470"}
    ref = RunRef.parse("7", env)
    assert (ref.url, ref.run_id) == ("http://127.0.0.1:8470", "7@http://127.0.0.1:8470")
    assert RunRef.parse("7@https://panray.example:443/", {}).url == "https://panray.example:443"

    submit = tmp_path / "submit"
    submit.mkdir()
    (submit / RUN_FILE).write_text(json.dumps({"run_id": "7@http://127.0.0.1:8470"}))
    assert RunRef.parse(str(submit), env).url == "http://127.0.0.1:8470"
    for info, what in (({"run_id": "7@http://10.9.8.7:8470"}, "names the server http://10.9.8.7:8470"),
                       ({"run_id": "7", "ray_address": "10.9.8.7:6379"}, "names the Ray cluster 10.9.8.7:6379"),
                       ({"run_id": f"7@{tmp_path / 'elsewhere'}"}, "names the state store")):
        (submit / RUN_FILE).write_text(json.dumps(info))
        with pytest.raises(PanrayError, match=what):
            RunRef.parse(str(submit), {"PANRAY_HOME": str(tmp_path)})


def _bps(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BPS, *args], capture_output=True, text=True, timeout=180, env=env)


@pytest.mark.slow
def test_bps_submit_report_cancel_against_a_server(http_server: HttpServer, server_settings: Settings,
                                                    tmp_path: Path) -> None:
    """A user who runs no panray: only PANRAY_URL and PANRAY_TOKEN; another user's cancel is refused."""
    token = issue_token(server_settings, "carol", [Role.USER], hours=1)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PANRAY_")},
           "PANRAY_HOME": str(tmp_path / "home"), "PANRAY_URL": http_server.url, "PANRAY_TOKEN": token,
           "BPS_WMS_SERVICE_CLASS": "panray.bps.PanrayService"}
    config = tmp_path / "cmd.yaml"
    config.write_text(f"wmsServiceClass: panray.bps.PanrayService\nproject: test\ncampaign: panray\n"
                      f"payloadName: bps_server\noperator: carol\nsubmitPath: {tmp_path / 'submit'}\n"
                      "customJob:\n  executable: /bin/sleep\n  arguments: '120'\n")
    out = _bps("submitcmd", str(config), env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    run_id = next(line.split(":", 1)[1].strip() for line in out.stdout.splitlines() if line.startswith("Run Id"))
    assert run_id.endswith(f"@{http_server.url}")
    wf_id = RunRef.parse(run_id, {}).workflow_id

    with httpx.Client(base_url=http_server.url + "/api/v1", headers={"Authorization": f"Bearer {token}"}) as c:
        assert c.get(f"/workflows/{wf_id}").json()["owner"] == "carol"
        deadline = time.monotonic() + 60
        while [r[7] for r in c.get(f"/workflows/{wf_id}/jobs").json()["rows"]] != ["running"]:
            assert time.monotonic() < deadline, "the payload never started"
            time.sleep(0.2)
        rep = _bps("report", "--id", run_id, env=env)
        assert rep.returncode == 0 and "RUNNING" in rep.stdout, rep.stdout + rep.stderr

        dave = {**env, "PANRAY_TOKEN": issue_token(server_settings, "dave", [Role.USER], hours=1)}
        refused = _bps("cancel", "--id", run_id, env=dave)
        assert f"only the owner (carol) or role production may cancel workflow {wf_id}" in refused.stdout + refused.stderr
        assert c.get(f"/workflows/{wf_id}").json()["cancelled"] is False

        cancelled = _bps("cancel", "--id", run_id, env=env)
        assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
        status = c.get(f"/workflows/{wf_id}/wait", params={"timeout": 30}).json()["status"]
        assert status == "Cancelled"
