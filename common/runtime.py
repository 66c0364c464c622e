"""Connecting to Ray: a cluster when one is named (RAY_ADDRESS / --address), else an in-process one."""

from __future__ import annotations

import os


def ensure_ray(num_cpus: int | None = None, address: str | None = None) -> None:
    """Initialise Ray once per process.

    With no cluster named, start an embedded one. On small machines give Ray more logical CPUs
    than the Train workers take (default: 2x the cores, at least 4), or Ray Data's streaming read
    starves behind the workers and the run hangs.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    cpus = num_cpus or max(4, 2 * (os.cpu_count() or 1))
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=True)
