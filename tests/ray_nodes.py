"""Ray for the tests: the session's in-process Ray, and a cluster of several nodes on this machine
(``ray.cluster_utils.Cluster``) with what Ray itself recorded about where things ran.

Placement is read from Ray's own records (the placement-group table: which node each worker bundle
was placed on; the GCS actor table: where each Ray Train worker ran), never from anything the code
under test writes.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

L40S = "accelerator_type:L40S"   # the custom resource GPU-pool stages request (scaling.worker.accelerator_type)
# codi_debug's stages that the session's demo run sends to the GPU pool (node B's L40S in place of a GPU)
GPU_POOL = ("image_ldm", "audio_ldm", "text_ldm", "video_ldm")


def runtime_env() -> dict:
    return {"env_vars": {"RAY_AUTH_MODE": "disabled", "HOME": os.environ["HOME"],
                         "TORCH_EXTENSIONS_DIR": os.environ["TORCH_EXTENSIONS_DIR"]}}


def start_local_ray() -> None:
    """An in-process Ray with more logical CPUs than Train workers take (else Ray Data starves)."""
    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False, runtime_env=runtime_env())


@contextmanager
def ray_nodes(*nodes: dict):
    """A head with 0 CPUs (it runs no stage worker) and one node per ``Cluster.add_node`` kwargs, the driver
    connected to the head; yields ``{"head": id, "nodes": [id, ...]}``.

    Any Ray this process already runs (the session's in-process one) is shut down first and started again
    afterwards with the same settings, so later tests find it as before."""
    import ray
    from ray.cluster_utils import Cluster

    had_local = ray.is_initialized()
    if had_local:
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        added = [cluster.add_node(**kwargs) for kwargs in nodes]
        ray.init(address=cluster.address, log_to_driver=False, runtime_env=runtime_env())
        yield {"head": cluster.head_node.node_id, "nodes": [n.node_id for n in added]}
    finally:
        ray.shutdown()
        cluster.shutdown()
        if had_local:
            start_local_ray()


def placements() -> list[tuple[dict, str]]:
    """Every worker bundle Ray placed so far (removed placement groups included): (bundle, node id)."""
    import ray

    return [(bundle, pg["bundles_to_node_id"][i])
            for pg in ray.util.placement_group_table().values() for i, bundle in pg["bundles"].items()]


def train_worker_nodes() -> list[str]:
    """The node of every Ray Train worker actor, alive or dead, from the GCS actor table."""
    from ray._private import state

    return [a["Address"]["NodeID"] for a in state.actors().values() if a["ActorClassName"] == "RayTrainWorker"]
