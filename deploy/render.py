"""Render an install: values in, Kubernetes objects out, as YAML for ``kubectl apply -f -``.

Plain Python instead of Helm templates: Helm is not installable here, and objects built as data
can be validated (Kubernetes schemas, the KubeRay and CNPG CRDs) and checked for the properties
that matter (every site has its worker group, every Ray port its policy) by the test suite.

Examples:
    >>> from panray.deploy import load_values, render
    >>> kinds = [o["kind"] for o in render(load_values(["laptop"]))]
    >>> kinds.count("RayCluster"), kinds.count("Cluster"), "NetworkPolicy" in kinds
    (1, 1, True)
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Any

import yaml

from panray.deploy import database, network, raycluster, server
from panray.deploy.values import Values
from panray.exceptions import SiteConfigError
from panray.sites import SiteCatalog, load_catalog


def _sites(values: Values) -> tuple[SiteCatalog, str]:
    """The catalog the install runs with (validated as panray validates it), and its text."""
    catalog = load_catalog(values.sites_file)
    if values.sites_file is None:
        text = importlib.resources.files("panray.configs").joinpath("sites.yaml").read_text()
    else:
        text = Path(values.sites_file).read_text()
    unknown = sorted(set(values.ray.sites) - set(catalog.names()))
    if unknown:
        raise SiteConfigError(f"values ray.sites names {', '.join(unknown)}, not in "
                              f"{values.sites_file or 'sites.yaml'} (known sites: {', '.join(catalog.names())})")
    return catalog, text


def render(values: Values) -> list[dict[str, Any]]:
    """Every object of the install, in an order ``kubectl apply`` can create them."""
    catalog, sites_text = _sites(values)
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": values.namespace}}
    return [
        namespace,
        *server.objects(values, sites_text),
        *database.objects(values),
        raycluster.ray_cluster(values, catalog),
        *network.policies(values),
    ]


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the sites catalog) as literal blocks, readable in ``kubectl get -o yaml``;
    parts shared between objects written out in full, not as YAML aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _str)


def to_yaml(objects: list[dict[str, Any]]) -> str:
    return yaml.dump_all(objects, Dumper=_Dumper, sort_keys=False, default_flow_style=False)
