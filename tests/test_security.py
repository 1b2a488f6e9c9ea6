"""Ray stays private, and locked: file modes, Ray's token, and what a payload can reach.

Repeats the attack of issue 12: a process that knows only the address in ``cluster.json`` must
not get into the cluster, and a payload must not reach the store, the cluster or the server with
its owner's rights.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from panray import Job, Panray, Workflow
from panray.actors.payload_runner import clean_environment
from panray.home import private_dir, write_private
from panray.store import open_store

#: The variables panray itself sets for a payload: the job's identity, no credential.
JOB_IDENTITY = {"PANRAY_JOB_ID", "PANRAY_ATTEMPT", "PANRAY_WORKFLOW_ID", "PANRAY_SITE", "PANRAY_LABEL",
                "PANRAY_WORK_DIR"}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_home_and_state_file_are_created_private(tmp_path: Path) -> None:
    old = os.umask(0)  # modes come from the create calls, not from a careful umask
    try:
        home = tmp_path / "home"
        store = open_store(f"sqlite:///{home}/panray.db")  # creates the schema: -wal and -shm exist while open
        write_private(home / "cluster.json", "{}")
        modes = {p.name: _mode(p) for p in home.iterdir()}
        store.close()
    finally:
        os.umask(old)
    assert _mode(home) == 0o700
    assert modes == {"panray.db": 0o600, "panray.db-wal": 0o600, "panray.db-shm": 0o600, "cluster.json": 0o600}


def test_an_existing_open_home_is_tightened(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    os.chmod(home, 0o755)
    assert _mode(private_dir(home)) == 0o700


def test_clean_environment_drops_credentials_and_addresses() -> None:
    inherited = {"PATH": "/usr/bin", "HOME": "/home/alice", "PANRAY_DB": "postgresql://u:pw@db/panray",
                 "PANRAY_TOKEN": "t", "RAY_ADDRESS": "head:6379", "RAY_AUTH_TOKEN_PATH": "/x/ray_token",
                 "PGPASSWORD": "pw", "BEARER_TOKEN": "jwt"}
    assert clean_environment(inherited) == {"PATH": "/usr/bin", "HOME": "/home/alice"}


def _print_environment_job() -> Job:
    script = "import json, os; print(json.dumps({'env': dict(os.environ), 'cwd': os.getcwd()}))"
    return Job(name="env", label="env", command=[sys.executable, "-c", script], environment={"MY_VAR": "mine"},
               request_memory=500)


def _payload_output(work_dir: Path, wf_id: int, job_id: int) -> dict:
    [path] = work_dir.glob(f"*_{wf_id}/{job_id}.1/payload.stdout")
    return json.loads(path.read_text())


@pytest.mark.slow
def test_payload_environment_has_no_panray_or_ray_credentials(cluster: Panray) -> None:
    import ray

    worker_env = ray.get(ray.remote(num_cpus=0)(lambda: dict(os.environ)).remote())
    assert worker_env.get("RAY_AUTH_MODE") == "token" and "RAY_AUTH_TOKEN_PATH" in worker_env  # what pilots hold

    [wf] = cluster.submit(Workflow(name="env", jobs=[_print_environment_job()]))
    assert cluster.wait([wf], timeout=120) == {wf: "Finished"}
    [job] = cluster.jobs(wf)
    out = _payload_output(cluster.settings.work_dir, wf, job.job_id)
    env = out["env"]
    assert {k for k in env if k.startswith("PANRAY_")} == JOB_IDENTITY
    assert not [k for k in env if k.startswith("RAY_")]
    assert env["MY_VAR"] == "mine" and env["PANRAY_JOB_ID"] == str(job.job_id)
    home = cluster.settings.home.resolve()
    assert home not in Path(out["cwd"]).resolve().parents


_ATTACKER = textwrap.dedent("""
    import sys, ray
    ray.init(address=sys.argv[1], logging_level="ERROR")
    print("CONNECTED", sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)))
""")


def _attacker(address: str, **extra: str) -> subprocess.Popen[str]:
    """A process with only the address and a clean environment (plus Ray's loopback switch)."""
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/"), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           **extra}
    return subprocess.Popen([sys.executable, "-c", _ATTACKER, address], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_cluster_address_alone_does_not_let_a_process_in(cluster: Panray, panray_home: Path) -> None:
    home = panray_home
    assert _mode(home) == 0o700
    assert _mode(home / "cluster.json") == 0o600 and _mode(home / "ray_token") == 0o600
    address = json.loads((home / "cluster.json").read_text())["address"]
    tries = {"no token": _attacker(address),
             "wrong token": _attacker(address, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * 64),
             "the token": _attacker(address, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(home / "ray_token"))}
    results = {name: (p.communicate(timeout=120), p.returncode) for name, p in tries.items()}
    for name in ("no token", "wrong token"):
        (out, err), code = results[name]
        assert code != 0 and "CONNECTED" not in out, (name, out)
        assert "AuthenticationError" in err or "InvalidAuthToken" in err, (name, err[-2000:])
    (out, err), code = results["the token"]
    assert code == 0 and "brokerage" in out, err[-2000:]  # the control: same address, with the token
