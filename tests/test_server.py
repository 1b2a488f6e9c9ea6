"""The HTTP front door over real HTTP on loopback: tokens, the owner rules, audit, bad input."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from panray import Job, Panray, Settings, Workflow
from panray.exceptions import AuthenticationError, NotFoundError, PermissionDeniedError
from panray.health import HEALTH_PATH, READY_PATH
from panray.server import Authenticator, HttpServer
from panray.service import Service

ISSUER = "https://iam.test.example/"
AUDIENCE = "panray-test"
GROUPS = "wlcg.groups"
PRODUCTION_GROUP = "/rubin/Role=production"
MAX_BODY = 1 << 20


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    return {"rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "ec": ec.generate_private_key(ec.SECP256R1()),
            "stranger": rsa.generate_private_key(public_exponent=65537, key_size=2048)}


@pytest.fixture(scope="module")
def server(keys: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpServer]:
    """A server trusting an external issuer (JWKS file with an RSA and an EC key), on its own store."""
    home = tmp_path_factory.mktemp("server-home")
    jwks = {"keys": [
        {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(keys["rsa"].public_key())), "kid": "rsa", "use": "sig"},
        {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(keys["ec"].public_key())), "kid": "ec", "use": "sig"},
    ]}
    (home / "jwks.json").write_text(json.dumps(jwks))
    settings = Settings(home=home, flush_interval=0.05, auth_jwks=str(home / "jwks.json"), auth_issuer=ISSUER,
                        auth_audience=AUDIENCE, auth_groups_claim=GROUPS, server_max_body=MAX_BODY,
                        auth_roles={PRODUCTION_GROUP: "production"})
    service = Service(settings)
    http = HttpServer(service, Authenticator(settings), port=0).start()
    assert http.host == "127.0.0.1"
    yield http
    http.stop()
    service.close()


def _token(keys: dict[str, Any], user: str = "alice", *, key: str = "rsa", alg: str = "RS256", kid: str = "rsa",
           groups: list[str] | None = None, **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": user, "iat": now, "exp": now + 600, GROUPS: groups or [],
            **claims}
    return jwt.encode({k: v for k, v in body.items() if v is not None}, keys[key], algorithm=alg,
                      headers={"kid": kid})


def _client(server: HttpServer, token: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=server.url + "/api/v1", headers=headers, timeout=60)


def _alg_none(keys: dict[str, Any]) -> str:
    now = int(time.time())
    return jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "exp": now + 600}, None, algorithm="none")


def _hs256(keys: dict[str, Any]) -> str:
    now = int(time.time())
    return jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "exp": now + 600}, "s" * 32,
                      algorithm="HS256", headers={"kid": "rsa"})


BAD_TOKENS = {
    "none given": (lambda k: None, "no bearer token"),
    "not a JWT": (lambda k: "abc.def", "malformed token"),
    "expired": (lambda k: _token(k, exp=int(time.time()) - 3600), "token has expired"),
    "wrong audience": (lambda k: _token(k, aud="someone-else"), "Audience"),
    "wrong issuer": (lambda k: _token(k, iss="https://evil.example/"), "issuer"),
    "bad signature": (lambda k: _token(k, key="stranger"), "Signature verification failed"),
    "alg none": (_alg_none, "algorithm 'none' is not accepted"),
    "HS256": (_hs256, "algorithm 'HS256' is not accepted"),
    "no expiry": (lambda k: _token(k, exp=None), "exp"),
    "unknown key id": (lambda k: _token(k, kid="other"), "unknown key 'other'"),
}


@pytest.mark.parametrize("case", BAD_TOKENS)
def test_bad_tokens_get_401(server: HttpServer, keys: dict[str, Any], case: str) -> None:
    make, message = BAD_TOKENS[case]
    with _client(server, make(keys)) as c:
        r = c.get("/status")
    assert r.status_code == 401, r.text
    assert message in r.json()["error"]
    assert r.headers["www-authenticate"] == "Bearer"


def test_good_tokens_map_groups_to_roles(server: HttpServer, keys: dict[str, Any]) -> None:
    with _client(server, _token(keys, "bob", key="ec", alg="ES256", kid="ec")) as c:
        assert c.get("/whoami").json() == {"user": "bob", "roles": ["user"]}
    with _client(server, _token(keys, "prod", groups=[PRODUCTION_GROUP, "/rubin"])) as c:
        assert c.get("/whoami").json() == {"user": "prod", "roles": ["production", "user"]}


def test_probes_and_schema_need_no_token(server: HttpServer, cluster: Panray) -> None:
    with httpx.Client(base_url=server.url) as c:
        assert c.get(HEALTH_PATH).json() == {"status": "ok"}  # the paths the Kubernetes probes use
        assert c.get(READY_PATH).status_code == 200  # the store answers and Ray is connected
        paths = c.get("/openapi.json").json()["paths"]
    assert "/api/v1/workflows/{workflow_id}/jobs" in paths and "/api/v1/workflows/{workflow_id}/cancel" in paths


def _sleeper(tmp: Path) -> dict[str, Any]:
    script = 'touch "$1"; exec sleep 120'
    wf = Workflow(name="alice-run", owner="mallory", jobs=[
        Job(name="nap", label="sleeper", command=["bash", "-c", script, "s", str(tmp / "started")])])
    return wf.model_dump(mode="json")


def _wait_status(c: httpx.Client, wf_id: int, timeout: float = 60) -> str | None:
    return c.get(f"/workflows/{wf_id}/wait", params={"timeout": min(timeout, 30)}).json()["status"]


@pytest.mark.slow
def test_only_owner_or_production_may_act(server: HttpServer, keys: dict[str, Any], cluster: Panray,
                                          tmp_path: Path) -> None:
    alice, bob = _client(server, _token(keys, "alice")), _client(server, _token(keys, "bob"))
    prod = _client(server, _token(keys, "prod", groups=[PRODUCTION_GROUP]))
    r = alice.post("/workflows", json=_sleeper(tmp_path))
    assert r.status_code == 201, r.text
    [wf_id] = r.json()["workflow_ids"]
    assert alice.get(f"/workflows/{wf_id}").json()["owner"] == "alice"  # from the token, not the body
    deadline = time.monotonic() + 60
    while not (tmp_path / "started").exists():
        assert time.monotonic() < deadline, "the payload did not start"
        time.sleep(0.05)

    rule = f"only the owner (alice) or role production may %s workflow {wf_id}"
    for action, body in (("cancel", {}), ("cancel", {"job_ids": [1]}), ("retry", None)):
        r = bob.post(f"/workflows/{wf_id}/{action}", json=body)
        assert (r.status_code, r.json()) == (403, {"error": rule % action})
    r = alice.post(f"/workflows/{wf_id}/retry")
    assert r.status_code == 409 and "still" in r.json()["error"]
    row = alice.get(f"/workflows/{wf_id}").json()
    assert (row["cancelled"], row["status"]) == (False, "Transforming")  # bob changed nothing
    assert [j[7] for j in alice.get(f"/workflows/{wf_id}/jobs").json()["rows"]] == ["running"]

    assert bob.post("/resume").json() == {"workflow_ids": []}  # bob owns no unfinished workflow
    r = bob.put("/sites/UKDF/status", json={"status": "online"})
    assert (r.status_code, r.json()) == (403, {"error": "only role production or admin may set site status site UKDF"})

    assert prod.post(f"/workflows/{wf_id}/cancel").json() == {"reached": True}
    assert _wait_status(alice, wf_id) == "Cancelled"
    assert bob.post(f"/workflows/{wf_id}/retry").status_code == 403
    assert alice.post(f"/workflows/{wf_id}/retry").status_code == 200
    assert alice.post(f"/workflows/{wf_id}/cancel").json() == {"reached": True}
    assert _wait_status(alice, wf_id) == "Cancelled"

    audit = alice.get("/audit", params={"limit": 50}).json()
    rows = [dict(zip(audit["fields"], r)) for r in audit["rows"]]
    seen = [(r["user_name"], r["action"], r["outcome"]) for r in reversed(rows)]
    assert seen == [
        ("alice", "submit", "ok"), ("bob", "cancel", "refused"), ("bob", "cancel", "refused"),
        ("bob", "retry", "refused"), ("alice", "retry", "error"), ("bob", "resume", "ok"),
        ("bob", "set-site-status", "refused"), ("prod", "cancel", "ok"), ("bob", "retry", "refused"),
        ("alice", "retry", "ok"), ("alice", "cancel", "ok"),
    ]
    refused = next(r for r in rows if r["action"] == "retry" and r["outcome"] == "refused")
    assert refused["detail"] == rule % "retry" and refused["target"] == f"workflow {wf_id}"
    for c in (alice, bob, prod):
        c.close()


def test_bad_input_is_refused_whole(server: HttpServer, keys: dict[str, Any]) -> None:
    with _client(server, _token(keys, "alice")) as c:
        before = c.get("/workflows").json()["rows"]
        r = c.post("/workflows", content=b"{not json", headers={"Content-Type": "application/json"})
        assert r.status_code == 422 and r.json()["error"].startswith("body: Invalid JSON")
        r = c.post("/workflows", json={"name": "w", "jobs": [{"name": "a", "label": "isr", "request_memory": "lots"}]})
        assert (r.status_code, r.json()["error"]) == (
            422, "body.jobs.0.request_memory: Input should be a valid integer, unable to parse string as an integer")
        cyclic = {"name": "w", "jobs": [{"name": "a", "label": "x", "parents": ["b"]},
                                        {"name": "b", "label": "x", "parents": ["a"]}]}
        r = c.post("/workflows", json=cyclic)
        assert (r.status_code, r.json()["error"]) == (400, "workflow 'w': cycle in job graph: a -> b -> a")
        big = b'{"name": "w", "jobs": [], "pad": "' + b"x" * MAX_BODY + b'"}'
        r = c.post("/workflows", content=big, headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and f"limit of {MAX_BODY} bytes" in r.json()["error"]
        r = c.post("/workflows", content=iter([big[:1000], big[1000:]]), headers={"Content-Type": "application/json"})
        assert r.status_code == 413  # streamed without a length: counted as it comes
        assert c.get("/workflows").json()["rows"] == before  # nothing stored
        r = c.get("/workflows/987654")
        assert (r.status_code, r.json()) == (404, {"error": "no workflow 987654 in this store"})
        assert c.get("/jobs/987654").status_code == 404
        r = c.get("/workflows/1/jobs", params={"limit": 10**6})
        assert r.status_code == 422 and r.json()["error"].startswith("query.limit:")
        assert c.get("/nowhere").status_code == 404


def test_remote_client_raises_the_same_errors(server: HttpServer, keys: dict[str, Any], tmp_path: Path) -> None:
    with Panray(Settings(home=tmp_path), url=server.url, token=_token(keys, "bob")) as pr:
        assert pr.remote
        with pytest.raises(PermissionDeniedError, match=r"^only role production or admin may set site status"):
            pr.set_site_status("UKDF", "offline")
        with pytest.raises(NotFoundError, match="no workflow 987654"):
            pr.retry(987654)


def test_cli_talks_to_the_server_and_prints_its_refusals(server: HttpServer, keys: dict[str, Any],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from panray.cli import main

    bob = ["--url", server.url, "--token", _token(keys, "bob")]
    assert main([*bob, "status", "--json"]) == 0
    assert isinstance(json.loads(capsys.readouterr().out), list)
    assert main([*bob, "site", "set-status", "UKDF", "offline"]) == 2
    assert capsys.readouterr().err == "panray: error: only role production or admin may set site status site UKDF\n"
    assert main(["--url", server.url, "--token", "nonsense", "status"]) == 2
    assert capsys.readouterr().err.startswith("panray: error: malformed token")


def test_local_key_and_tokens(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from panray.cli import main
    from panray.identity import Identity, Role

    home = tmp_path / "home"
    assert main(["--home", str(home), "token"]) == 2
    assert "no signing key" in capsys.readouterr().err
    authenticator = Authenticator(Settings(home=home))  # what panray serve does: creates the key
    assert (home / "server-key.pem").stat().st_mode & 0o777 == 0o600
    assert main(["--home", str(home), "token", "--user", "erin", "--role", "production", "--hours", "1"]) == 0
    token = capsys.readouterr().out.strip()
    assert authenticator.identify(token) == Identity("erin", frozenset({Role.USER, Role.PRODUCTION}))
    other = Authenticator(Settings(home=tmp_path / "other-home"))  # another home's key does not verify it
    with pytest.raises(AuthenticationError, match="Signature verification failed"):
        other.identify(token)


def test_a_taken_port_is_a_clear_error(server: HttpServer, tmp_path: Path) -> None:
    from panray.exceptions import PanrayError

    service = Service(Settings(home=tmp_path))
    try:
        with pytest.raises(PanrayError, match=rf"^cannot serve HTTP on 127.0.0.1:{server.port} .*in use"):
            HttpServer(service, Authenticator(service.settings), port=server.port)
    finally:
        service.close()


def test_the_rules_in_one_place() -> None:
    from panray.identity import Identity, Role, local_identity
    from panray.service import OPERATOR_ACTIONS, OWNER_ACTIONS, authorize

    alice, bob = Identity("alice"), Identity("bob")
    operators = [Identity("p", frozenset({Role.USER, Role.PRODUCTION})),
                 Identity("a", frozenset({Role.USER, Role.ADMIN})),
                 local_identity()]
    for action in sorted(OWNER_ACTIONS):
        authorize(alice, action, owner="alice", target="workflow 3")
        for op in operators:
            authorize(op, action, owner="alice", target="workflow 3")
        rule = rf"^only the owner \(alice\) or role production may {action} workflow 3$"
        with pytest.raises(PermissionDeniedError, match=rule):
            authorize(bob, action, owner="alice", target="workflow 3")
    for action in sorted(OPERATOR_ACTIONS):
        for op in operators:
            authorize(op, action, target="site UKDF")
        with pytest.raises(PermissionDeniedError, match="^only role production or admin may"):
            authorize(alice, action, target="site UKDF")
    authorize(bob, "submit")
    with pytest.raises(PermissionDeniedError, match="unknown action 'drop-tables'"):
        authorize(local_identity(), "drop-tables")
