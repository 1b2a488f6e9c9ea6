"""The site catalog: which facilities exist, their status, DRP share, limits and pilots.

The catalog is read once from ``sites.yaml`` (the packaged ``panray.configs/sites.yaml`` by
default). It is static configuration: brokerage turns each site into a
:class:`~panray.sites.brokerage.SiteLoad` together with the live counts from the state store.

The file maps site names to their settings; the key is the site's name::

    sites:
      USDF: {status: online, drp_share: 0.35, memory_min_mb: 1000, ...}

Examples:
    >>> cat = load_catalog()
    >>> cat.names()
    ['USDF', 'FrDF', 'UKDF']
    >>> cat.get("FrDF").ray_resource
    'site:FrDF'
    >>> cat.shares()
    {'USDF': 0.35, 'FrDF': 0.4, 'UKDF': 0.25}
"""

from __future__ import annotations

import importlib.resources
import os
from collections.abc import Iterable, Iterator, Mapping
from enum import Enum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from panray.exceptions import SiteConfigError, UnknownSiteError

SHARE_TOLERANCE = 0.01
#: The value of ``slots``, ``max_cores`` and ``memory_max_mb`` that follows the machine panray runs on.
AUTO = "auto"
#: ``slots: auto`` gives every site pilots with, in all, this many payloads per core of the machine
#: (payloads wait on I/O too), split by DRP share, and no more than one per ``AUTO_MB_PER_SLOT``
#: of its memory; at least ``AUTO_MIN_SLOTS`` per pilot, so that a few long payloads never hold a
#: small site's every slot.
AUTO_SLOTS_PER_CORE = 2
AUTO_MB_PER_SLOT = 2048
AUTO_MIN_SLOTS = 2


def machine_cores() -> int:
    """The cores of this machine: what ``max_cores: auto`` means."""
    return os.cpu_count() or 1


def machine_memory_mb() -> int:
    """The physical memory of this machine, MB."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20


def auto_memory_per_core(cores: int | None = None, memory_mb: int | None = None) -> int:
    """What ``memory_max_mb: auto`` means: the machine's memory per core, so that a job of
    ``max_cores: auto`` cores at the largest memory per core asks no more than the machine has.

    Examples:
        >>> auto_memory_per_core(cores=2, memory_mb=24000)
        12000
    """
    cores = cores or machine_cores()
    return max(1, (machine_memory_mb() if memory_mb is None else memory_mb) // cores)


def auto_slots(drp_share: float, pilots: int, cores: int | None = None, memory_mb: int | None = None) -> int:
    """Slots per pilot that ``slots: auto`` means on a machine of ``cores`` and ``memory_mb`` (default: this one).

    Examples:
        >>> auto_slots(0.40, pilots=2, cores=2, memory_mb=24000), auto_slots(0.40, pilots=2, cores=32, memory_mb=256000)
        (2, 13)
    """
    cores = cores or machine_cores()
    if memory_mb is None:
        memory_mb = machine_memory_mb()
    total = min(cores * AUTO_SLOTS_PER_CORE, max(1, memory_mb // AUTO_MB_PER_SLOT))
    return max(AUTO_MIN_SLOTS, round(total * drp_share / max(pilots, 1)))


class SiteStatus(str, Enum):
    """What brokerage may send to a site."""

    ONLINE = "online"  #: takes any job that passes the filters
    BROKEROFF = "brokeroff"  #: takes only jobs pinned to it (e.g. merge jobs at the home site)
    OFFLINE = "offline"  #: takes nothing; its queued jobs are re-brokered elsewhere
    TEST = "test"  #: takes only jobs pinned to it, for trying a site out

    def __str__(self) -> str:
        return self.value


class SiteConfig(BaseModel):
    """One facility as configured. Memory limits are per core, as PanDA queues state them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    status: SiteStatus = SiteStatus.ONLINE
    drp_share: float = Field(ge=0.0, le=1.0, description="fraction of data-release processing")
    memory_min_mb: int = Field(ge=0, description="lowest memory per core a job may ask, MB")
    memory_max_mb: int = Field(gt=0, description="highest memory per core a job may ask, MB; 'auto' in the file: "
                                                 "see auto_memory_per_core")
    max_cores: int = Field(gt=0, description="most cores one job may ask; 'auto' in the file: this machine's cores")
    pilots: int = Field(ge=0, description="batch pilots kept running")
    slots: int = Field(gt=0, description="concurrent payloads per pilot; 'auto' in the file: see auto_slots")
    prompt_pilots: int = Field(default=0, ge=0, description="semi-persistent prompt-processing pilots")
    storage_endpoint: str = Field(pattern=r"^[a-z][a-z0-9+.-]*://", description="where outputs land")
    ray_resource: str = Field(default="", description="Ray custom resource marking its nodes")
    home_queue: str | None = None

    @field_validator("memory_max_mb", "max_cores", "slots", mode="before")
    @classmethod
    def _auto(cls, value: Any, info: ValidationInfo) -> Any:
        """``auto`` follows the machine; any other word (or a boolean, which YAML reads from yes/no) is refused."""
        if not isinstance(value, bool) and (not isinstance(value, str) or value.strip().isdigit()):
            return value  # the field's own checks apply
        if value != AUTO:
            raise ValueError(f"expected a positive integer or {AUTO!r}, got {value!r}")
        if info.field_name == "max_cores":
            return machine_cores()
        if info.field_name == "memory_max_mb":
            return auto_memory_per_core()
        share, pilots = info.data.get("drp_share"), info.data.get("pilots")
        if share is None or pilots is None:
            return 1  # their own field errors name the bad value
        return auto_slots(share, pilots)

    @model_validator(mode="after")
    def _check(self) -> SiteConfig:
        if self.memory_min_mb > self.memory_max_mb:
            raise ValueError(
                f"memory_min_mb {self.memory_min_mb} is above memory_max_mb {self.memory_max_mb}"
            )
        if not self.ray_resource:
            object.__setattr__(self, "ray_resource", f"site:{self.name}")
        return self

    @property
    def capacity(self) -> int:
        """Payloads the batch pilots can run at once."""
        return self.pilots * self.slots


class _CatalogFile(BaseModel):
    """The file's shape; the mapping key becomes each site's ``name``."""

    model_config = ConfigDict(extra="forbid")

    sites: dict[str, SiteConfig] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _names_from_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("sites"), dict):
            sites = {}
            for key, entry in data["sites"].items():
                if isinstance(entry, dict):
                    if entry.get("name", key) != key:
                        raise ValueError(f"sites.{key}.name is {entry['name']!r}, not its key {key!r}")
                    entry = {**entry, "name": key}
                sites[key] = entry
            data = {**data, "sites": sites}
        return data


class SiteCatalog:
    """Sites by name, in file order.

    Examples:
        >>> cat = SiteCatalog([SiteConfig(name="A", drp_share=1, memory_min_mb=0, memory_max_mb=4000,
        ...                    max_cores=8, pilots=1, slots=2, storage_endpoint="file:///tmp/a")])
        >>> cat.get("B")
        Traceback (most recent call last):
        ...
        panray.exceptions.UnknownSiteError: unknown site 'B'; known sites: A
    """

    def __init__(self, sites: Iterable[SiteConfig]):
        self._sites: dict[str, SiteConfig] = {}
        for site in sites:
            if site.name in self._sites:
                raise SiteConfigError(f"duplicate site name {site.name!r}")
            self._sites[site.name] = site

    def names(self) -> list[str]:
        return list(self._sites)

    def get(self, name: str) -> SiteConfig:
        try:
            return self._sites[name]
        except KeyError:
            raise UnknownSiteError(name, self.names()) from None

    def __iter__(self) -> Iterator[SiteConfig]:
        return iter(self._sites.values())

    def __len__(self) -> int:
        return len(self._sites)

    def __contains__(self, name: object) -> bool:
        return name in self._sites

    def shares(self, names: Iterable[str] | None = None) -> dict[str, float]:
        """DRP shares of ``names`` (default: the online sites), scaled to sum to 1.

        Re-normalizing over the sites still taking work keeps the others' relative split when
        one facility is set brokeroff or offline. Sites with no share are left out.
        """
        chosen = [self.get(n) for n in names] if names is not None else [
            s for s in self if s.status is SiteStatus.ONLINE
        ]
        total = sum(s.drp_share for s in chosen)
        if total <= 0:
            return {}
        return {s.name: s.drp_share / total for s in chosen if s.drp_share > 0}


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses duplicate mapping keys (plain YAML keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise SiteConfigError(f"duplicate key {key!r} (line {key_node.start_mark.line + 1})")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _format_error(source: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(part) for part in err["loc"])
        lines.append(f"{source}: {where}: {err['msg']}" if where else f"{source}: {err['msg']}")
    return "\n".join(lines)


def parse_catalog(data: Mapping[str, Any] | None, source: str = "sites.yaml") -> SiteCatalog:
    """Validate already-loaded YAML data; ``source`` names the file in error messages."""
    try:
        model = _CatalogFile.model_validate(data or {})
    except ValidationError as exc:
        raise SiteConfigError(_format_error(source, exc)) from None
    online = [s for s in model.sites.values() if s.status is SiteStatus.ONLINE]
    total = sum(s.drp_share for s in online)
    if online and abs(total - 1.0) > SHARE_TOLERANCE:
        listed = ", ".join(f"{s.name}={s.drp_share:g}" for s in online)
        raise SiteConfigError(
            f"{source}: sites: DRP shares of online sites sum to {total:.3g}, not 1 ({listed})"
        )
    return SiteCatalog(model.sites.values())


def load_catalog(path: str | Path | None = None) -> SiteCatalog:
    """Read and validate a site catalog; the packaged ``sites.yaml`` when ``path`` is None.

    Raises:
        SiteConfigError: the file cannot be read or parsed, or a field is invalid; the
            message starts with the file name and the dotted field path.
    """
    if path is None:
        resource = importlib.resources.files("panray.configs").joinpath("sites.yaml")
        source, read = "sites.yaml", resource.read_text
    else:
        source, read = str(path), Path(path).read_text
    try:
        data = yaml.load(read(), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except SiteConfigError as exc:
        raise SiteConfigError(f"{source}: {exc}") from None
    except (OSError, yaml.YAMLError) as exc:
        raise SiteConfigError(f"{source}: cannot read site catalog: {exc}") from None
    if data is not None and not isinstance(data, dict):
        raise SiteConfigError(f"{source}: expected a mapping with a 'sites' key")
    return parse_catalog(data, source)
