"""Scale-up from zero GPU nodes and back, with Ray's fake multi-node autoscaler (logical GPUs only).

The node types are the ones Ray derives from infra/kuberay/raycluster.yaml (GPUs per node,
accelerator type, min 0), shrunk to a laptop: at most 2 CPUs and 2 nodes per type, a short idle
timeout. A stage declares its workers as a WorkerResources (1 L40S GPU); the placement group its
Ray Train ScalingConfig asks for is what makes the autoscaler add a gpu-l40s node.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from ray.cluster_utils import FAKE_HEAD_NODE_ID, AutoscalingCluster

from cluster_helpers import REPO, VENV_BIN, base_env, free_port, wait_for
from infra import specs

pytestmark = [pytest.mark.ray, pytest.mark.slow]

IDLE_TIMEOUT_S = 6
_FAKE_PROVIDER = "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider"


class FakeGpuCluster(AutoscalingCluster):
    """AutoscalingCluster with our node types, run as our own process group.

    Two departures from the parent, both measured on Ray 2.60: its config template (the provider's
    example.yaml) is missing from the wheel, and the autoscaler itself reads that file for provider
    defaults, so the fake provider is loaded as an "external" one; and its start()/shutdown() run
    `ray stop --force`, which kills every Ray process of the user (another test's Ray included), so
    the head runs here with --block and is stopped by its process group.
    """

    def __init__(self, worker_node_types: dict, gcs_port: int):
        self._gcs_port = gcs_port
        super().__init__(head_resources={"CPU": 0}, worker_node_types=worker_node_types, autoscaler_v2=True,
                         idle_timeout_minutes=IDLE_TIMEOUT_S / 60)
        self._proc = None

    def _generate_config(self, head_resources, worker_node_types, autoscaler_v2=False, **config_kwargs):
        return {
            "cluster_name": "codiray-fake",
            "max_workers": sum(t["max_workers"] for t in worker_node_types.values()),
            "provider": {
                "type": "external", "module": _FAKE_PROVIDER, "use_node_id_as_ip": True,
                "disable_node_updaters": True, "disable_launch_config_check": True,
                "launch_multiple": True, "head_node_id": FAKE_HEAD_NODE_ID,
                "gcs_address": f"127.0.0.1:{self._gcs_port}",
            },
            "available_node_types": {
                **worker_node_types,
                "ray.head.default": {"resources": dict(head_resources), "node_config": {}, "max_workers": 0},
            },
            "head_node_type": "ray.head.default",
            "upscaling_speed": 1.0,
            "auth": {}, "docker": {}, "file_mounts": {}, "cluster_synced_files": [],
            "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
            "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
            "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
            **config_kwargs,
        }

    def start(self, env: dict, workdir: Path):
        config_path = workdir / "autoscaling.json"
        config_path.write_text(json.dumps(self._config))
        env = dict(env, RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1", RAY_enable_autoscaler_v2="1",
                   RAY_CLOUD_INSTANCE_ID=FAKE_HEAD_NODE_ID, RAY_OVERRIDE_NODE_ID_FOR_TESTING=FAKE_HEAD_NODE_ID)
        self._proc = subprocess.Popen(
            [str(VENV_BIN / "ray"), "start", "--head", "--block", f"--autoscaling-config={config_path}",
             f"--port={self._gcs_port}", "--node-ip-address=127.0.0.1", "--num-cpus=0",
             "--object-store-memory=100000000", "--include-dashboard=false",
             f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
             "--disable-usage-stats"],
            env=env, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def shutdown(self):
        if self._proc is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self._proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self._proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                continue
        try:
            os.killpg(self._proc.pid, signal.SIGKILL)  # the group's other members (raylet, fake nodes)
        except ProcessLookupError:
            pass


def laptop_node_types() -> dict:
    """The RayCluster's worker groups as the autoscaler sees them, at laptop size."""
    derived = specs.derived_autoscaling_config(specs.load_yaml(specs.RAY_CLUSTER))["available_node_types"]
    types = {}
    for name, node_type in derived.items():
        if node_type["max_workers"] == 0:
            continue  # the head group
        resources = {k: v for k, v in node_type["resources"].items() if k not in ("CPU", "memory")}
        resources.update(CPU=min(node_type["resources"]["CPU"], 2), object_store_memory=100_000_000)
        types[name] = {"resources": resources, "node_config": {}, "min_workers": node_type["min_workers"],
                       "max_workers": min(node_type["max_workers"], 2)}
    return types


# Runs as its own driver process: what a training stage does to get its workers, timed.
DRIVER = textwrap.dedent("""
    import json, os, sys, time
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
    from common.resources import WorkerResources

    ray.init(address=sys.argv[1], log_to_driver=False)
    alive = lambda: [n for n in ray.nodes() if n["Alive"]]
    before = {"nodes": len(alive()), "gpus": ray.cluster_resources().get("GPU", 0)}

    worker = WorkerResources(cpus=1, gpus=1, accelerator_type="L40S")
    scaling = worker.scaling_config(num_workers=1)
    start = time.monotonic()
    pg = placement_group(scaling.as_placement_group_factory().bundles, strategy=scaling.placement_strategy)
    ray.get(pg.ready(), timeout=120)
    scale_up_s = time.monotonic() - start

    @ray.remote
    def where():
        return {"node_id": ray.get_runtime_context().get_node_id(), "gpu_ids": ray.get_gpu_ids(),
                "node_type": os.environ.get("RAY_NODE_TYPE_NAME")}

    strategy = PlacementGroupSchedulingStrategy(pg)
    ran = ray.get(where.options(scheduling_strategy=strategy, **worker.ray_remote_args()).remote(), timeout=60)
    node = next(n for n in ray.nodes() if n["NodeID"] == ran["node_id"])
    during = {"nodes": len(alive()), "node_resources": node["Resources"]}
    remove_placement_group(pg)

    start = time.monotonic()
    while len(alive()) > before["nodes"] and time.monotonic() - start < 120:
        time.sleep(0.5)
    scale_down_s = time.monotonic() - start
    after = {"nodes": len(alive()), "gpus": ray.cluster_resources().get("GPU", 0)}
    print(json.dumps({"before": before, "ran": ran, "during": during, "after": after,
                      "scale_up_s": scale_up_s, "scale_down_s": scale_down_s}))
""")


@pytest.fixture
def fake_cluster(tmp_path):
    ray_tmp = Path(tempfile.mkdtemp(prefix="cra", dir="/tmp"))  # Ray's socket paths must stay short
    env = dict(base_env(tmp_path), RAY_TMPDIR=str(ray_tmp), RAY_AUTH_MODE="disabled")
    cluster = FakeGpuCluster(laptop_node_types(), gcs_port=free_port())
    try:
        cluster.start(env, tmp_path)
        yield cluster, env
    finally:
        cluster.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.timeout(720)  # cluster start + up to 240 s head probe + the 300 s driver budget + teardown
def test_gpu_stage_scales_a_gpu_node_up_from_zero_and_back(fake_cluster, record_property):
    cluster, env = fake_cluster
    address = f"127.0.0.1:{cluster._gcs_port}"
    probe = [sys.executable, "-c", f"import ray; ray.init(address='{address}', log_to_driver=False)"]
    def head_accepts_a_driver() -> bool:
        try:  # one attempt (importing ray + connecting) took over 60 s on a loaded 2-core machine
            return subprocess.run(probe, env=env, capture_output=True, timeout=60).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    wait_for(head_accepts_a_driver, 240, "the fake cluster's head to accept drivers", interval_s=1)

    proc = subprocess.run([sys.executable, "-c", DRIVER, address], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])

    assert result["before"] == {"nodes": 1, "gpus": 0}  # just the head, which has no GPUs
    assert result["ran"]["node_type"] == "gpu-l40s" and len(result["ran"]["gpu_ids"]) == 1
    assert result["during"]["nodes"] == 2
    assert result["during"]["node_resources"]["GPU"] == 4
    assert result["during"]["node_resources"]["accelerator_type:L40S"] == 1
    assert result["after"] == {"nodes": 1, "gpus": 0}  # removed after the idle timeout
    assert result["scale_down_s"] >= IDLE_TIMEOUT_S - 1
    record_property("scale_up_s", round(result["scale_up_s"], 1))
    record_property("scale_down_s", round(result["scale_down_s"], 1))
    print(f"\nscale-up {result['scale_up_s']:.1f}s, scale-down {result['scale_down_s']:.1f}s "
          f"(idle timeout {IDLE_TIMEOUT_S}s)")
