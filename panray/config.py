"""panray's settings: embedded defaults, overridden by one YAML file and ``PANRAY_*`` variables.

With nothing set panray runs embedded: a local Ray cluster on 127.0.0.1 (one raylet carrying the
three sites), an SQLite state file and local log/storage directories under ``PANRAY_HOME`` (default ``~/.panray``).
Production sets ``PANRAY_DB`` to a ``postgresql://`` URL, ``PANRAY_RAY_ADDRESS`` to the cluster,
``PANRAY_LOG_SINK=cloud`` and ``PANRAY_STORAGE=gs://bucket``, or the same keys in the file named
by ``PANRAY_CONFIG``.

Examples:
    >>> s = Settings.load(env={"PANRAY_HOME": "/tmp/x", "PANRAY_HEARTBEAT_INTERVAL": "1",
    ...                        "PANRAY_HEARTBEAT_TIMEOUT": "5"})
    >>> s.resolved_db_url, s.heartbeat_timeout
    ('sqlite:////tmp/x/panray.db', 5.0)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from panray.documents import read_document
from panray.exceptions import ConfigError
from panray.identity import Role
from panray.validation import INT32_MAX, BoundaryModel

_DAY = 86_400.0


def _seconds(default: float, most: float = 30 * _DAY) -> Any:
    """A finite, positive number of seconds, at most ``most``."""
    return Field(default=default, gt=0, le=most, allow_inf_nan=False)


class Settings(BoundaryModel):
    """Every knob in one place; field names are the config-file keys. Out-of-range values raise ConfigError."""

    model_config = ConfigDict(extra="forbid")
    _error = ConfigError

    home: Path = Field(default_factory=lambda: Path.home() / ".panray")
    db_url: str | None = Field(default=None, description="sqlite:///path or postgresql://...")
    ray_address: str | None = Field(default=None, description="None = start the embedded cluster")
    sites_file: Path | None = None
    log_sink: Literal["local", "cloud"] = "local"
    log_name: str = "Panda-RubinLog"
    gcp_project: str = "panray-local"
    cloud_logging_endpoint: str | None = None
    storage: str | None = Field(default=None, description="local directory or gs://bucket[/prefix]")
    storage_endpoint: str | None = None
    log_interval: float = _seconds(2.0, 3600.0)
    heartbeat_interval: float = _seconds(60.0, _DAY)
    heartbeat_timeout: float = _seconds(7200.0)
    sent_timeout: float = _seconds(1800.0)
    activated_timeout: float = _seconds(300.0)  #: seconds a job may wait queued at a site without live pilots
    memory_tolerance: float = Field(default=1.0, gt=0, le=100, allow_inf_nan=False,
                                    description="a payload is killed above request_memory x this")
    flush_interval: float = _seconds(0.2, 60.0)
    release_batch: int = Field(default=500, ge=1, le=1_000_000)
    manager_pool: int = Field(default=2, ge=0, le=4096, description="manager actors (processes on the head) "
                              "per store that host its workflows' managers; 0 = one actor per workflow")
    max_system_retries: int = Field(default=3, ge=0, le=1000)
    embedded_cpus_per_site: int = Field(default=8, ge=1, le=1024)
    nodes_per_site: bool = Field(default=False, description="embedded cluster: one raylet per site (to lose a "
                                 "site's node alone) instead of one raylet carrying every site, which starts in seconds")
    log_spool_bytes: int = Field(default=64 * 1024 * 1024, gt=0, le=2**40,
                                 description="a pilot's undelivered log entries kept (memory and disk)")
    payload_user: str | None = Field(default=None, description="run payloads as this Unix user (needs a root "
                                     "server); None = the server's own user, who can read the home")
    payload_dir: Path | None = Field(default=None, description="payload work dirs; default: <home>-work, "
                                     "outside the private home")
    max_workflow_jobs: int = Field(default=1_000_000, ge=1, le=INT32_MAX, description="jobs in one workflow")
    placement: Literal["refuse", "clamp"] = Field(
        default="refuse", description="a job no site could take: refuse the workflow, or shrink its request"
    )

    dashboard: bool | None = Field(
        default=None, description="embedded cluster: run Ray's dashboard on 127.0.0.1; None = for panray serve "
                                  "only (it costs ~1 GiB RSS and seconds at start, too much for one-shot runs)")
    dashboard_port: int = Field(default=8265, ge=0, le=65535, description="8265 = Ray's default (the next free port if taken); 0 = any free port")
    metrics: bool = Field(default=True, description="export panray's metrics through ray.util.metrics (their cost "
                          "on 50k no-op jobs is within the noise of a same-run comparison)")

    @model_validator(mode="after")
    def _timeouts_above_interval(self) -> Settings:
        if self.heartbeat_timeout <= self.heartbeat_interval:
            raise ValueError(f"heartbeat_timeout {self.heartbeat_timeout:g} s must exceed heartbeat_interval "
                             f"{self.heartbeat_interval:g} s, or every running job is lost")
        return self

    # -- the HTTP server (``panray serve``) and its tokens; see panray.server -----------------
    server_host: str = Field(default="127.0.0.1", description="address the HTTP API binds")
    server_port: int = Field(default=0, ge=0, le=65535, description="0 = pick a free port")
    server_max_body: int = Field(default=256 * 2**20, gt=0, description="bytes; a 200k-job workflow is ~100 MiB")
    auth_jwks: str | None = Field(default=None, description="issuer's JWKS file or https URL; None = local key")
    auth_issuer: str = "panray-local"
    auth_audience: str = "panray"
    auth_user_claim: str = "sub"
    auth_groups_claim: str = Field(default="groups", description="e.g. wlcg.groups")
    auth_roles: dict[str, Role] = Field(
        default_factory=lambda: {r.value: r for r in Role},
        description="group -> role (user, production, admin), e.g. /rubin/Role=production: production",
    )

    @property
    def resolved_db_url(self) -> str:
        return self.db_url or f"sqlite:///{self.home / 'panray.db'}"

    @property
    def resolved_storage(self) -> str:
        return self.storage or str(self.home / "storage")

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def work_dir(self) -> Path:
        """Outside the home, so that no payload's work dir leads to a secret."""
        return self.payload_dir or self.home.with_name(self.home.name + "-work")

    def __init__(self, /, **data: Any) -> None:
        """``Settings(home=...)``: the given keys, then ``PANRAY_CONFIG``'s file and ``PANRAY_*``
        variables for the others, as :meth:`load` and ``Panray()`` read them."""
        sources, _ = self._sources(None, os.environ)
        super().__init__(**{**sources, **data})

    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    @classmethod
    def load(cls, path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
        """Defaults < the YAML file (``path`` or ``PANRAY_CONFIG``) < ``PANRAY_<KEY>`` variables."""
        data, source = cls._sources(path, os.environ if env is None else env)
        return cls.model_validate(data, source=f"settings ({source})")

    @classmethod
    def _sources(cls, path: str | Path | None, env: Mapping[str, str]) -> tuple[dict[str, object], str]:
        """The settings the file and the variables give, and where they come from."""
        data: dict[str, object] = {}
        path = path or env.get("PANRAY_CONFIG")
        if path:
            loaded = read_document(path, ConfigError)
            if loaded is not None and not isinstance(loaded, dict):
                raise ConfigError(f"{path}: expected a mapping of settings (key: value), "
                                  f"got a {type(loaded).__name__}")
            data.update(loaded or {})
        for key in cls.model_fields:
            name = "PANRAY_" + key.upper()
            if name in env:
                data[key] = env[name]
        if "PANRAY_DB" in env:
            data["db_url"] = env["PANRAY_DB"]
        return data, f"{path} and environment" if path else "environment"
