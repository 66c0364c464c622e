"""Talking to a Ray cluster's Job API: which cluster, the auth token, what a job ships, how it ends.

Everything here is what `codiray submit` and `codiray jobs` need beyond argument parsing:

* the address comes from ``--address``, else ``RAY_API_SERVER_ADDRESS``, else ``RAY_ADDRESS``
  (the order Ray's own ``ray job`` CLI uses; inside a job ``RAY_ADDRESS`` names the GCS instead);
* the token of a cluster with Ray token auth comes only from the environment (``RAY_AUTH_TOKEN``,
  ``RAY_AUTH_TOKEN_PATH``, or Ray's own ``~/.ray/auth_token`` under ``RAY_AUTH_MODE=token``);
  it is sent as a header and never printed, put on a command line or into a job's record;
* the job ships the project as its ``working_dir`` (minus data, venvs and outputs) plus the
  environment variables the user declared, but never credentials: workers get those from their
  IAM role or Kubernetes secret.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shlex
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, TextIO

from common.errors import CodirayError, JobFailed, UsageError

ADDRESS_ENV_VARS = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
TERMINAL_STATES = ("SUCCEEDED", "FAILED", "STOPPED")

# gitignore-style patterns, relative to the working dir. Ray already skips .git, .venv and what
# .gitignore lists; these cover data, outputs and secrets a checkout may hold without ignoring them.
DEFAULT_EXCLUDES = (
    ".git", ".venv", "venv", "__pycache__", "*.egg-info", ".pytest_cache", ".cache",
    "data/", "datasets/", "outputs/", "runs/", "checkpoints/", "shards/", "codiray-demo/", "wandb/",
    "*.tar", "*.parquet", "*.ckpt", "*.pt", "*.safetensors",
    ".env", "*.env", ".aws/", ".ray/",
)

# Names never shipped with --env: a job's env_vars are stored in its record on the cluster.
_CREDENTIAL_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|PRIVATE_KEY|API_KEY|^AWS_ACCESS_KEY_ID$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def resolve_address(flag: Optional[str], environ=os.environ) -> str:
    """The Job API address (``http://HEAD:8265``) from the flag or the environment."""
    for value in (flag, *(environ.get(name) for name in ADDRESS_ENV_VARS)):
        if value and value.strip():
            return value.strip().rstrip("/")
    raise UsageError("no Ray cluster given: pass --address http://HEAD:8265 or set "
                     "RAY_API_SERVER_ADDRESS (or RAY_ADDRESS)")


def auth_token(environ=os.environ) -> Optional[str]:
    """The cluster's Ray auth token from the environment, or None (then Ray's own chain applies)."""
    token = environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token
    path = environ.get("RAY_AUTH_TOKEN_PATH", "").strip()
    if path:
        try:
            token = Path(path).expanduser().read_text(encoding="utf-8").strip()
        except OSError as err:
            raise UsageError(f"RAY_AUTH_TOKEN_PATH: cannot read the token file ({err.strerror})") from None
        if not token:
            raise UsageError("RAY_AUTH_TOKEN_PATH: the token file is empty")
        return token
    return None


def quiet_ray_logs() -> None:
    """Keep the CLI's output to our lines: Ray's SDK logs every upload step at INFO."""
    for name in ("ray", "ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk"):
        logging.getLogger(name).setLevel(logging.WARNING)  # the SDK modules pin INFO on their own loggers
    # It warns once per run that .git/.venv are skipped; we exclude them on purpose.
    logging.getLogger("ray._private.runtime_env.working_dir").setLevel(logging.ERROR)


@contextmanager
def cluster_errors(address: str, job_id: Optional[str] = None) -> Iterator[None]:
    """Turn the SDK's exceptions into one line naming the cluster (and job)."""
    from ray.exceptions import AuthenticationError

    try:
        yield
    except AuthenticationError:
        if auth_token() is None:
            raise CodirayError(f"the Ray cluster at {address} requires token auth: set RAY_AUTH_TOKEN "
                               "(or RAY_AUTH_TOKEN_PATH) in the environment") from None
        raise CodirayError(f"the Ray cluster at {address} rejected the auth token from the environment "
                           "(RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH)") from None
    except OSError as err:  # ConnectionError and requests' errors, both OSError subclasses
        raise CodirayError(f"cannot reach the Ray Job API at {address} "
                           f"({_first_line(str(err)) or type(err).__name__})") from None
    except RuntimeError as err:
        text = str(err)
        if job_id and ("404" in text or "does not exist" in text):
            raise CodirayError(f"no job '{job_id}' on the Ray cluster at {address}") from None
        raise CodirayError(f"Ray Job API at {address}: {_first_line(text)}") from None


def connect(address: str):
    """A ``JobSubmissionClient`` for ``address``; the token, if any, goes in a header."""
    from ray.job_submission import JobSubmissionClient

    quiet_ray_logs()
    token = auth_token()
    # Passing the header ourselves means RAY_AUTH_MODE need not be set on the submitting machine.
    headers = {"Authorization": f"Bearer {token}"} if token else None
    with cluster_errors(address):
        return JobSubmissionClient(address, headers=headers)


def find_project_root(start: Optional[Path] = None) -> Path:
    """The codiray checkout to ship: the nearest folder above ``start`` with pyproject.toml and codiray/."""
    start = (start or Path.cwd()).resolve()
    # Then the checkout this module lives in (an editable install run from elsewhere).
    for folder in (start, *start.parents, Path(__file__).resolve().parents[1]):
        if (folder / "pyproject.toml").is_file() and (folder / "codiray" / "cli.py").is_file():
            return folder
    raise UsageError("cannot find the codiray project to ship (no pyproject.toml next to a codiray/ "
                     "folder above the current one): run from the checkout or pass --working-dir")


def parse_env(declared: list[str], environ=os.environ) -> dict[str, str]:
    """``--env NAME`` (value taken from this environment) or ``--env NAME=VALUE``; no credentials."""
    env: dict[str, str] = {}
    for item in declared:
        name, sep, value = item.partition("=")
        if not _ENV_NAME.match(name):
            raise UsageError(f"--env {item!r}: expected NAME or NAME=VALUE")
        if _CREDENTIAL_NAME.search(name.upper()):
            raise UsageError(f"--env {name}: credentials are not shipped with a job (its env is stored "
                             "on the cluster); give workers an IAM role or a Kubernetes secret instead")
        if not sep:
            if name not in environ:
                raise UsageError(f"--env {name}: not set in this environment (use --env {name}=VALUE)")
            value = environ[name]
        env[name] = value
    return env


def build_runtime_env(working_dir: Path, env_vars: dict[str, str], excludes: list[str] = ()) -> dict:
    """The job's ``runtime_env``: the project as working_dir and the declared variables."""
    if not working_dir.is_dir():
        raise UsageError(f"--working-dir {working_dir}: not a folder")
    return {
        "working_dir": str(working_dir),
        "excludes": [*DEFAULT_EXCLUDES, *excludes],
        # Python block-buffers stdout into a log file; unbuffered, --follow shows lines as they happen.
        "env_vars": {"PYTHONUNBUFFERED": "1", **env_vars},
    }


def entrypoint_for(command: list[str]) -> str:
    """The shell command the job runs: ``codiray`` and the given subcommand, quoted."""
    return shlex.join(["codiray", *command])


def refuse_token_in(texts: list[str]) -> None:
    """The token must not reach the job's record (entrypoint and env are shown by `ray job list`)."""
    token = auth_token()
    if token and any(token in text for text in texts):
        raise UsageError("the Ray auth token appears in the job's command or --env; it would be stored "
                         "on the cluster: the cluster already has it, leave it out")


def follow_logs(client, job_id: str, out: TextIO = sys.stdout) -> None:
    """Stream the job's logs to ``out`` until the job ends."""

    async def _tail():
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    asyncio.run(_tail())


def wait_until_done(client, job_id: str, timeout_s: Optional[float] = None):
    """Poll the job until it is terminal; returns its ``JobDetails``."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    delay = 0.2
    while True:
        info = client.get_job_info(job_id)
        if status_name(info.status) in TERMINAL_STATES:
            return info
        if deadline is not None and time.monotonic() > deadline:
            raise CodirayError(f"job {job_id} still {status_name(info.status)} after {timeout_s:.0f}s")
        time.sleep(delay)
        delay = min(delay * 2, 2.0)


def report_outcome(client, info, err: TextIO = sys.stderr, tail_lines: int = 10) -> int:
    """0 if the job succeeded; else print its last log lines and raise JobFailed (exit code 1)."""
    job_id = info.submission_id or info.job_id
    status = status_name(info.status)
    if status == "SUCCEEDED":
        print(f"codiray: job {job_id} SUCCEEDED", file=err)
        return 0
    for line in error_lines(client.get_job_logs(job_id), tail_lines):
        print(f"  | {line}", file=err)
    # Ray appends the whole log tail to the message; its first clause is the reason.
    reason = _first_line(info.message or "").split(", last available logs")[0]
    raise JobFailed(f"job {job_id} {status}" + (f": {reason}" if reason else ""))


# Ray's own progress lines in a job log: "2026-01-01 12:00:00,000\tINFO ..." and glog's "[... I|W 12 34] ...".
_RAY_CHATTER = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+(INFO|DEBUG)\s|^\[\d{4}-[^\]]* [IW] \d+ \d+\]"
                          r"|^Running entrypoint for job ")


def error_lines(logs: str, count: int = 10) -> list[str]:
    """The last ``count`` lines of a job's log that are not Ray's own INFO chatter."""
    lines = [line for line in logs.splitlines() if line.strip()]
    return [line for line in lines if not _RAY_CHATTER.search(line)][-count:] or lines[-count:]


def status_name(status) -> str:
    """The plain status name (SUCCEEDED, ...) of a JobStatus enum member."""
    return getattr(status, "value", str(status))


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")
