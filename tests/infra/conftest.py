"""Fixtures of the cluster-path tests: the `codiray` CLI as a subprocess, a real Ray head on loopback.

The head is started with `ray start --head --block` as our own child process (in its own process
group), with Ray token auth on, its own HOME and a short RAY_TMPDIR (Ray's socket paths must stay
under 108 bytes). Every wait polls a condition against a deadline.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from cluster_helpers import VENV_BIN, RayHead, api_ready, base_env, free_port, wait_for


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A single-node Ray cluster with token auth, reachable only on 127.0.0.1."""
    home = tmp_path_factory.mktemp("head-home")
    ray_tmp = Path(tempfile.mkdtemp(prefix="crh", dir="/tmp"))
    token = secrets.token_hex(24)
    gcs_port, dashboard_port = free_port(), free_port()
    env = base_env(home)
    head_env = dict(env, RAY_TMPDIR=str(ray_tmp), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    proc = subprocess.Popen(
        [str(VENV_BIN / "ray"), "start", "--head", "--block", f"--port={gcs_port}",
         "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
         # Ports left at Ray's fixed defaults would clash with another live Ray (say, an in-process
         # one from a session fixture): take free ones.
         f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
         "--num-cpus=4", "--disable-usage-stats"],
        env=head_env, cwd=home, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    head = RayHead(f"http://127.0.0.1:{dashboard_port}", token, home, proc, env)
    try:
        wait_for(lambda: proc.poll() is not None or api_ready(head.address, token), 90, "the Ray head's Job API")
        assert proc.poll() is None, f"`ray start --head` exited with {proc.returncode}"
        yield head
    finally:
        _stop_process_group(proc)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _stop_process_group(proc: subprocess.Popen) -> None:
    """SIGTERM every process of the group we created, then SIGKILL what lingers.

    Ray's processes take their time over SIGTERM (measured: >20 s); the test cluster's state is
    thrown away anyway, so they get 3 s.
    """
    for sig, grace_s in ((signal.SIGTERM, 3), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            wait_for(lambda: not _group_alive(proc), grace_s, "the Ray head's processes to exit", 0.1)
            break
        except AssertionError:
            continue
    proc.wait(timeout=10)


def _group_alive(proc: subprocess.Popen) -> bool:
    """Whether any process of the group still runs (zombies awaiting their reaper do not count)."""
    import psutil

    proc.poll()
    for p in psutil.process_iter(["status"]):
        try:
            if os.getpgid(p.pid) == proc.pid and p.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error):
            continue
    return False


@pytest.fixture(scope="module")
def toy_laion(tmp_path_factory) -> dict[str, Path]:
    """A tiny LAION-style corpus (metadata.parquet + JPEGs) from the toy world."""
    from pipelines.toyworld import write_laion_corpus

    return write_laion_corpus(tmp_path_factory.mktemp("toy-laion"), num_samples=12, image_size=32, seed=5)
