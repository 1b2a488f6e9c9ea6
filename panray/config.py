"""panray's settings: embedded defaults, overridden by one YAML file and ``PANRAY_*`` variables.

With nothing set panray runs embedded: a local three-node Ray cluster on 127.0.0.1, an SQLite
state file and local log/storage directories under ``PANRAY_HOME`` (default ``~/.panray``).
Production sets ``PANRAY_DB`` to a ``postgresql://`` URL, ``PANRAY_RAY_ADDRESS`` to the cluster,
``PANRAY_LOG_SINK=cloud`` and ``PANRAY_STORAGE=gs://bucket``, or the same keys in the file named
by ``PANRAY_CONFIG``.

Examples:
    >>> s = Settings.load(env={"PANRAY_HOME": "/tmp/x", "PANRAY_HEARTBEAT_TIMEOUT": "5"})
    >>> s.resolved_db_url, s.heartbeat_timeout
    ('sqlite:////tmp/x/panray.db', 5.0)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from panray.exceptions import ConfigError


class Settings(BaseModel):
    """Every knob in one place; field names are the config-file keys."""

    model_config = ConfigDict(extra="forbid")

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
    log_interval: float = 2.0
    heartbeat_interval: float = 60.0
    heartbeat_timeout: float = 7200.0
    sent_timeout: float = 1800.0
    memory_tolerance: float = 1.0
    flush_interval: float = 0.2
    release_batch: int = 500
    max_system_retries: int = 3
    embedded_cpus_per_site: int = 8
    dashboard: bool | None = Field(
        default=None, description="embedded cluster: run Ray's dashboard on 127.0.0.1; None = for panray serve "
                                  "only (it costs ~1 GiB RSS and seconds at start, too much for one-shot runs)")
    dashboard_port: int = Field(default=8265, ge=0, le=65535, description="8265 = Ray's default (the next free port if taken); 0 = any free port")
    metrics: bool = Field(default=True, description="export panray's metrics through ray.util.metrics")

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
        return self.home / "work"

    @classmethod
    def load(cls, path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
        """Defaults < the YAML file (``path`` or ``PANRAY_CONFIG``) < ``PANRAY_<KEY>`` variables."""
        env = os.environ if env is None else env
        data: dict[str, object] = {}
        path = path or env.get("PANRAY_CONFIG")
        if path:
            try:
                data.update(yaml.safe_load(Path(path).read_text()) or {})
            except (OSError, yaml.YAMLError) as exc:
                raise ConfigError(f"{path}: cannot read config: {exc}") from None
        for key in cls.model_fields:
            name = "PANRAY_" + key.upper()
            if name in env:
                data[key] = env[name]
        if "PANRAY_DB" in env:
            data["db_url"] = env["PANRAY_DB"]
        try:
            settings = cls.model_validate(data)
        except ValidationError as err:
            first = err.errors()[0]
            raise ConfigError(
                f"{path or 'environment'}: {'.'.join(map(str, first['loc']))}: {first['msg']}"
            ) from None
        return settings
