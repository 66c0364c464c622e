"""Connecting to Ray: a cluster when one is named (RAY_ADDRESS / --address), else an in-process one."""

from __future__ import annotations

import os


LOCAL_RAY_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0", "RAY_TRAIN_METRICS_ENABLED": "0",
                 "RAY_enable_metrics_collection": "0", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}


def ensure_ray(num_cpus: int | None = None, address: str | None = None, *, log_to_driver: bool = True,
               logging_level: int | None = None) -> None:
    """Initialise Ray once per process.

    With no cluster named, start an embedded one. On small machines give Ray more logical CPUs
    than the Train workers take (default: 2x the cores, at least 4), or Ray Data's streaming read
    starves behind the workers and the run hangs. ``log_to_driver=False`` leaves the workers'
    output in Ray's session log folder (see ``ray_logs_dir``) instead of echoing it here;
    ``logging_level`` is the level of Ray's own driver-side logger (default INFO).
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    cpus = num_cpus or max(4, 2 * (os.cpu_count() or 1))
    extra = {} if logging_level is None else {"logging_level": logging_level}
    # A Ray of this one machine: no node can be preempted, and nobody scrapes metrics. Their pollers (the
    # Train preemption watcher, per-run metrics pushed through the dashboard agent) took about a third
    # of a 2-core laptop while the demo's stages ran. A run's controller polls its workers every 0.5 s, not
    # 2 s: it noticed a finished stage at its next poll (session 19's demo: 3-4 s from a stage's last
    # checkpoint to its end, 18 stages). Set before init: the workers inherit them.
    for name, value in LOCAL_RAY_ENV.items():
        os.environ.setdefault(name, value)
    # address="local": always a new in-process instance. Without it Ray joins any cluster a `ray start`
    # left on this machine (its /tmp/ray/ray_current_cluster) and then refuses num_cpus; a cluster is
    # used only when one is named (RAY_ADDRESS / --address).
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=log_to_driver, **extra)


def ray_logs_dir() -> str | None:
    """The log folder of the Ray node this process started (None when connected to a cluster)."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    return node.get_logs_dir_path() if ray.is_initialized() and node is not None and node.head else None
