"""Shared test setup: every test runs with its own HOME and Ray auth off, on loopback only.

The README's test command runs pytest inside a private network namespace (`unshare --net`), so
Ray and every test server bind loopback and any accidental download fails loudly.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import pytest

# Set before anything imports ray: a ~/.ray/auth_token in the real HOME would switch token auth on.
_HOME = Path(tempfile.mkdtemp(prefix="codiray-test-home-"))
os.environ["HOME"] = str(_HOME)
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Fake AWS credentials, set before the session's Ray starts: Ray workers inherit the environment of
# the process that starts Ray, which is how the standard AWS credential chain reaches them. The
# endpoint is not set in the environment: jobs get it from config (``s3.endpoint_url``) and pin it
# for their tasks, which is the path under test.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "codiray-test-key")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "codiray-test-secret")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.pop("AWS_ENDPOINT_URL", None)
os.environ.pop("AWS_ENDPOINT_URL_S3", None)
# Any op torch JIT-builds (the engine skips DeepSpeed's comm kernel) stays across runs, in this venv (a
# build is tied to its venv's paths: clones sharing one folder would rebuild it in turn, as the Makefile says).
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))


@pytest.fixture(scope="session")
def ray_local():
    """An in-process Ray with more logical CPUs than Train workers take (else Ray Data starves)."""
    import ray

    from ray_nodes import start_local_ray

    if ray.is_initialized():
        ray.shutdown()
    start_local_ray()
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 API (moto's server) on 127.0.0.1 (random port) for the whole session; yields its URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture()
def bucket(s3_endpoint, request):
    """A fresh bucket per test (named after the test), as an ``s3://`` URI."""
    import boto3

    name = "t-" + "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:50].strip("-")
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def codi_demo_debug(s3_endpoint, tmp_path_factory):
    """One ``codiray demo --debug`` run (toy world, four prepare jobs, ``codi_debug``'s 18 stages, every
    generation task, eval, report), shared by the demo's and the schedule's tests, run as on a real cluster:
    a Ray of three nodes on this machine (a head with no CPUs; node A; node B carrying the custom resource
    that the GPU-pool stages request) with shards and runs in an S3 bucket (moto), the only storage the
    nodes share. Returns (out, paths): ``paths`` as ``run_demo`` returns them, plus ``s3`` (the store's
    S3Config) and ``cluster`` (node ids, and Ray's own records of where every worker bundle and Ray Train
    worker was placed, read before the cluster goes)."""
    import boto3
    import dataclasses

    import torch

    from codiray.demo import debug_config, run_demo
    from common import storage
    from common.errors import UsageError
    from common.runtime import LOCAL_RAY_ENV
    from common.storage import S3Config
    from training.orchestrator import run_schedule
    from training.schedules import codi_debug
    from ray_nodes import GPU_POOL, L40S, placements, ray_nodes, train_worker_nodes

    out = tmp_path_factory.mktemp("codi_demo")
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="codi-demo")
    s3 = S3Config(endpoint_url=s3_endpoint)
    cfg = debug_config()
    cfg = dataclasses.replace(cfg, storage="s3://codi-demo", prepare=dataclasses.replace(cfg.prepare, s3=s3),
                              train_overrides=[f"{s}:scaling.worker.accelerator_type=L40S" for s in GPU_POOL])
    torch.set_num_threads(1)
    for name, value in LOCAL_RAY_ENV.items():   # the nodes inherit them (as ensure_ray's own Ray does)
        os.environ.setdefault(name, value)
    # 5 CPUs: two stages (1.5 each) in flight beside Ray Data's reads, as on the 4-CPU in-process Ray; on any
    # placement of two stages some node keeps a whole CPU free for a read task (B holds one stage at most)
    with ray_nodes({"num_cpus": 3}, {"num_cpus": 2, "resources": {L40S: 1}}) as nodes:
        paths = run_demo(cfg, out)
        paths["cluster"] = {"head": nodes["head"], "A": nodes["nodes"][0], "B": nodes["nodes"][1],
                            "placements": placements(), "train_workers": train_worker_nodes()}
        # a stage asking for an accelerator no node has: one line, before anything is placed or written
        began = time.monotonic()
        try:
            run_schedule(codi_debug, "refused", storage.parent(paths["run"]), data=paths["data"], s3=s3,
                         overrides=["image_ldm:scaling.worker.accelerator_type=H100"])
            refusal = None
        except UsageError as err:
            refusal = str(err)
        paths["refused"] = {"error": refusal, "seconds": time.monotonic() - began, "placements": len(placements()),
                            "wrote": storage.list_files(storage.join(storage.parent(paths["run"]), "refused"), s3=s3,
                                                        recursive=True)}
    paths["s3"] = s3
    return out, paths
