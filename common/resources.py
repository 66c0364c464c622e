"""What one worker of a job or stage needs, declared in config and turned into Ray resource requests.

These requests are what the Ray autoscaler reads: a stage asking for ``gpus: 1`` with
``accelerator_type: L40S`` makes it bring up a node of the matching GPU worker type.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional


@dataclass
class WorkerResources:
    """Per-worker request: logical CPUs, GPUs, memory and (optionally) the accelerator type."""

    cpus: float = 1.0
    gpus: float = 0.0
    memory_gb: Optional[float] = None
    accelerator_type: Optional[str] = None  # e.g. "H100", "L40S": Ray's `accelerator_type:<X>` resource

    def __post_init__(self):
        if self.cpus < 0 or self.gpus < 0:
            raise ValueError("cpus and gpus must be >= 0")
        if self.memory_gb is not None and self.memory_gb <= 0:
            raise ValueError("memory_gb must be > 0")

    @property
    def threads(self) -> int:
        """Intra-op threads for a worker holding these CPUs: the whole CPUs it reserved, at least one (an
        unset torch takes every core of the machine in every worker: oversubscribed, several times slower)."""
        return max(1, int(self.cpus))

    @property
    def use_gpu(self) -> bool:
        return self.gpus > 0

    def custom_resources(self) -> dict[str, float]:
        """Ray's accelerator-type resource (a tiny fraction pins the node type without using it up)."""
        return {f"accelerator_type:{self.accelerator_type}": 0.001} if self.accelerator_type else {}

    def bundle(self) -> dict[str, float]:
        """One worker's Ray resources: what the autoscaler must find a node type with room for."""
        out = {"CPU": self.cpus, **self.custom_resources()}
        if self.gpus:
            out["GPU"] = self.gpus
        if self.memory_gb is not None:
            out["memory"] = int(self.memory_gb * 1024**3)
        return out

    def fits(self, node_resources: Mapping[str, float]) -> bool:
        """Whether one worker fits on a node offering ``node_resources`` (a node type's totals)."""
        return all(node_resources.get(name, 0) >= amount for name, amount in self.bundle().items() if amount)

    def ray_remote_args(self) -> dict:
        """Keyword arguments for ``ray.remote``/``map_batches``: num_cpus, num_gpus, memory, resources."""
        args: dict = {"num_cpus": self.cpus, "num_gpus": self.gpus}
        if self.memory_gb is not None:
            args["memory"] = int(self.memory_gb * 1024**3)
        if self.custom_resources():
            args["resources"] = self.custom_resources()
        return args

    def scaling_config(self, num_workers: int):
        """A Ray Train ``ScalingConfig`` asking for ``num_workers`` workers of this shape."""
        from ray.train import ScalingConfig

        return ScalingConfig(num_workers=num_workers, use_gpu=self.use_gpu,
                             resources_per_worker=self.bundle())

    def entrypoint_resources(self) -> dict:
        """Keyword arguments for ``JobSubmissionClient.submit_job`` (the driver's own needs)."""
        out: dict = {"entrypoint_num_cpus": self.cpus}
        if self.gpus:
            out["entrypoint_num_gpus"] = self.gpus
        if self.memory_gb is not None:
            out["entrypoint_memory"] = int(self.memory_gb * 1024**3)
        if self.custom_resources():
            out["entrypoint_resources"] = self.custom_resources()
        return out
