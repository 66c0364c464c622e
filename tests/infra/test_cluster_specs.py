"""Every cluster spec in infra/ is checked offline: Ray's launcher validator, the vendored KubeRay
CRD schemas (unknown fields rejected), what the autoscaler derives, and that the stages the RayJob
runs ask for resources its worker groups offer."""

from __future__ import annotations

import copy
import hashlib
import re
import shlex
import sys

import pytest
import ray
import yaml

from infra import specs
from common.resources import WorkerResources

CRD_SHA256 = {  # KubeRay v1.7.0, vendored unchanged (see infra/crds/kuberay-v1.7.0/SOURCE.md)
    "ray.io_rayclusters.yaml": "c44704442eef0c6721ad40c1d66782c8bd3fdab9d3344306a5820910a679baa1",
    "ray.io_rayjobs.yaml": "01a5cf3b17c1769fda44af7e82debcd98722f0c27b9ab84d084681c6649121f5",
    "LICENSE": "24a918b9cf6d1d0aa84f17384038bedbccdd51e815afdd9d1b49b13d4a7dd6d9",
}
GPU_POOLS = {"gpu-l40s": ("L40S", 4), "gpu-h100": ("H100", 8)}


@pytest.fixture(scope="module")
def aws():
    return specs.load_yaml(specs.AWS_CLUSTER)


@pytest.fixture(scope="module")
def raycluster():
    return specs.load_yaml(specs.RAY_CLUSTER)


@pytest.fixture(scope="module")
def rayjob():
    return specs.load_yaml(specs.RAY_JOB)


def test_vendored_crds_are_the_pinned_release():
    for name, digest in CRD_SHA256.items():
        assert hashlib.sha256((specs.CRD_DIR / name).read_bytes()).hexdigest() == digest, name
    source = (specs.CRD_DIR / "SOURCE.md").read_text()
    assert "tag v1.7.0" in source and "github.com/ray-project/kuberay" in source


def test_every_spec_passes(capsys):
    assert specs.main() == 0, capsys.readouterr().out


# --- cluster launcher (AWS) ---------------------------------------------------------------------


def _set(path: str, value):
    """A mutation of a config: set the value at a dotted path (``[i]`` indexes a list)."""
    def mutate(doc):
        node, parts = doc, re.findall(r"[^.\[\]]+|\[\d+\]", path)
        for part in parts[:-1]:
            node = node[int(part[1:-1])] if part.startswith("[") else node[part]
        last = parts[-1]
        node[int(last[1:-1]) if last.startswith("[") else last] = value
    return mutate


@pytest.mark.parametrize("mutate, expected", [
    (_set("idle_timeout_minute", 5), "'idle_timeout_minute' was unexpected"),
    (_set("available_node_types.gpu-l40s.min_worker", 0), "'min_worker' was unexpected"),
    (_set("available_node_types.gpu-l40s.resources.GPU", 0.5), "is not of type 'integer'"),
    (_set("docker.imagee", "x"), "'imagee' was unexpected"),
    (_set("available_node_types.gpu-h100.node_config.InstanceTyp", "p5.48xlarge"), 'Unknown parameter in input: "InstanceTyp"'),
    (_set("available_node_types.cpu-spot.node_config.InstanceMarketOptions.MarketTyp", "spot"), '"MarketTyp"'),
    (_set("available_node_types.gpu-l40s.node_config.InstanceType", "g6e.12xlargee"), "not an EC2 instance type"),
])
def test_launcher_validation_catches_typos(aws, mutate, expected):
    broken = copy.deepcopy(aws)
    mutate(broken)
    errors = specs.launcher_errors(broken)
    assert any(expected in e for e in errors), errors


def test_aws_cluster_shape(aws):
    types = aws["available_node_types"]
    head = types[aws["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    assert "--num-cpus=0" in " ".join(aws["head_start_ray_commands"])
    assert aws["idle_timeout_minutes"] > 0 and aws["provider"]["cache_stopped_nodes"] is False
    cpu = types["cpu-spot"]
    assert cpu["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert cpu["min_workers"] == 0 and cpu["max_workers"] > 0 and "GPU" not in cpu["resources"]
    for name, (accelerator, gpus) in GPU_POOLS.items():
        pool = types[name]
        assert pool["min_workers"] == 0 and pool["max_workers"] > 0, name
        assert pool["resources"]["GPU"] == gpus and pool["resources"][f"accelerator_type:{accelerator}"] == 1
        assert "InstanceMarketOptions" not in pool["node_config"]  # training runs on on-demand capacity
    for name, node_type in types.items():
        assert set(node_type["node_config"]["IamInstanceProfile"]) == {"Name"}, name  # a role, by name
    # The project is installed on every node from the synced checkout.
    assert aws["file_mounts"] == {"/home/ubuntu/codiray": "."}
    assert aws["setup_commands"] == ["pip install --quiet -e /home/ubuntu/codiray"]
    # Token auth on every node, the token fetched at boot (never a literal).
    for commands in (aws["head_start_ray_commands"], aws["worker_start_ray_commands"]):
        text = " ".join(commands)
        assert "RAY_AUTH_MODE=token" in text and 'RAY_AUTH_TOKEN="$(' in text
        assert f"AWS_DEFAULT_REGION={aws['provider']['region']}" in text


# --- KubeRay ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind, mutate, expected", [
    ("RayCluster", _set("spec.enableInTreeAutoscalling", True), "'enableInTreeAutoscalling' was unexpected"),
    ("RayCluster", _set("spec.workerGroupSpecs[1].minReplica", 0), "'minReplica' was unexpected"),
    ("RayCluster", _set("spec.workerGroupSpecs[1].template.spec.containers[0].imagee", "x"), "'imagee' was unexpected"),
    ("RayCluster", _set("spec.autoscalerOptions.version", "v3"), "'v3' is not one of ['v1', 'v2']"),
    ("RayCluster", _set("spec.authOptions.mode", "tokens"), "'tokens' is not one of"),
    ("RayCluster", _set("spec.workerGroupSpecs[2].maxReplicas", "2"), "'2' is not of type 'integer'"),
    ("RayCluster", _set("apiVersion", "ray.io/v2"), "apiVersion: expected ray.io/<v1|v1alpha1>"),
    ("RayCluster", _set("metadata.name", "Codiray_Cluster"), "does not match"),
    ("RayCluster", _set("metadata.lables", {}), "'lables' was unexpected"),
    ("RayJob", _set("spec.entrypointt", "codiray train"), "'entrypointt' was unexpected"),
    ("RayJob", _set("spec.rayClusterSpec.headGroupSpec.serviceTyp", "ClusterIP"), "'serviceTyp' was unexpected"),
    ("RayJob", _set("spec.rayClusterSpec.workerGroupSpecs[1].template.spec.tolerations[0]", {"kee": "x"}),
     "'kee' was unexpected"),
])
def test_crd_validation_rejects_unknown_fields_and_bad_values(raycluster, rayjob, kind, mutate, expected):
    doc = copy.deepcopy(raycluster if kind == "RayCluster" else rayjob)
    mutate(doc)
    errors = specs.manifest_errors(doc)
    assert any(expected in e for e in errors), errors


def test_free_form_maps_stay_free(raycluster):
    doc = copy.deepcopy(raycluster)
    doc["spec"]["workerGroupSpecs"][0]["rayStartParams"]["object-store-memory"] = "1000000000"
    doc["metadata"]["labels"]["team"] = "research"
    assert specs.manifest_errors(doc) == []


def test_raycluster_shape(raycluster):
    spec = raycluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["autoscalerOptions"]["version"] == "v2" and spec["autoscalerOptions"]["upscalingMode"] == "Default"
    assert spec["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    assert spec["authOptions"] == {"mode": "token", "secretName": "codiray-ray-token"}
    head = spec["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP" and not head.get("enableIngress")
    assert head["rayStartParams"]["num-cpus"] == "0"
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert groups["cpu-spot"]["template"]["spec"]["nodeSelector"] == {"karpenter.sh/capacity-type": "spot"}
    for name, group in groups.items():
        assert group["minReplicas"] == 0 and group.get("replicas", 0) == 0 and group["maxReplicas"] > 0, name
        assert group["template"]["spec"]["serviceAccountName"] == "codiray-ray"
    for name, (_, gpus) in GPU_POOLS.items():
        pod = groups[name]["template"]["spec"]
        limits = pod["containers"][0]["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == str(gpus)
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    text = specs.RAY_CLUSTER.read_text() + specs.RAY_JOB.read_text()
    assert "LoadBalancer" not in text and "NodePort" not in text


@pytest.mark.parametrize("which", ["raycluster", "rayjob"])
def test_autoscaler_derives_the_intended_node_types(request, which):
    doc = request.getfixturevalue(which)
    cluster_spec = specs.ray_cluster_spec(doc)["spec"]
    derived = specs.derived_autoscaling_config(doc)
    types = derived["available_node_types"]
    expected_groups = {g["groupName"] for g in cluster_spec["workerGroupSpecs"]}
    assert set(types) == {"headgroup", *expected_groups}
    assert types["headgroup"]["resources"]["CPU"] == 0
    assert (types["headgroup"]["min_workers"], types["headgroup"]["max_workers"]) == (0, 0)
    assert types["cpu-spot"]["resources"]["CPU"] >= 8 and "GPU" not in types["cpu-spot"]["resources"]
    for name in expected_groups & set(GPU_POOLS):
        accelerator, gpus = GPU_POOLS[name]
        resources = types[name]["resources"]
        assert resources["GPU"] == gpus and resources[f"accelerator_type:{accelerator}"] == 1, name
        assert types[name]["min_workers"] == 0 and types[name]["max_workers"] >= 1
    for group in cluster_spec["workerGroupSpecs"]:
        assert types[group["groupName"]]["max_workers"] == group["maxReplicas"]
    assert derived["idle_timeout_minutes"] == cluster_spec["autoscalerOptions"]["idleTimeoutSeconds"] / 60
    assert derived["upscaling_speed"] == 1000  # "Default": no rate limit on scale-up


def test_launcher_and_kuberay_offer_the_same_pools(aws, raycluster):
    def pools(node_types):
        return {name: (t["resources"].get("GPU", 0), sorted(k for k in t["resources"] if k.startswith("accelerator_type:")))
                for name, t in node_types.items() if t.get("max_workers", 0) > 0}

    derived = specs.derived_autoscaling_config(raycluster)["available_node_types"]
    assert pools(aws["available_node_types"]) == pools(derived)


def _codiray_commands(entrypoint: str) -> list[list[str]]:
    """The `codiray ...` commands of a shell entrypoint joined by `&&`."""
    commands, current = [], []
    for token in shlex.split(entrypoint):
        if token == "&&":
            commands.append(current)
            current = []
        else:
            current.append(token)
    commands.append(current)
    assert all(cmd[0] == "codiray" for cmd in commands), commands
    return [cmd[1:] for cmd in commands]


def test_rayjob_stages_fit_the_worker_groups_they_should_scale(rayjob):
    from codiray.cli import build_parser, split_overrides
    from common.config import load_config
    from pipelines.config import PrepareConfig
    from training.cli import resolve_train_config

    types = specs.derived_autoscaling_config(rayjob)["available_node_types"]
    prepare, train = _codiray_commands(rayjob["spec"]["entrypoint"])

    def parse(argv):
        args, extra = build_parser().parse_known_args(argv)
        args.overrides, unknown = split_overrides(extra)
        assert unknown == [], unknown
        return args

    prepare_args = parse(prepare)
    prepare_cfg = load_config(PrepareConfig, prepare_args.config, prepare_args.overrides, base=PrepareConfig())
    train_args = parse(train)
    train_cfg = resolve_train_config(train_args)
    assert train_cfg.data.path == prepare_args.out  # the schedule trains on what it prepared
    assert train_cfg.storage_path.startswith("s3://") and prepare_args.out.startswith("s3://")

    def homes(worker: WorkerResources) -> set[str]:
        return {name for name, t in types.items() if t["max_workers"] > 0 and worker.fits(t["resources"])}

    assert homes(prepare_cfg.worker) >= {"cpu-spot"}
    worker = train_cfg.scaling.worker
    assert worker.gpus >= 1 and homes(worker) == {"gpu-l40s"}
    per_node = min(int(types["gpu-l40s"]["resources"][k] // v) for k, v in worker.bundle().items() if v >= 1)
    assert train_cfg.scaling.num_workers <= per_node * types["gpu-l40s"]["max_workers"]


def test_images_and_versions_match_the_pinned_ray(aws, raycluster, rayjob):
    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    for doc in (raycluster, specs.ray_cluster_spec(rayjob)):
        assert doc["spec"]["rayVersion"] == ray.__version__
    images = [aws["docker"]["image"], aws["docker"]["head_image"],
              aws["available_node_types"]["cpu-spot"]["docker"]["worker_image"]]
    assert all(image.startswith(f"rayproject/ray:{ray.__version__}-{py}-") for image in images), images
    dockerfile = (specs.INFRA / "kuberay" / "Dockerfile").read_text()
    assert f"FROM rayproject/ray:{ray.__version__}-{py}-gpu" in dockerfile


# Literal credentials: AWS key ids, private keys, or a secret-looking name given a long literal value
# (references such as $(...), ${VAR} or a secret's name do not match).
_LITERAL_SECRET = re.compile(
    r"AKIA[0-9A-Z]{16}|-----BEGIN [A-Z ]*PRIVATE KEY-----|aws_secret_access_key|"
    r"(?:SECRET|TOKEN|PASSWORD|ACCESS_KEY)[A-Za-z_]*\s*[:=]\s*[\"']?[A-Za-z0-9/+=]{16,}", re.IGNORECASE)


def test_no_credentials_in_any_spec():
    files = [p for folder in ("aws", "kuberay") for p in (specs.INFRA / folder).iterdir() if p.is_file()]
    assert len(files) >= 4
    for path in files:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            assert not _LITERAL_SECRET.search(line), f"{path.name}:{number}: {line.strip()}"
    # In the manifests no container gets a credential-like variable as a literal value.
    for path in (specs.RAY_CLUSTER, specs.RAY_JOB):
        for doc in yaml.safe_load_all(path.read_text()):
            for env in _container_envs(doc):
                if re.search(r"SECRET|TOKEN|PASSWORD|KEY", env["name"]):
                    assert "value" not in env, f"{path.name}: {env['name']} must come from a secret"


def _container_envs(node):
    if isinstance(node, dict):
        if "containers" in node:
            for container in node["containers"]:
                yield from container.get("env", [])
        for value in node.values():
            yield from _container_envs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _container_envs(value)


@pytest.mark.parametrize("line", [
    "AWS_SECRET_ACCESS_KEY: wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "export RAY_AUTH_TOKEN=0123456789abcdef0123456789abcdef",
    "aws_access_key_id = AKIAIOSFODNN7EXAMPLE",
    "-----BEGIN RSA PRIVATE KEY-----",
])
def test_the_credential_scan_catches_literals(line):
    assert _LITERAL_SECRET.search(line)
