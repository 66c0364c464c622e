"""`codiray submit` and `codiray jobs`: run codiray commands on a Ray cluster through its Job API.

    codiray submit [--address URL] [--follow | --wait] [--resources cpus=1,gpus=0,...]
                   [--env NAME[=VALUE]] -- prepare laion --metadata s3://... --out s3://...
    codiray jobs list | status JOB_ID | logs JOB_ID [--follow] | stop JOB_ID [--wait]

The submitted job runs ``codiray <command>`` on the cluster with this checkout as its working_dir.
Exit codes: 0 when submitted (or, when waiting, when the job succeeded), 1 when a waited-for job
failed or was stopped (its last log lines go to stderr), 2 for usage and connection errors.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path

import yaml

from common.errors import UsageError
from infra import jobs_client as jc

_ADDRESS_HELP = ("Ray Job API address, e.g. http://127.0.0.1:8265 (default: $RAY_API_SERVER_ADDRESS, "
                 "then $RAY_ADDRESS). A token for Ray token auth is read from $RAY_AUTH_TOKEN or "
                 "$RAY_AUTH_TOKEN_PATH, never from the command line.")
_NOT_SUBMITTABLE = ("submit", "jobs")


def register(subparsers) -> None:
    _register_submit(subparsers)
    _register_jobs(subparsers)


def _register_submit(subparsers) -> None:
    parser = subparsers.add_parser(
        "submit",
        help="run a codiray command as a Ray job on a cluster (Ray Job API)",
        description="Submit `codiray <command>` to a Ray cluster. The job ships this checkout as its "
                    "working_dir (without data, venvs and outputs) and the --env variables; prints the "
                    "job id; with --follow streams the logs and exits with the job's outcome.",
        epilog="example: codiray submit --follow -- prepare laion --metadata s3://b/meta "
               "--media s3://b/media --out s3://b/shards",
    )
    parser.add_argument("--address", help=_ADDRESS_HELP)
    parser.add_argument("--follow", action="store_true",
                        help="stream the job's logs and exit with its outcome (0 success, 1 failure)")
    parser.add_argument("--wait", action="store_true",
                        help="wait for the job without streaming logs; exit with its outcome")
    parser.add_argument("--resources", action="append", default=[], metavar="KEY=VALUE[,...]",
                        help="what the job's driver needs: cpus, gpus, memory_gb, accelerator_type "
                             "(default: nothing, so it runs on the head; stages declare their own workers)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME[=VALUE]",
                        help="environment variable for the job (NAME alone copies this shell's value); "
                             "credentials are refused")
    parser.add_argument("--working-dir", type=Path,
                        help="folder to ship (default: the codiray checkout containing the current folder)")
    parser.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                        help="extra gitignore-style pattern left out of the shipped folder")
    parser.add_argument("--job-id", help="submission id to use (default: codiray-<command>-<random>)")
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="the codiray command to run, after '--' (e.g. -- train --recipe R)")
    parser.set_defaults(func=run_submit)


def _register_jobs(subparsers) -> None:
    parser = subparsers.add_parser(
        "jobs", help="list, inspect, follow or stop jobs on a Ray cluster",
        description="Inspect jobs on a Ray cluster through its Job API (any job, not only codiray's).")
    actions = parser.add_subparsers(dest="jobs_action", metavar="ACTION", parser_class=type(parser))
    actions.required = True

    def add(name, func, help_text):
        sub = actions.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--address", help=_ADDRESS_HELP)
        sub.set_defaults(func=func)
        return sub

    add("list", run_jobs_list, "list the cluster's jobs, oldest first")
    add("status", run_jobs_status, "print a job's status and message").add_argument("job_id")
    logs = add("logs", run_jobs_logs, "print a job's logs (with --follow: stream them, exit with its outcome)")
    logs.add_argument("job_id")
    logs.add_argument("--follow", action="store_true", help="stream until the job ends; exit 0 only on success")
    stop = add("stop", run_jobs_stop, "ask the cluster to stop a job")
    stop.add_argument("job_id")
    stop.add_argument("--wait", action="store_true", help="wait until the job has stopped")


# --- submit -------------------------------------------------------------------------------------


def run_submit(args) -> int:
    command = _command_from(args)
    resources = _parse_resources(args.resources)
    env_vars = jc.parse_env(args.env)
    working_dir = (args.working_dir or jc.find_project_root()).resolve()
    runtime_env = jc.build_runtime_env(working_dir, env_vars, args.exclude)
    entrypoint = jc.entrypoint_for(command)
    jc.refuse_token_in([entrypoint, *env_vars.values()])

    address = jc.resolve_address(args.address)
    client = jc.connect(address)
    job_id = args.job_id or f"codiray-{command[0]}-{uuid.uuid4().hex[:8]}"
    with jc.cluster_errors(address, job_id):
        try:
            job_id = client.submit_job(
                entrypoint=entrypoint,
                submission_id=job_id,
                runtime_env=runtime_env,
                metadata={"submitted_by": "codiray submit", "codiray_command": command[0]},
                **(resources.entrypoint_resources() if resources else {}),
            )
        except ValueError as err:  # e.g. the working dir is over Ray's package size limit
            raise UsageError(f"cannot package {working_dir}: {str(err).splitlines()[0]}") from None
        print(job_id, flush=True)
        if not (args.follow or args.wait):
            print(f"codiray: submitted to {address}; follow it with: codiray jobs logs {job_id} --follow",
                  file=sys.stderr)
            return 0
        return _wait_and_report(client, job_id, follow=args.follow)


def _command_from(args) -> list[str]:
    command = list(args.command or [])
    if command[:1] == ["--"]:
        command = command[1:]
    if command[:1] == ["codiray"]:
        command = command[1:]
    if not command:
        raise UsageError("nothing to submit: give a codiray command after '--', "
                         "e.g. codiray submit -- prepare laion --metadata M --media D --out O")
    # Every subcommand, not only the registered one: the CLI (above us) puts its table on args.
    known = [name for name in args.codiray_commands if name not in _NOT_SUBMITTABLE]
    if command[0] not in known:
        raise UsageError(f"cannot submit '{command[0]}': expected a codiray command ({', '.join(known)})")
    return command


def _parse_resources(items: list[str]):
    """``--resources gpus=1,accelerator_type=L40S`` (repeatable) into a WorkerResources, or None."""
    if not items:
        return None
    from common.config import from_dict
    from common.resources import WorkerResources

    data = {}
    for item in items:
        for pair in filter(None, (p.strip() for p in item.split(","))):
            key, sep, raw = pair.partition("=")
            if not sep or not key:
                raise UsageError(f"--resources {pair!r}: expected KEY=VALUE (keys: cpus, gpus, "
                                 "memory_gb, accelerator_type)")
            data[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
    return from_dict(WorkerResources, data, source="--resources")


def _wait_and_report(client, job_id: str, follow: bool) -> int:
    if follow:
        try:
            jc.follow_logs(client, job_id)
        except KeyboardInterrupt:
            print(f"\ncodiray: stopped following; the job keeps running (codiray jobs stop {job_id})",
                  file=sys.stderr)
            return 130
    return jc.report_outcome(client, jc.wait_until_done(client, job_id))


# --- jobs ---------------------------------------------------------------------------------------


def _client(args):
    address = jc.resolve_address(args.address)
    return address, jc.connect(address)


def run_jobs_list(args) -> int:
    address, client = _client(args)
    with jc.cluster_errors(address):
        jobs = sorted(client.list_jobs(), key=lambda j: j.start_time or 0)
    if not jobs:
        print(f"no jobs on {address}", file=sys.stderr)
        return 0
    print(f"{'JOB ID':<34} {'STATUS':<10} {'STARTED (UTC)':<20} ENTRYPOINT")
    for job in jobs:
        entry = job.entrypoint if len(job.entrypoint) <= 70 else job.entrypoint[:67] + "..."
        print(f"{job.submission_id or job.job_id:<34} {jc.status_name(job.status):<10} "
              f"{_when(job.start_time):<20} {entry}")
    return 0


def run_jobs_status(args) -> int:
    address, client = _client(args)
    with jc.cluster_errors(address, args.job_id):
        info = client.get_job_info(args.job_id)
    message = (info.message or "").splitlines()[0] if info.message else ""
    print(f"{args.job_id} {jc.status_name(info.status)}" + (f": {message}" if message else ""))
    return 0


def run_jobs_logs(args) -> int:
    address, client = _client(args)
    with jc.cluster_errors(address, args.job_id):
        if not args.follow:
            sys.stdout.write(client.get_job_logs(args.job_id))
            return 0
        return _wait_and_report(client, args.job_id, follow=True)


def run_jobs_stop(args) -> int:
    address, client = _client(args)
    with jc.cluster_errors(address, args.job_id):
        if not client.stop_job(args.job_id):
            status = jc.status_name(client.get_job_status(args.job_id))
            print(f"{args.job_id} already {status}")
            return 0
        print(f"{args.job_id} stop requested")
        if args.wait:
            info = jc.wait_until_done(client, args.job_id, timeout_s=120)
            print(f"{args.job_id} {jc.status_name(info.status)}")
    return 0


def _when(start_ms) -> str:
    if not start_ms:
        return "-"
    return datetime.fromtimestamp(start_ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")

