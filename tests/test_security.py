"""Ray stays private, and locked: file modes, Ray's token, and what a payload can reach.

Repeats the attack of issue 12: a process that knows only the address in ``cluster.json`` must
not get into the cluster, and a payload must not reach the store, the cluster or the server with
its owner's rights.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from panray import Job, Panray, Settings, Workflow
from panray.core.payload_runner import clean_environment
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


def test_an_unknown_payload_user_is_one_config_error() -> None:
    from panray.exceptions import ConfigError
    from panray.runtime import _check_payload_user

    with pytest.raises(ConfigError, match="payload_user 'no-such-user-x': no such user"):
        _check_payload_user(Settings(payload_user="no-such-user-x"))


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


@pytest.mark.slow
def test_the_ray_token_is_in_no_log_or_environment(cluster: Panray, panray_home: Path) -> None:
    import psutil
    import ray

    token = (panray_home / "ray_token").read_bytes().strip()
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    files = [p for p in logs.rglob("*") if p.is_file()]
    assert len(files) > 5  # raylets, GCS, workers of three nodes
    assert [p.name for p in files if token in p.read_bytes()] == []
    for proc in psutil.Process().children(recursive=True):  # raylets, GCS, workers: the path, not the token
        try:
            env = proc.environ()
        except psutil.Error:
            continue
        assert token.decode() not in env.values(), proc.name()


# ---------------------------------------------------------------------------------------------
# A server whose payloads run as `nobody`: the attack from inside a job.
# ---------------------------------------------------------------------------------------------

_PAYLOAD_USER = "nobody"


def _reachable_by_others(path: Path) -> bool:
    """Every directory up to ``path`` lets other users through, and ``path`` lets them read."""
    path = path.resolve()
    return all(_mode(p) & 0o001 for p in path.parents) and bool(_mode(path) & 0o004)


def _payload_python() -> str:
    """An interpreter ``nobody`` may run: ours, or the system's of the same version (with our site dir)."""
    if _reachable_by_others(Path(sys.executable)):
        return sys.executable
    system = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
    if system.exists() and _reachable_by_others(system):
        return str(system)
    pytest.fail(f"no Python interpreter that user {_PAYLOAD_USER} may run (ours, {sys.executable}, is private)")


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system
        shutil.copy2(src, dst)


def _payload_site(base: Path) -> str:
    """A site dir ``nobody`` may read: ours, or hard links to it and to panray's sources under ``base``.

    A checkout in a private directory (``mktemp -d``) is out of the payload user's reach, as is its venv.
    """
    import sysconfig
    import tomllib

    import panray

    purelib = Path(sysconfig.get_paths()["purelib"])
    root = Path(panray.__file__).resolve().parent.parent
    if _reachable_by_others(purelib) and _reachable_by_others(root):
        return str(purelib)
    site = base / "site"
    shutil.copytree(purelib, site, copy_function=_link_or_copy, ignore=shutil.ignore_patterns("__editable__*"))
    folders = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for package, folder in sorted(folders.items()):  # "panray" before its subpackages
        shutil.copytree(root / folder, site / package.replace(".", "/"), copy_function=_link_or_copy,
                        ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
    return str(site)


def _python_line(site: str, code: str) -> str:
    """A ``python -c`` program that sees this test's packages (panray, ray) from any interpreter."""
    return f"import site; site.addsitedir({site!r})\n{code}"


_INSIDER = """
import json, os, subprocess, sys
home, victim, address, python = sys.argv[1:5]
report = {"uid": os.getuid(), "env": sorted(os.environ), "cwd": os.getcwd(), "reads": {}}
for name in ("ray_token", "cluster.json", "panray.db"):
    try:
        with open(os.path.join(home, name), "rb") as f:
            f.read(1)
        report["reads"][name] = "read"
    except OSError as exc:
        report["reads"][name] = type(exc).__name__
def run(code, env):
    p = subprocess.run([python, "-c", PRELUDE + code], env={**os.environ, **env}, capture_output=True,
                       text=True, timeout=150)
    return [p.returncode, p.stdout, p.stderr[-1500:]]
report["cancel"] = run("import sys; from panray.cli import main; sys.exit(main(['--home', %r, 'cancel', %r]))"
                       % (home, victim), {"PANRAY_HOME": home})
report["ray"] = run("import ray; ray.init(address=%r); print('CONNECTED')" % address,
                    {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token",
                     "RAY_AUTH_TOKEN_PATH": os.path.join(home, "ray_token")})
print(json.dumps(report))
"""


def _status(wf_id: int, env: dict[str, str]) -> str:
    from panray_server import panray

    st = panray("status", str(wf_id), "--json", env=env)
    assert st.returncode == 0, st.stderr
    return str(json.loads(st.stdout)[0]["status"])


def _wait_for(wf_id: int, env: dict[str, str], statuses: set[str], timeout: float = 240) -> str:
    import time

    deadline = time.monotonic() + timeout
    while (status := _status(wf_id, env)) not in statuses:
        assert time.monotonic() < deadline, f"workflow {wf_id} still {status}, expected one of {statuses}"
        time.sleep(0.5)
    return status


def _submit(path: Path, workflow: dict, env: dict[str, str]) -> int:
    import yaml

    from panray_server import panray

    path.write_text(yaml.safe_dump(workflow))
    sub = panray("submit", str(path), "--no-wait", env=env)
    assert sub.returncode == 0, sub.stdout + sub.stderr
    return int(sub.stdout.split()[-1])


@pytest.mark.slow
def test_a_payload_cannot_reach_the_store_the_cluster_or_the_secrets() -> None:
    import tempfile

    from panray_server import running_server

    python = _payload_python()
    base = Path(tempfile.mkdtemp(prefix="panray-lockdown-"))  # world-traversable, as a shared /home is
    try:
        os.chmod(base, 0o755)
        home, work = base / "home", base / "work"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PANRAY_", "RAY_AUTH_"))}
        env.update(PANRAY_HOME=str(home), PANRAY_PAYLOAD_USER=_PAYLOAD_USER, PANRAY_PAYLOAD_DIR=str(work))
        with running_server(home, env) as info:
            assert _mode(home) == 0o700
            assert {n: _mode(home / n) for n in ("cluster.json", "ray_token", "panray.db")} == dict.fromkeys(
                ("cluster.json", "ray_token", "panray.db"), 0o600)
            victim = _submit(base / "victim.yaml", {"name": "victim", "jobs": [
                {"name": "v", "label": "v", "command": ["sleep", "300"], "request_memory": 100}]}, env)
            _wait_for(victim, env, {"Transforming"})
            site = _payload_site(base)
            prelude = _python_line(site, "")
            insider = _INSIDER.replace("PRELUDE", repr(prelude))
            attacker = _submit(base / "insider.yaml", {"name": "insider", "jobs": [{
                "name": "i", "label": "i", "request_memory": 2000,
                "command": [python, "-c", _python_line(site, insider), str(home), str(victim), str(info["address"]), python],
            }]}, env)
            assert _wait_for(attacker, env, {"Finished", "Failed", "SubFinished"}) == "Finished"
            [out] = work.glob(f"*_{attacker}/*.1/payload.stdout")
            report = json.loads(out.read_text())
            assert report["uid"] == 65534 != os.getuid()
            assert {k for k in report["env"] if k.startswith("PANRAY_")} == JOB_IDENTITY
            assert not [k for k in report["env"] if k.startswith("RAY_")]
            assert report["reads"] == dict.fromkeys(("ray_token", "cluster.json", "panray.db"), "PermissionError")
            code, stdout, stderr = report["cancel"]
            assert code == 2 and not stdout and "cannot open: Permission denied" in stderr, (stdout, stderr)
            code, stdout, stderr = report["ray"]
            assert code != 0 and "CONNECTED" not in stdout and "AuthenticationError" in stderr, (stdout, stderr)
            assert _status(victim, env) == "Transforming"  # untouched by the insider
            from panray_server import panray

            cancel = panray("cancel", str(victim), env=env)  # the owner's own shell may
            assert cancel.returncode == 0, cancel.stderr
            assert _wait_for(victim, env, {"Cancelled"}) == "Cancelled"
    finally:
        shutil.rmtree(base, ignore_errors=True)
