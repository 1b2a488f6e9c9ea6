"""Deployment values: what an operator chooses for one Kubernetes install of panray.

Values name Secrets and never hold their contents: there is no field for a password, token or
key, and unknown fields are refused, so a secret pasted into a values file fails to load
instead of landing in the rendered manifests. Several files merge in order (later wins), as
``helm -f base.yaml -f site.yaml`` does; ``laptop`` and ``production`` name the packaged files.

Examples:
    >>> v = load_values(["production"])
    >>> v.database.instances, sorted(v.ray.sites)
    (3, ['FrDF', 'UKDF', 'USDF'])
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from panray.exceptions import ConfigError

#: Packaged values files, by the short name ``panray deploy render --values`` accepts.
PACKAGED = {"laptop": "values-laptop.yaml", "production": "values-production.yaml"}

_QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?$"
_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Resources(_Model):
    """Requests equal limits: Ray sizes its node from them and the scheduler keeps them."""

    cpu: str = Field(pattern=_QUANTITY)
    memory: str = Field(pattern=_QUANTITY)

    def spec(self) -> dict[str, dict[str, str]]:
        both = {"cpu": self.cpu, "memory": self.memory}
        return {"requests": dict(both), "limits": dict(both)}


class Image(_Model):
    repository: str = "panray"
    tag: str = "0.1.0"
    pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"

    @property
    def ref(self) -> str:
        return f"{self.repository}:{self.tag}"


class SiteGroup(_Model):
    """One facility's Ray worker group: its pods carry the site's resource; the autoscaler keeps
    between ``min_replicas`` and ``max_replicas`` of them."""

    replicas: int = Field(default=1, ge=0)
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=4, ge=1)
    resources: Resources = Resources(cpu="2", memory="4Gi")
    #: Units of ``site:<NAME>`` a node offers. Every site actor (queue, pilot, prompt pilot, prompt
    #: task) holds one, so this is how many a node hosts, and the autoscaler adds a node when the
    #: site's actors need more units than its nodes offer.
    site_resource_units: int = Field(default=8, gt=0)

    @model_validator(mode="after")
    def _bounds(self) -> SiteGroup:
        if not self.min_replicas <= self.replicas <= self.max_replicas:
            raise ValueError(f"need min_replicas <= replicas <= max_replicas, got "
                             f"{self.min_replicas} <= {self.replicas} <= {self.max_replicas}")
        return self


class Head(_Model):
    resources: Resources = Resources(cpu="2", memory="4Gi")


class Ray(_Model):
    version: str = Field(default="2.60.0", pattern=r"^[0-9]+\.[0-9]+\.[0-9]+$")
    autoscaling: bool = True
    idle_timeout_seconds: int = Field(default=600, gt=0)
    head: Head = Head()
    default_site: SiteGroup = SiteGroup()
    sites: dict[str, SiteGroup] = Field(default_factory=dict, description="per-site groups; others get default_site")


class Pooler(_Model):
    """PgBouncer in front of PostgreSQL. ``session`` mode by default: the PostgreSQL store uses
    temporary tables and psycopg prepares statements, which transaction pooling would break."""

    enabled: bool = True
    instances: int = Field(default=2, ge=1)
    pool_mode: Literal["session", "transaction"] = "session"
    max_client_conn: int = Field(default=500, gt=0)
    default_pool_size: int = Field(default=50, gt=0)
    resources: Resources = Resources(cpu="250m", memory="256Mi")


class Backup(_Model):
    """Base backups and WAL archive to an object store (barman-cloud); credentials by Secret name."""

    enabled: bool = False
    destination_path: str = Field(default="", pattern=r"^$|^(s3|gs|https)://")
    google_credentials_secret: str | None = Field(default=None, pattern=_NAME)
    google_credentials_key: str = "key.json"
    schedule: str = "0 0 3 * * *"
    retention: str = Field(default="30d", pattern=r"^[1-9][0-9]*[dwm]$")

    @model_validator(mode="after")
    def _destination(self) -> Backup:
        if self.enabled and not self.destination_path:
            raise ValueError("backup.enabled needs backup.destination_path (s3://, gs:// or https://)")
        return self


class Database(_Model):
    instances: int = Field(default=3, ge=1)
    database: str = Field(default="panray", pattern=_NAME)
    owner: str = Field(default="panray", pattern=_NAME)
    storage_class: str | None = None
    size: str = Field(default="10Gi", pattern=_QUANTITY)
    resources: Resources = Resources(cpu="1", memory="2Gi")
    operator_namespace: str = Field(default="cnpg-system", pattern=_NAME)
    pooler: Pooler = Pooler()
    backup: Backup = Backup()


class Auth(_Model):
    """Where the server finds the token issuer's keys (a URL or a file path), and the claims it checks."""

    jwks: str | None = None
    issuer: str | None = None
    audience: str | None = None


class Ingress(_Model):
    enabled: bool = False
    host: str = "panray.example.org"
    class_name: str | None = None
    tls_secret: str | None = Field(default=None, pattern=_NAME)


class Server(_Model):
    """``Recreate`` by default: ``panray serve`` on a cluster it joined stops panray's actors when it
    exits, so an old pod stopping after a new one started would take the new one's actors along."""

    replicas: int = Field(default=1, ge=1)
    update_strategy: Literal["Recreate", "RollingUpdate"] = "Recreate"
    port: int = Field(default=8000, gt=1024, lt=65536)
    resources: Resources = Resources(cpu="1", memory="2Gi")
    ray_node_resources: Resources = Resources(cpu="500m", memory="1Gi")
    auth: Auth = Auth()
    ingress: Ingress = Ingress()
    #: Namespaces (by name) whose pods may reach the server; empty = any client.
    client_namespaces: list[str] = Field(default_factory=list)


class Gcp(_Model):
    """Cloud Logging and GCS. The key file comes from a Secret named here (none: the pods' own
    identity, e.g. GKE Workload Identity)."""

    log_sink: Literal["local", "cloud"] = "local"
    log_name: str = "Panda-RubinLog"
    project: str = "panray-local"
    storage: str | None = Field(default=None, pattern=r"^gs://")
    credentials_secret: str | None = Field(default=None, pattern=_NAME)
    credentials_key: str = "key.json"


class Values(_Model):
    name: str = Field(default="panray", pattern=_NAME, max_length=30)
    namespace: str = Field(default="panray", pattern=_NAME)
    kubernetes_version: str = Field(default="1.32", pattern=r"^1\.[0-9]+$")
    #: Namespaces (by name) whose Prometheus may scrape Ray's, PostgreSQL's and PgBouncer's metrics ports.
    monitoring_namespaces: list[str] = Field(default_factory=list)
    sites_file: str | None = Field(default=None, description="site catalog; default: the packaged sites.yaml")
    image: Image = Image()
    ray: Ray = Ray()
    database: Database = Database()
    server: Server = Server()
    gcp: Gcp = Gcp()


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), dict) else value
    return out


def _read(ref: str | Path) -> tuple[str, dict[str, Any]]:
    if str(ref) in PACKAGED:
        source = PACKAGED[str(ref)]
        text = importlib.resources.files("panray.deploy").joinpath(source).read_text()
    else:
        source = str(ref)
        try:
            text = Path(ref).read_text()
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read values: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not YAML: {str(exc).splitlines()[0]}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{source}: values must be a mapping")
    return source, data or {}


def load_values(files: Sequence[str | Path] = ()) -> Values:
    """Merge values files in order over the defaults; errors name the file and the field."""
    merged: dict[str, Any] = {}
    sources = []
    for ref in files:
        source, data = _read(ref)
        sources.append(source)
        merged = _merge(merged, data)
    try:
        return Values.model_validate(merged)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "values"
        raise ConfigError(f"{' + '.join(sources) or 'defaults'}: {where}: {first['msg']}") from None
