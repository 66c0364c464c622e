"""A stage's WorkerResources become the Ray requests the autoscaler plans with."""

from __future__ import annotations

import pytest

from common.config import from_dict
from common.errors import ConfigError
from common.resources import WorkerResources

L40S_NODE = {"CPU": 44, "GPU": 4, "memory": 360 * 1024**3, "accelerator_type:L40S": 1}
H100_NODE = {"CPU": 180, "GPU": 8, "memory": 1800 * 1024**3, "accelerator_type:H100": 1}
CPU_NODE = {"CPU": 15, "memory": 56 * 1024**3}


def test_one_request_shape_for_tasks_train_workers_and_drivers():
    worker = WorkerResources(cpus=8, gpus=1, memory_gb=64, accelerator_type="L40S")
    bundle = {"CPU": 8, "GPU": 1, "memory": 64 * 1024**3, "accelerator_type:L40S": 0.001}
    assert worker.bundle() == bundle
    assert worker.ray_remote_args() == {"num_cpus": 8, "num_gpus": 1, "memory": 64 * 1024**3,
                                        "resources": {"accelerator_type:L40S": 0.001}}
    scaling = worker.scaling_config(num_workers=3)
    assert scaling.num_workers == 3 and scaling.use_gpu
    assert scaling.as_placement_group_factory().bundles == [bundle] * 3
    assert worker.entrypoint_resources() == {
        "entrypoint_num_cpus": 8, "entrypoint_num_gpus": 1, "entrypoint_memory": 64 * 1024**3,
        "entrypoint_resources": {"accelerator_type:L40S": 0.001}}


def test_cpu_only_worker_asks_for_no_gpu():
    worker = WorkerResources(cpus=2)
    assert worker.bundle() == {"CPU": 2} and not worker.use_gpu
    assert worker.ray_remote_args() == {"num_cpus": 2, "num_gpus": 0}
    assert not worker.scaling_config(1).use_gpu


@pytest.mark.parametrize("worker, fits", [
    (WorkerResources(cpus=2), {"cpu", "l40s", "h100"}),
    (WorkerResources(cpus=8, gpus=1), {"l40s", "h100"}),
    (WorkerResources(cpus=8, gpus=1, accelerator_type="L40S"), {"l40s"}),
    (WorkerResources(cpus=8, gpus=1, accelerator_type="H100", memory_gb=900), {"h100"}),
    (WorkerResources(cpus=8, gpus=1, accelerator_type="A100"), set()),
    (WorkerResources(cpus=64), {"h100"}),
])
def test_fits_picks_the_node_types_that_can_host_a_worker(worker, fits):
    nodes = {"cpu": CPU_NODE, "l40s": L40S_NODE, "h100": H100_NODE}
    assert {name for name, node in nodes.items() if worker.fits(node)} == fits


def test_bad_values_are_config_errors():
    with pytest.raises(ConfigError, match="cpus and gpus must be >= 0"):
        from_dict(WorkerResources, {"gpus": -1}, source="stage.yaml", prefix="scaling.worker")
    with pytest.raises(ConfigError, match="scaling.worker.gpu': unknown key"):
        from_dict(WorkerResources, {"gpu": 1}, source="stage.yaml", prefix="scaling.worker")


def test_a_worker_uses_the_whole_cpus_it_reserved_as_threads():
    from common.resources import WorkerResources

    assert [WorkerResources(cpus=c).threads for c in (0.0, 0.25, 0.75, 1.0, 1.5, 2.0, 8.0)] == [1, 1, 1, 1, 1, 2, 8]


@pytest.mark.parametrize("kwargs, word", [({"cpus": -1}, "cpus"), ({"gpus": -0.5}, "gpus"),
                                          ({"memory_gb": 0}, "memory_gb"), ({"memory_gb": -4}, "memory_gb")])
def test_impossible_requests_are_refused(kwargs, word):
    with pytest.raises(ValueError, match=word):
        WorkerResources(**kwargs)
    assert WorkerResources(cpus=1.5).threads == 1 and WorkerResources(cpus=4).threads == 4
