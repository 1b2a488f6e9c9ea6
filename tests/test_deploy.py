"""The Kubernetes install (deploy/): rendered objects are valid and have the properties that matter.

Nothing is applied to a cluster here (there is none): the objects are validated against the
Kubernetes schemas and the KubeRay / CloudNativePG CRDs kept in deploy/crds/, and their
network reachability, secrets, resources, probes and budgets are checked from the output.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import sys
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

import kube_schemas
from network_reach import Pod, reaches
from panray.cli import main
from panray.config import Settings
from panray.deploy import Values, load_values, render
from panray.deploy.raycluster import NODE_PORTS, site_actors
from panray.exceptions import ConfigError, SiteConfigError
from panray.health import HEALTH_PATH, READY_PATH
from panray.sites import load_catalog, parse_catalog

ROOT = Path(__file__).resolve().parent.parent
INSTALLS = ["laptop", "production"]


def _install(*files: str | Path) -> tuple[Values, list[dict[str, Any]]]:
    values = load_values(list(files))
    return values, render(values)


def _values_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "values.yaml"
    path.write_text(text + "\n")
    return path


def _one(objects: list[dict[str, Any]], kind: str, name_part: str = "") -> dict[str, Any]:
    [obj] = [o for o in objects if o["kind"] == kind and name_part in o["metadata"]["name"]]
    return obj


def _pod_templates(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The pods the install's own templates describe, by role (labels + spec)."""
    ray = _one(objects, "RayCluster")["spec"]
    pods = {"head": ray["headGroupSpec"]["template"],
            "server": _one(objects, "Deployment")["spec"]["template"]}
    for group in ray["workerGroupSpecs"]:
        pods[group["groupName"]] = group["template"]
    poolers = [o for o in objects if o["kind"] == "Pooler"]
    if poolers:
        pods["pooler"] = poolers[0]["spec"]["template"]
    return pods


def _kuberay(template: dict[str, Any], cluster: str, node_type: str, group: str) -> dict[str, str]:
    """KubeRay v1.7.0 (controllers/ray/common/pod.go, labelPod): its labels, the template's win
    except cluster, node type and group."""
    fixed = {"ray.io/cluster": cluster, "ray.io/node-type": node_type, "ray.io/group": group}
    return {"ray.io/is-ray-node": "yes", "app.kubernetes.io/name": "kuberay",
            "app.kubernetes.io/created-by": "kuberay-operator", **template["metadata"]["labels"], **fixed}


def _cnpg(cluster: str, role: str, component: str, template: dict[str, str] | None = None) -> dict[str, str]:
    """CloudNativePG v1.30.0 (pkg/specs/pods.go, pgbouncer/deployments.go, jobs.go): its labels
    overwrite the template's. ``inheritedMetadata`` is left out: the policies must not need it."""
    return {**(template or {}), "cnpg.io/cluster": cluster, "app.kubernetes.io/name": "cloudnative-pg",
            "app.kubernetes.io/instance": cluster, "app.kubernetes.io/component": component,
            "app.kubernetes.io/managed-by": "cloudnative-pg", **role_labels(role)}


def role_labels(role: str) -> dict[str, str]:
    kind, _, name = role.partition("=")
    return {"instance": {"cnpg.io/podRole": "instance", "cnpg.io/instanceName": name},
            "pooler": {"cnpg.io/podRole": "pooler", "cnpg.io/poolerName": name},
            "job": {"cnpg.io/jobRole": "join", "cnpg.io/instanceName": name}}[kind]


def _pods(values: Values, objects: list[dict[str, Any]]) -> dict[str, Pod]:
    """The install's pods with the labels they run with (the operators add and rewrite some)."""
    templates = _pod_templates(objects)
    ray, db = _one(objects, "RayCluster"), _one(objects, "Cluster")["metadata"]["name"]
    labels = {"head": _kuberay(templates["head"], ray["metadata"]["name"], "head", "headgroup"),
              "server": templates["server"]["metadata"]["labels"],
              "database": _cnpg(db, f"instance={db}-1", "database"),
              "database-join": _cnpg(db, f"job={db}-2", "database")}
    for group in ray["spec"]["workerGroupSpecs"]:
        name = group["groupName"]
        labels[name] = _kuberay(templates[name], ray["metadata"]["name"], "worker", name)
    if "pooler" in templates:
        pooler = next(o for o in objects if o["kind"] == "Pooler")["metadata"]["name"]
        labels["pooler"] = _cnpg(db, f"pooler={pooler}", "pooler", templates["pooler"]["metadata"]["labels"])
    return {role: Pod(role, values.namespace, lab) for role, lab in labels.items()}


def _outsiders(values: Values) -> dict[str, Pod]:
    return {"client": Pod("client", "users"),  # a user's pod in another namespace
            "neighbour": Pod("neighbour", values.namespace, {"app": "unrelated"}),  # another app beside the install
            "cnpg-operator": Pod("cnpg-operator", values.database.operator_namespace, {"app": "cnpg"})}


def _policies(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == "NetworkPolicy"]


def _containers(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for role, template in _pod_templates(objects).items():
        spec = template.get("spec", {})
        out += [(f"{role}/{c['name']}", c) for c in spec.get("initContainers", []) + spec.get("containers", [])]
    return out


# -- schemas --------------------------------------------------------------------------------------


@pytest.mark.parametrize("install", INSTALLS)
def test_every_object_validates_against_its_schema(install: str) -> None:
    values, objects = _install(install)
    kinds = {o["kind"] for o in objects}
    assert {"RayCluster", "Cluster", "Pooler", "Deployment", "Service", "ConfigMap", "NetworkPolicy",
            "PodDisruptionBudget"} <= kinds
    for version in (values.kubernetes_version, kubernetes_validate.latest_version()):
        for obj in objects:
            kube_schemas.validate(obj, version)


@pytest.mark.parametrize("kind, change, field", [
    ("RayCluster", lambda o: o["spec"]["workerGroupSpecs"][0].update(minReplica=1), "minReplica"),
    ("RayCluster", lambda o: o["spec"]["headGroupSpec"].update(serviceType=3), "serviceType"),
    ("Cluster", lambda o: o["spec"].update(instances="three"), "instances"),
    ("Pooler", lambda o: o["spec"]["pgbouncer"].update(poolMode="statements"), "poolMode"),
    ("ScheduledBackup", lambda o: o["spec"].update(method="tape"), "method"),
    ("Deployment", lambda o: o["spec"]["template"]["spec"]["containers"][0].update(livenesProbe={}), "livenesProbe"),
    ("NetworkPolicy", lambda o: o["spec"]["ingress"].append({"form": []}), "form"),
])
def test_schema_validation_catches_a_wrong_field(kind: str, change: Any, field: str) -> None:
    values, objects = _install("production")
    obj = copy.deepcopy(next(o for o in objects if o["kind"] == kind))
    change(obj)
    with pytest.raises(kube_schemas.SchemaError, match=field):
        kube_schemas.validate(obj, values.kubernetes_version)


def test_crds_are_kept_with_their_versions_noted() -> None:
    notes = (ROOT / "deploy" / "crds" / "README.md").read_text()
    for name in kube_schemas.CRD_FILES.values():
        assert name in notes
        crd = kube_schemas.crd_schema(*next(k for k, v in kube_schemas.CRD_FILES.items() if v == name))
        assert crd["properties"]["spec"]["type"] == "object"
    assert re.search(r"kuberay.*v1\.7\.0", notes, re.I | re.S)
    assert re.search(r"cloudnative-pg.*v1\.30\.0", notes, re.I | re.S)


# -- Ray: head and site worker groups -------------------------------------------------------------


def _start_resources(params: dict[str, str]) -> dict[str, int]:
    """What ``--resources`` becomes after KubeRay pastes it into its shell line."""
    [value] = shlex.split(params["resources"])
    return json.loads(value)


@pytest.mark.parametrize("install", INSTALLS)
def test_every_site_has_a_worker_group_with_its_resource(install: str) -> None:
    values, objects = _install(install)
    ray = _one(objects, "RayCluster")["spec"]
    catalog = load_catalog()
    groups = {g["template"]["metadata"]["labels"]["panray.io/site"]: g for g in ray["workerGroupSpecs"]}
    assert sorted(groups) == sorted(catalog.names())
    for site in catalog:
        group = groups[site.name]
        want = values.ray.sites.get(site.name, values.ray.default_site)
        assert _start_resources(group["rayStartParams"]) == {site.ray_resource: want.site_resource_units}
        assert (group["minReplicas"], group["replicas"], group["maxReplicas"]) == \
            (want.min_replicas, want.replicas, want.max_replicas)
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    assert ray["enableInTreeAutoscaling"] is True
    assert ray["rayVersion"] == values.ray.version


@pytest.mark.parametrize("install", INSTALLS)
def test_every_site_can_start_all_its_actors(install: str) -> None:
    values = load_values([install])
    for site in load_catalog():
        group = values.ray.sites.get(site.name, values.ray.default_site)
        need = site_actors(site)
        assert need <= group.max_replicas * group.site_resource_units, site.name
        if install == "laptop":  # no scaling needed to start
            assert need <= group.min_replicas * group.site_resource_units, site.name
    usdf = load_catalog().get("USDF")
    assert site_actors(usdf) == 1 + usdf.pilots + usdf.prompt_pilots + 2 * 3  # LSSTCam, LSSTComCam, LATISS


@pytest.mark.parametrize("install", INSTALLS)
def test_head_is_control_plane_only(install: str) -> None:
    _, objects = _install(install)
    head = _one(objects, "RayCluster")["spec"]["headGroupSpec"]
    assert "resources" not in head["rayStartParams"]
    assert not any("site:" in v for v in head["rayStartParams"].values())
    assert head["rayStartParams"]["num-cpus"] == "0"  # brokerage and managers need none; payloads none here
    assert head["serviceType"] == "ClusterIP"
    assert "dashboard" in {p["name"] for p in head["template"]["spec"]["containers"][0]["ports"]}


def test_a_catalog_of_other_sites_gets_its_own_groups(tmp_path: Path) -> None:
    catalog = yaml.safe_load((ROOT / "configs" / "sites.yaml").read_text())
    catalog["sites"]["IDF"] = {**catalog["sites"]["UKDF"], "status": "test", "ray_resource": "site:IDF-test"}
    sites = tmp_path / "sites.yaml"
    sites.write_text(yaml.safe_dump(catalog, sort_keys=False))
    values_file = tmp_path / "v.yaml"
    values_file.write_text(yaml.safe_dump({"sites_file": str(sites), "ray": {"sites": {"IDF": {"max_replicas": 9}}}}))
    _, objects = _install("laptop", values_file)
    [idf] = [g for g in _one(objects, "RayCluster")["spec"]["workerGroupSpecs"] if g["groupName"] == "site-idf"]
    assert _start_resources(idf["rayStartParams"]) == {"site:IDF-test": 8}  # its own group: defaults, not laptop's default_site
    assert idf["maxReplicas"] == 9
    assert parse_catalog(yaml.safe_load(_one(objects, "ConfigMap")["data"]["sites.yaml"])).names()[-1] == "IDF"


def test_values_for_an_unknown_site_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SiteConfigError, match="Mars.*known sites: USDF, FrDF, UKDF"):
        _install(_values_file(tmp_path, "ray: {sites: {Mars: {max_replicas: 3}}}"))


# -- network policies -----------------------------------------------------------------------------


def _ray_ports(objects: list[dict[str, Any]]) -> set[int]:
    """Every port a Ray node of the install is told to listen on."""
    ray = _one(objects, "RayCluster")["spec"]
    params = [ray["headGroupSpec"]["rayStartParams"], *(g["rayStartParams"] for g in ray["workerGroupSpecs"])]
    ports = {int(v) for p in params for k, v in p.items() if k == "port" or k.endswith("-port")}
    server = _one(objects, "Deployment")["spec"]["template"]["spec"]["initContainers"][0]["command"]
    ports |= {int(a.split("=")[1]) for a in server if re.match(r"--[a-z-]*port=", a)}
    for c in [ray["headGroupSpec"]["template"]["spec"]["containers"][0]]:
        ports |= {p["containerPort"] for p in c["ports"]}
    return ports | set(range(NODE_PORTS["min-worker-port"], NODE_PORTS["max-worker-port"] + 1, 97))


@pytest.mark.parametrize("install", INSTALLS)
def test_ray_ports_admit_only_ray_nodes_and_the_server(install: str) -> None:
    values, objects = _install(install)
    pods, policies = {**_pods(values, objects), **_outsiders(values)}, _policies(objects)
    ray_nodes = [r for r in pods if r == "head" or r.startswith("site-")]
    assert len(ray_nodes) == 4
    ports = _ray_ports(objects)
    assert {6379, 8265, 10001, 8080, 52365, NODE_PORTS["max-worker-port"]} <= ports
    for target in ray_nodes + ["server"]:
        for port in ports - {values.server.port} if target == "server" else ports:
            for source in ray_nodes + ["server"]:
                assert reaches(policies, pods[source], pods[target], port), (source, target, port)
            for source in ("client", "neighbour", "pooler", "database", "database-join"):
                assert not reaches(policies, pods[source], pods[target], port), (source, target, port)


@pytest.mark.parametrize("install", INSTALLS)
def test_postgres_only_from_the_server_the_head_and_prompt_sites(install: str) -> None:
    values, objects = _install(install)
    pods, policies = {**_pods(values, objects), **_outsiders(values)}, _policies(objects)
    prompt_sites = {f"site-{s.name.lower()}" for s in load_catalog() if s.prompt_pilots > 0}
    assert prompt_sites == {"site-usdf"}
    clients = {"server", "head"} | prompt_sites
    for source in pods:
        assert reaches(policies, pods[source], pods["pooler"], 5432) == (source in clients), source
        assert reaches(policies, pods[source], pods["database"], 5432) == \
            (source in {"pooler", "database", "database-join"}), source
    assert reaches(policies, pods["cnpg-operator"], pods["database"], 8000)
    assert not reaches(policies, pods["client"], pods["database"], 8000)


def test_without_pooler_the_database_admits_the_store_clients(tmp_path: Path) -> None:
    values, objects = _install("production", _values_file(tmp_path, "database: {pooler: {enabled: false}}"))
    assert not [o for o in objects if o["kind"] == "Pooler"]
    pods, policies = {**_pods(values, objects), **_outsiders(values)}, _policies(objects)
    for source in pods:
        assert reaches(policies, pods[source], pods["database"], 5432) == \
            (source in {"server", "head", "site-usdf", "database", "database-join"}), source
    env = {e["name"]: e.get("value") for e in _one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "@panray-db-rw:5432/" in env["PANRAY_DB"]


@pytest.mark.parametrize("install", INSTALLS)
def test_clients_reach_only_the_server(install: str) -> None:
    values, objects = _install(install)
    pods, policies = _pods(values, objects), _policies(objects)
    user = _outsiders(values)["client"]
    client = user if install == "laptop" else Pod("ingress", "ingress-nginx")
    assert reaches(policies, client, pods["server"], values.server.port)
    every_port = _ray_ports(objects) | {5432, 8000, values.server.port}
    for role, pod in pods.items():
        if role != "server":
            assert not any(reaches(policies, client, pod, p) for p in every_port), role
    if install == "production":  # client_namespaces: only the ingress controller's namespace
        assert not reaches(policies, user, pods["server"], values.server.port)


@pytest.mark.parametrize("install", INSTALLS)
def test_prometheus_reaches_only_the_metrics_ports(install: str) -> None:
    values, objects = _install(install)
    pods, policies = _pods(values, objects), _policies(objects)
    prometheus = Pod("prometheus", "monitoring")
    ray_nodes = [r for r in pods if r in ("head", "server") or r.startswith("site-")]
    metrics = {**{r: 8080 for r in ray_nodes}, "database": 9187, "pooler": 9127}
    for role, port in metrics.items():
        assert reaches(policies, prometheus, pods[role], port) == (install == "production"), role
    for role, pod in pods.items():
        others = (_ray_ports(objects) | {5432, 8000, 9187, 9127, values.server.port}) - {metrics.get(role)}
        if role == "server" and not values.server.client_namespaces:
            others.discard(values.server.port)  # open to clients of any namespace, Prometheus's too
        assert not any(reaches(policies, prometheus, pod, p) for p in others), role


# -- secrets --------------------------------------------------------------------------------------


def _walk(node: Any, path: str = "") -> list[tuple[str, Any]]:
    if isinstance(node, dict):
        return [kv for k, v in node.items() for kv in _walk(v, f"{path}.{k}")]
    if isinstance(node, list):
        return [kv for i, v in enumerate(node) for kv in _walk(v, f"{path}[{i}]")]
    return [(path, node)]


@pytest.mark.parametrize("install", INSTALLS)
def test_no_secret_value_in_rendered_output(install: str) -> None:
    values, objects = _install(install)
    assert not [o for o in objects if o["kind"] == "Secret"]
    sensitive = re.compile(r"PASSWORD|TOKEN|SECRET|KEY|CREDENTIAL", re.I)
    for role, c in _containers(objects):
        for e in c.get("env", []):
            if sensitive.search(e["name"]) and e["name"] != "GOOGLE_APPLICATION_CREDENTIALS":
                assert "value" not in e and "secretKeyRef" in e["valueFrom"], (role, e)
            if e["name"] == "GOOGLE_APPLICATION_CREDENTIALS":
                assert e["value"].startswith("/var/run/secrets/"), e  # a path to the mounted Secret, not a key
    leaves = [(p, v) for o in objects for p, v in _walk(o) if isinstance(v, str)]
    for path, text in leaves:
        assert not re.search(r"://[^/@\s:]+:[^/@\s]+@", text), (path, text)  # no user:password@ in URLs
        assert "PRIVATE KEY" not in text and '"private_key"' not in text, path
    referenced = {v for p, v in leaves if re.search(r"(secretKeyRef\.name|secretName|applicationCredentials\.name)$", p)}
    named = {values.gcp.credentials_secret, values.database.backup.google_credentials_secret,
             values.server.ingress.tls_secret, f"{values.name}-db-app"} - {None}
    assert referenced == named


@pytest.mark.parametrize("field", ["database: {password: hunter2}", "gcp: {credentials_json: '{}'}",
                                   "server: {auth: {client_secret: s3cr3t}}"])
def test_values_have_no_place_for_a_secret(tmp_path: Path, field: str) -> None:
    with pytest.raises(ConfigError, match=r"values\.yaml: .*: Extra inputs are not permitted"):
        load_values([_values_file(tmp_path, field)])


# -- resources, probes, budgets -------------------------------------------------------------------


@pytest.mark.parametrize("install", INSTALLS)
def test_resources_everywhere(install: str) -> None:
    _, objects = _install(install)
    specs = [(role, c["resources"]) for role, c in _containers(objects)]
    ray = _one(objects, "RayCluster")["spec"]
    specs.append(("autoscaler", ray["autoscalerOptions"]["resources"]))
    specs.append(("database", _one(objects, "Cluster")["spec"]["resources"]))
    assert len(specs) >= 8
    for role, res in specs:
        for part in ("requests", "limits"):
            assert set(res[part]) >= {"cpu", "memory"}, (role, part)


@pytest.mark.parametrize("install", INSTALLS)
def test_server_probes_hit_the_health_endpoints(install: str) -> None:
    values, objects = _install(install)
    [panray] = _one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in panray["ports"]}
    assert ports == {"http": values.server.port}
    env = {e["name"]: e.get("value") for e in panray["env"]}
    assert env["PANRAY_SERVER_PORT"] == str(values.server.port)
    probes = {k: panray[k]["httpGet"] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"] == {"path": HEALTH_PATH, "port": "http"}
    assert probes["startupProbe"] == {"path": HEALTH_PATH, "port": "http"}
    assert probes["readinessProbe"] == {"path": READY_PATH, "port": "http"}
    assert (HEALTH_PATH, READY_PATH) == ("/healthz", "/readyz")
    service = _one(objects, "Service")["spec"]
    assert service["ports"][0]["targetPort"] == "http"


@pytest.mark.parametrize("install", INSTALLS)
def test_disruption_budgets_cover_server_and_database(install: str) -> None:
    values, objects = _install(install)
    pods = _pods(values, objects)
    budgets = [o["spec"] for o in objects if o["kind"] == "PodDisruptionBudget"]

    def covering(role: str) -> list[dict[str, Any]]:
        labels = pods[role].labels
        return [b for b in budgets if all(labels.get(k) == v for k, v in b["selector"]["matchLabels"].items())]

    assert len(covering("server")) == 1 and len(covering("pooler")) == 1
    assert covering("database") == []  # CNPG's own budgets (enablePDB); a second one would block evictions
    assert _one(objects, "Cluster")["spec"]["enablePDB"] is True
    assert covering("server")[0]["maxUnavailable"] == covering("pooler")[0]["maxUnavailable"] == 1
    if install == "production":
        assert _one(objects, "Cluster")["spec"]["instances"] == 3
        assert values.database.pooler.instances > covering("pooler")[0]["maxUnavailable"]


@pytest.mark.parametrize("install", INSTALLS)
def test_selectors_match_their_pods_and_ports_do_not_collide(install: str) -> None:
    _, objects = _install(install)
    deployment = _one(objects, "Deployment")["spec"]
    labels = deployment["template"]["metadata"]["labels"]
    for selector in (deployment["selector"]["matchLabels"], _one(objects, "Service")["spec"]["selector"]):
        assert selector.items() <= labels.items()
    pod = deployment["template"]["spec"]
    sidecar_ports = {int(a.split("=")[1]) for a in pod["initContainers"][0]["command"] if re.match(r"--[a-z-]*port=", a)}
    assert pod["containers"][0]["ports"][0]["containerPort"] not in sidecar_ports | set(range(10002, 11000))


# -- settings wiring ------------------------------------------------------------------------------

#: Settings the server engineer adds to panray.config (HTTP address, token issuer).
SERVER_SETTINGS = {"PANRAY_SERVER_HOST", "PANRAY_SERVER_PORT", "PANRAY_AUTH_JWKS", "PANRAY_AUTH_ISSUER",
                   "PANRAY_AUTH_AUDIENCE"}


@pytest.mark.parametrize("install", INSTALLS)
def test_rendered_environment_loads_as_settings(install: str) -> None:
    values, objects = _install(install)
    known = {"PANRAY_" + k.upper() for k in Settings.model_fields} | {"PANRAY_DB"}
    pooler = [o["metadata"]["name"] for o in objects if o["kind"] == "Pooler"]
    sites_map = _one(objects, "ConfigMap")
    for role, c in _containers(objects):
        env = {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}
        if not env:
            continue
        assert set(n for n in env if n.startswith("PANRAY_")) - known <= SERVER_SETTINGS, role
        settings = Settings.load(env=env)
        assert settings.db_url is None or settings.db_url.startswith(f"postgresql://{values.database.owner}@{pooler[0]}:")
        mount = next(m for m in c["volumeMounts"] if m["name"] == "sites")["mountPath"]
        assert settings.sites_file == Path(mount) / next(iter(sites_map["data"]))
    head = next(c for r, c in _containers(objects) if r.startswith("head/"))
    assert Settings.load(env={e["name"]: e["value"] for e in head["env"] if "value" in e}).db_url


# -- container image ------------------------------------------------------------------------------


def _instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", text)
    lines = [ln.strip() for ln in joined.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "") for ln in lines]


def _stages(text: str) -> dict[str, list[tuple[str, str]]]:
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for op, arg in _instructions(text):
        if op == "FROM":
            current = [(op, arg)]
            stages[arg.split()[-1]] = current
        else:
            current.append((op, arg))
    return stages


def test_containerfile_runs_panray_serve_as_non_root_on_the_ray_image() -> None:
    text = (ROOT / "deploy" / "Containerfile").read_text()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    arg = re.search(r"^ARG RAY_VERSION=(\S+)", text, re.M)
    assert arg and arg.group(1) == Values().ray.version  # the image's Ray is the RayCluster's rayVersion
    stages = _stages(text)
    assert set(stages) == {"panray", "panray-bps"}
    base = stages["panray"][0][1]
    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    assert base == f"rayproject/ray:${{RAY_VERSION}}-{py} AS panray", base
    assert stages["panray-bps"][0][1] == "panray AS panray-bps"
    for name, ops in stages.items():
        [*_, user] = [a for op, a in ops if op == "USER"]
        uid = user.split(":")[0]
        assert uid.isdigit() and int(uid) != 0, (name, user)
    ops = dict(stages["panray"])
    assert json.loads(ops["ENTRYPOINT"]) + json.loads(ops["CMD"]) == ["panray", "serve"]
    assert project["project"]["scripts"]["panray"] == "panray.cli:main"
    installs = [a for _, ops in stages.items() for op, a in ops if op == "RUN" and "pip install" in a]
    assert [shlex.split(a)[-1] for a in installs] == [".", ".[bps]"]
    assert "bps" in project["project"]["optional-dependencies"]
    copied = {src for op, a in stages["panray"] if op == "COPY"
              for src in [w for w in shlex.split(a) if not w.startswith("--")][:-1]}
    for source in project["tool"]["setuptools"]["package-dir"].values():
        assert source in copied, f"the image does not copy {source}/"
    assert {"pyproject.toml", "README.md"} <= copied


def test_pods_run_as_the_image_user_with_api_tokens_only_where_needed(tmp_path: Path) -> None:
    _, objects = _install("production")
    for role, template in _pod_templates(objects).items():
        if "spec" in template and template["spec"].get("securityContext"):
            ctx = template["spec"]["securityContext"]
            assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] == 1000, role
            # only the head's autoscaler sidecar talks to the Kubernetes API (to scale the site groups)
            assert template["spec"]["automountServiceAccountToken"] is (role == "head"), role
    _, fixed = _install("production", _values_file(tmp_path, "ray: {autoscaling: false}"))
    ray = _one(fixed, "RayCluster")["spec"]
    assert ray["headGroupSpec"]["template"]["spec"]["automountServiceAccountToken"] is False
    assert "autoscalerOptions" not in ray and ray["enableInTreeAutoscaling"] is False
    for role, c in _containers(objects):
        if "securityContext" in c:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, role


# -- values and the command line ------------------------------------------------------------------


def test_values_files_merge_in_order(tmp_path: Path) -> None:
    over = _values_file(tmp_path, "database: {size: 7Gi}\nray: {sites: {FrDF: {max_replicas: 11}}}")
    base, merged = load_values(["production"]), load_values(["production", over])
    assert merged.database.size == "7Gi" and merged.database.instances == base.database.instances == 3
    assert merged.ray.sites["FrDF"].max_replicas == 11 and merged.ray.sites["USDF"] == base.ray.sites["USDF"]
    assert merged.database.storage_class == "ssd"


@pytest.mark.parametrize("text, message", [
    ("ray: {default_site: {min_replicas: 3, replicas: 1}}", "ray.default_site: Value error, need min_replicas"),
    ("database: {backup: {enabled: true}}", "database.backup: Value error, backup.enabled needs"),
    ("database: {size: ten}", "database.size: String should match pattern"),
    ("- a list", "values must be a mapping"),
])
def test_bad_values_give_one_line_naming_the_field(tmp_path: Path, text: str, message: str) -> None:
    bad = _values_file(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_values([bad])
    assert message in str(err.value) and "\n" not in str(err.value)
    assert str(err.value).startswith(str(bad))


def test_cli_renders_without_a_store_or_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("PANRAY_HOME", str(home))
    out = tmp_path / "install.yaml"
    assert main(["deploy", "render", "--values", "production", "-o", str(out)]) == 0
    assert not re.search(r"[&*]id\d+", out.read_text())  # no YAML aliases: each object reads on its own
    assert list(yaml.safe_load_all(out.read_text())) == render(load_values(["production"]))
    assert main(["deploy", "render"]) == 0
    assert list(yaml.safe_load_all(capsys.readouterr().out)) == render(load_values(["laptop"]))
    assert not home.exists()  # no state store, no cluster.json: nothing was started
    bad = _values_file(tmp_path, "server: {port: 80}")
    target = tmp_path / "never.yaml"
    assert main(["deploy", "render", "--values", str(bad), "-o", str(target)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("panray: error: ") and "server.port" in err and "\n" not in err
    assert not target.exists()
