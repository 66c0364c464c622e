"""Helpers of the cluster-path tests: run the `codiray` CLI, poll with a deadline, a head's handle."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
# Variables of the caller's shell that would point the CLI or Ray somewhere else.
_SCRUBBED = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def wait_for(condition, timeout_s: float, what: str, interval_s: float = 0.25):
    """Poll ``condition()`` until it returns something truthy; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
    env.update(HOME=str(home), PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
               RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    return env


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_codiray(args: list[str], env: dict[str, str], timeout_s: float = 180, cwd: Path = REPO) -> CliResult:
    """Run the installed `codiray` console script (what a user types), capturing its output."""
    exe = VENV_BIN / "codiray"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "codiray.cli"]
    proc = subprocess.run([*cmd, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout_s)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@dataclass
class RayHead:
    """A running head: its Job API address, the cluster token and an env for CLI calls."""

    address: str
    token: str
    home: Path
    proc: subprocess.Popen
    env: dict[str, str] = field(default_factory=dict)

    def cli(self, *args: str, with_token: bool = True, timeout_s: float = 180, **extra_env) -> CliResult:
        env = dict(self.env, RAY_API_SERVER_ADDRESS=self.address, **extra_env)
        if with_token:
            env["RAY_AUTH_TOKEN"] = self.token
        return run_codiray(list(args), env, timeout_s=timeout_s)

    def client(self):
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.address, headers={"Authorization": f"Bearer {self.token}"})


def api_ready(address: str, token: str) -> bool:
    import requests

    try:
        r = requests.get(f"{address}/api/jobs/", headers={"Authorization": f"Bearer {token}"}, timeout=2)
    except requests.RequestException:
        return False
    return r.status_code == 200
