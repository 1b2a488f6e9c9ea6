"""Validate rendered Kubernetes objects: core kinds against the Kubernetes JSON schemas that
kubernetes-validate ships, custom resources against the CRDs kept in deploy/crds/.

CRD schemas are made strict before use (an object with declared properties refuses others,
as ``kubectl apply --validate=strict`` does), so a misspelt field fails instead of being pruned
silently by the API server. CEL rules (``x-kubernetes-validations``) are not evaluated.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are 2 MB of YAML
CRDS = Path(__file__).resolve().parent.parent / "deploy" / "crds"
#: (apiVersion, kind) -> the CRD file that defines it.
CRD_FILES = {
    ("ray.io/v1", "RayCluster"): "ray.io_rayclusters.yaml",
    ("postgresql.cnpg.io/v1", "Cluster"): "postgresql.cnpg.io_clusters.yaml",
    ("postgresql.cnpg.io/v1", "Pooler"): "postgresql.cnpg.io_poolers.yaml",
    ("postgresql.cnpg.io/v1", "ScheduledBackup"): "postgresql.cnpg.io_scheduledbackups.yaml",
}


class SchemaError(AssertionError):
    """A rendered object does not satisfy its schema; the message names the object and the field."""


def _strict(schema: Any) -> Any:
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out \
            and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@functools.cache
def crd_schema(api_version: str, kind: str) -> dict[str, Any]:
    crd = yaml.load((CRDS / CRD_FILES[(api_version, kind)]).read_text(), Loader=_Loader)  # noqa: S506
    version = api_version.split("/")[1]
    [served] = [v for v in crd["spec"]["versions"] if v["name"] == version and v["served"]]
    schema = _strict(served["schema"]["openAPIV3Schema"])
    # apiVersion/kind/metadata are the API server's, not the CRD's: metadata is checked as ObjectMeta below.
    schema["properties"]["metadata"] = {"type": "object"}
    return schema


def _path(err: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in err.absolute_path) or "(root)"


def validate(obj: dict[str, Any], kubernetes_version: str) -> None:
    """Raise SchemaError naming ``kind/name`` and the failing field, else return."""
    name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key in CRD_FILES:
        errors = sorted(jsonschema.Draft7Validator(crd_schema(*key)).iter_errors(obj), key=_path)
        if errors:
            raise SchemaError(f"{name}: {_path(errors[0])}: {errors[0].message[:300]}")
        meta = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]}
        obj = meta  # the metadata of a custom resource is an ObjectMeta like any other
    try:
        kubernetes_validate.validate(obj, kubernetes_version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        raise SchemaError(f"{name}: {_path(exc)}: {exc.message[:300]}") from None
