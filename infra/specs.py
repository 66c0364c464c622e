"""Offline checks of the cluster specs in infra/: what `ray up` and `kubectl apply` would reject.

* The cluster-launcher YAML goes through Ray's own ``prepare_config`` + ``validate_config``; its
  ``node_config`` blocks (free-form to Ray) are checked against EC2 ``RunInstances`` from
  botocore's bundled service model, so a misspelt ``InstanceTyp`` fails here and not at launch.
* KubeRay manifests are validated against the OpenAPI schemas of the CRDs vendored in
  ``infra/crds/kuberay-v1.7.0`` with unknown fields rejected wherever the CRD does not preserve
  them (as the API server prunes or, with strict field validation, refuses them). The CRDs' CEL
  rules (``x-kubernetes-validations``) are not evaluated.
* ``derived_autoscaling_config`` is what Ray's autoscaler will make of a RayCluster spec.

``python -m infra.specs`` checks every spec and prints one line per problem.
"""

from __future__ import annotations

import copy
import functools
import logging
import sys
from pathlib import Path
from typing import Any, Iterator

import yaml

INFRA = Path(__file__).resolve().parent
AWS_CLUSTER = INFRA / "aws" / "cluster.yaml"
RAY_CLUSTER = INFRA / "kuberay" / "raycluster.yaml"
RAY_JOB = INFRA / "kuberay" / "rayjob.yaml"
CRD_DIR = INFRA / "crds" / "kuberay-v1.7.0"
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}

_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# The CRDs leave ObjectMeta as a bare object; these are the fields a manifest may set.
_OBJECT_META = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": _DNS_LABEL, "maxLength": 63},
        "namespace": {"type": "string", "pattern": _DNS_LABEL, "maxLength": 63},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def load_yaml(path: Path) -> Any:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are 1-2 MB: libyaml when present
    with open(path, encoding="utf-8") as f:
        return yaml.load(f, Loader=loader)


# --- Ray cluster launcher -----------------------------------------------------------------------


def launcher_errors(config: dict) -> list[str]:
    """Problems Ray's validator or EC2's API model find in a cluster-launcher config."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    logging.getLogger("ray.autoscaler._private.util").setLevel(logging.WARNING)  # its INFO notes on defaults
    try:
        validate_config(prepare_config(copy.deepcopy(config)))
    except jsonschema.ValidationError as err:
        return [f"{_path(err.absolute_path) or '(top level)'}: {err.message}"]
    except (KeyError, ValueError, TypeError) as err:
        return [f"(top level): {type(err).__name__}: {err}"]
    if config.get("provider", {}).get("type") != "aws":
        return []
    return [f"available_node_types.{name}.node_config: {problem}"
            for name, node_type in config.get("available_node_types", {}).items()
            for problem in ec2_node_config_errors(node_type.get("node_config", {}))]


def ec2_node_config_errors(node_config: dict) -> list[str]:
    """``node_config`` is passed to EC2 RunInstances as is: check it against that API's model."""
    import botocore.session
    from botocore.validate import ParamValidator

    model = botocore.session.get_session().get_service_model("ec2").operation_model("RunInstances")
    report = ParamValidator().validate({**node_config, "MinCount": 1, "MaxCount": 1}, model.input_shape)
    errors = [line.strip() for line in report.generate_report().splitlines() if line.strip()]
    known_types = model.input_shape.members["InstanceType"].enum
    instance_type = node_config.get("InstanceType")
    if instance_type and known_types and instance_type not in known_types:
        errors.append(f"InstanceType {instance_type!r} is not an EC2 instance type")
    return errors


# --- KubeRay ------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def crd(kind: str) -> dict:
    return load_yaml(CRD_DIR / CRD_FILES[kind])


@functools.lru_cache(maxsize=None)
def _validator(kind: str, version: str):
    import jsonschema

    for entry in crd(kind)["spec"]["versions"]:
        if entry["name"] == version:
            schema = strict_schema(entry["schema"]["openAPIV3Schema"])
            schema["properties"]["metadata"] = _OBJECT_META
            schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata", "spec"})
            return jsonschema.Draft7Validator(schema)
    raise KeyError(f"{kind} CRD has no version {version}")


def strict_schema(schema: Any) -> Any:
    """Copy of an OpenAPI schema in which objects with declared properties take no others."""
    if isinstance(schema, list):
        return [strict_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict_schema(value) for key, value in schema.items()}
    if ("properties" in schema and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def manifest_errors(doc: dict) -> list[str]:
    """Problems of one KubeRay manifest against its vendored CRD (empty when it is valid)."""
    if not isinstance(doc, dict):
        return ["(document): not a mapping"]
    kind = doc.get("kind")
    if kind not in CRD_FILES:
        return [f"kind: expected one of {', '.join(CRD_FILES)}, got {kind!r}"]
    group = crd(kind)["spec"]["group"]
    api_version = str(doc.get("apiVersion", ""))
    served = [v["name"] for v in crd(kind)["spec"]["versions"] if v.get("served")]
    version = api_version.removeprefix(f"{group}/")
    if not api_version.startswith(f"{group}/") or version not in served:
        return [f"apiVersion: expected {group}/<{'|'.join(served)}>, got {api_version!r}"]
    errors = sorted(_validator(kind, version).iter_errors(doc), key=lambda e: _path(e.absolute_path))
    return [f"{_path(e.absolute_path) or '(top level)'}: {e.message}" for e in errors]


def ray_cluster_spec(doc: dict) -> dict:
    """A RayCluster-shaped object (metadata + spec) from a RayCluster, or a RayJob's cluster spec."""
    if doc["kind"] == "RayJob":
        return {"metadata": doc["metadata"], "spec": doc["spec"]["rayClusterSpec"]}
    return {"metadata": doc["metadata"], "spec": doc["spec"]}


def derived_autoscaling_config(doc: dict) -> dict:
    """The autoscaling config Ray's KubeRay integration derives from this cluster spec."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    return _derive_autoscaling_config_from_ray_cr(copy.deepcopy(ray_cluster_spec(doc)))


# --- all specs ----------------------------------------------------------------------------------


def all_spec_errors() -> Iterator[str]:
    yield from (f"{AWS_CLUSTER.name}: {e}" for e in launcher_errors(load_yaml(AWS_CLUSTER)))
    for path in (RAY_CLUSTER, RAY_JOB):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            yield from (f"{path.name}: {e}" for e in manifest_errors(doc))


def _path(parts) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def main() -> int:
    errors = list(all_spec_errors())
    for line in errors:
        print(line)
    if not errors:
        print(f"ok: {AWS_CLUSTER.relative_to(INFRA.parent)}, {RAY_CLUSTER.relative_to(INFRA.parent)}, "
              f"{RAY_JOB.relative_to(INFRA.parent)}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
