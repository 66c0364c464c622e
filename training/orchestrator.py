"""Run a schedule (training/schedule.py) on one Ray cluster: independent stages as concurrent
Ray Train runs, each started from its own ``num_cpus=0`` Ray task calling ``training.launch.train``.

    run_schedule(schedules.engine_debug, "exp1", "./outputs/runs", data={"laion": "/data/shards"})

``<storage>/<name>/schedule.json`` records every stage (status, UTC times, resources, checkpoint);
re-running the same schedule and name skips ``done`` stages, resumes interrupted ones (same run name
and storage path: Ray Train restores the latest checkpoint) and starts the rest. A failed stage fails
its dependants; the others go on; at the end any failure is one ``JobFailed`` (exit 1).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional

from common import storage
from common.config import to_dict
from common.errors import JobFailed, UsageError
from common.storage import S3Config
from training.config import TrainConfig
from training.schedule import (Schedule, Stage, StageResources, fits_beside, never_fits, phase_configs,
                               resolve_stage_config)

SCHEDULE_JSON = "schedule.json"
FINISHED = ("done", "skipped")
WAIT_FOR_WORKERS_S = 6 * 3600   # how long a started stage waits for its worker group to be placed


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def say(line: str) -> None:
    print(f"[schedule] {line}", flush=True)


@dataclass
class PlannedStage:
    stage: Stage
    cfg: TrainConfig
    resources: StageResources


def train_stage(phase_cfgs: list[dict]) -> dict:
    """Body of a stage's Ray task: ``launch.train`` once per curriculum phase (each resumes the last).

    Returns the outcome instead of raising, with the task's own start/finish times (the truth about
    when the trainers ran, not when the driver noticed)."""
    from common.config import from_dict
    from training.launch import run_dir, train

    # A stage may wait for its workers longer than Ray Train's 60 s default: the node it needs may be busy
    # with other stages (or still booting in an autoscaled pool). Read in this process, passed on to the
    # stage's Train controller; never_fits has already refused what could never be placed.
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", str(WAIT_FOR_WORKERS_S))
    started, result = utc_now(), None
    try:
        for data in phase_cfgs:
            cfg = from_dict(TrainConfig, data, source="<stage config>")
            result = train(cfg)
            if result.error:
                raise RuntimeError(str(result.error))
        checkpoint = None
        if result is not None and result.checkpoint is not None:
            checkpoint = storage.join(run_dir(cfg), Path(result.checkpoint.path).name)
        error = None
    except Exception as err:  # noqa: BLE001 — any failure of the stage is recorded, the schedule goes on
        lines = [line.strip() for line in f"{type(err).__name__}: {err}".splitlines() if line.strip()]
        checkpoint, error = None, (lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}")[:500]
    metrics = dict(result.metrics or {}) if result is not None and error is None else {}
    return {"started": started, "finished": utc_now(), "checkpoint": checkpoint, "error": error,
            "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}}


def cluster_nodes() -> list[dict[str, float]]:
    import ray

    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def absolute_data(data: Mapping[str, str]) -> dict[str, str]:
    """Local shard folders as absolute paths, resolved on the driver: a stage's task runs on whichever
    node Ray picks, in that node's working directory, where a path relative to the driver's means
    something else (storage paths go the same way, through ``launch.storage_uri``)."""
    return {style: uri if storage.is_remote(uri) else str(Path(uri).expanduser().resolve())
            for style, uri in data.items()}


def read_records(uri: str, s3: Optional[S3Config]) -> dict[str, dict]:
    if not storage.exists(uri, s3):
        return {}
    try:
        data = json.loads(storage.read_bytes(uri, s3))
        return {r["name"]: r for r in data["stages"]}
    except (ValueError, KeyError, TypeError) as err:
        raise UsageError(f"{uri}: not a schedule record ({err}); move it away to start this schedule afresh") from None


def write_records(uri: str, schedule: str, name: str, records: dict[str, dict], s3: Optional[S3Config]) -> None:
    """schedule.json, replaced atomically (local: temp file + rename; S3: one PUT)."""
    body = {"schedule": schedule, "name": name, "updated": utc_now(), "stages": list(records.values())}
    storage.write_bytes(uri, json.dumps(body, indent=2).encode(), s3)


def plan(schedule: Schedule, name: str, storage_path: str, data: Mapping[str, str],
         overrides: list[str], config: Optional[str] = None) -> dict[str, PlannedStage]:
    """Every stage's resolved config and resources, in dependency order; bad input fails here."""
    names = [s.name for s in schedule.stages]
    out = {}
    for stage_name in schedule.order():
        stage = schedule.stage(stage_name)
        cfg = resolve_stage_config(stage, name, storage_path, data, overrides, names, config)
        out[stage_name] = PlannedStage(stage, cfg, StageResources.of(cfg))
    return out


def run_schedule(schedule_fn: Callable[[], Schedule], name: str, storage_path: str,
                 data: Optional[Mapping[str, str]] = None, overrides: Optional[list[str]] = None,
                 s3: Optional[S3Config] = None, config: Optional[str] = None) -> dict[str, dict]:
    """Run the schedule named ``name`` under ``storage_path``; returns the stage records.

    Raises UsageError (exit 2) before anything starts for bad input or a stage that can never fit
    the cluster, and JobFailed (exit 1) after the run if any stage failed."""
    import ray

    from common.runtime import ensure_ray
    from training.launch import storage_uri

    schedule = schedule_fn()
    if not isinstance(schedule, Schedule):
        raise UsageError(f"{getattr(schedule_fn, '__name__', schedule_fn)}: a schedule function must return a Schedule")
    root = storage_uri(TrainConfig(storage_path=storage_path))
    data = absolute_data(data or {})
    planned = plan(schedule, name, root, data, list(overrides or []), config)
    if s3 is not None:   # the store's settings reach every stage that did not set its own
        for p in planned.values():
            if p.cfg.data.s3 == S3Config():
                p.cfg = dataclasses.replace(p.cfg, data=dataclasses.replace(p.cfg.data, s3=s3))
    s3 = s3 or next((p.cfg.data.s3 for p in planned.values()), None)   # schedule.json: where the stages write
    ensure_ray()
    nodes = cluster_nodes()
    for stage_name, p in planned.items():
        problem = never_fits(stage_name, p.resources, nodes)
        if problem:
            raise UsageError(problem)

    record_uri = storage.join(root, name, SCHEDULE_JSON)
    previous = read_records(record_uri, s3)
    records = {n: new_record(p, previous.get(n)) for n, p in planned.items()}

    def save() -> None:
        write_records(record_uri, getattr(schedule_fn, "__name__", str(schedule_fn)), name, records, s3)

    for n, r in records.items():
        if r["status"] == "skipped":
            say(f"{n}: skipped (done before; checkpoint {r['checkpoint']})")
    save()

    task = ray.remote(num_cpus=0, max_retries=0)(train_stage)
    cluster = ray.cluster_resources()
    running: dict = {}  # ObjectRef -> stage name
    launch_order = schedule.launch_order()
    while True:
        changed = fail_dependants(records, planned)
        for n in launch_order:
            if records[n]["status"] != "pending" or not all(records[m]["status"] in FINISHED for m in planned[n].stage.needs):
                continue
            in_flight = [planned[m].resources for m in running.values()]
            if running and not fits_beside(planned[n].resources, in_flight, cluster, nodes=nodes):
                continue  # waits for a running stage to finish and free its workers
            ref = start(planned[n], records, data, task)
            if ref is not None:
                running[ref] = n
            changed = True
        if changed:
            save()
        if not running:
            if changed:
                continue  # a stage failed at start: its dependants fail on the next pass
            break
        ready, _ = ray.wait(list(running), num_returns=1)
        for ref in ready:
            n = running.pop(ref)
            try:
                outcome = ray.get(ref)
            except Exception as err:  # noqa: BLE001 — the task itself died (node lost, OOM): this stage failed
                outcome = {"started": records[n]["started"], "finished": utc_now(), "metrics": {}, "checkpoint": None,
                           "error": f"its Ray task died: {type(err).__name__}: {str(err).strip().splitlines()[0][:300]}"}
            finish(n, outcome, records)
        save()

    failed = [n for n, r in records.items() if r["status"] == "failed"]
    if failed:
        raise JobFailed(f"schedule {name}: {len(failed)} stage(s) failed: "
                        + "; ".join(f"{n} ({records[n]['reason']})" for n in failed))
    return records


def new_record(p: PlannedStage, before: Optional[dict]) -> dict:
    done_before = before is not None and before.get("status") in FINISHED and before.get("checkpoint")
    record = {"name": p.stage.name, "kind": p.stage.kind, "needs": list(p.stage.needs),
              "status": "skipped" if done_before else "pending", "started": None, "finished": None,
              "resources": {"num_workers": p.resources.num_workers, "per_worker": p.resources.per_worker,
                            "total": p.resources.total()},
              "run_dir": storage.join(p.cfg.storage_path, p.cfg.name), "checkpoint": None, "reason": None,
              "phases": [to_dict(ph) for ph in p.stage.phases], "metrics": {}}
    if done_before:
        record.update({k: before.get(k) for k in ("started", "finished", "checkpoint", "metrics")})
    return record


def fail_dependants(records: dict[str, dict], planned: dict[str, PlannedStage]) -> bool:
    """Mark pending stages whose needs failed as failed, with the reason (repeated down the DAG)."""
    changed = False
    for n in planned:  # dependency order: a chain fails in one pass
        if records[n]["status"] != "pending":
            continue
        bad = next((m for m in planned[n].stage.needs if records[m]["status"] == "failed"), None)
        if bad is not None:
            records[n].update(status="failed", finished=utc_now(),
                              reason=f"needs {bad}, which failed: {records[bad]['reason']}")
            say(f"{n}: failed ({records[n]['reason']})")
            changed = True
    return changed


def start(p: PlannedStage, records: dict[str, dict], data: dict[str, str], task):
    """Launch the stage's task (None when wiring in its needs' checkpoints already failed)."""
    cfg = p.cfg
    records[p.stage.name].update(status="running", started=utc_now())
    if p.stage.upstream is not None:
        try:
            cfg = p.stage.upstream(cfg, {m: records[m]["checkpoint"] for m in p.stage.needs})
        except Exception as err:  # noqa: BLE001 — recorded as this stage's failure
            finish(p.stage.name, {"started": records[p.stage.name]["started"], "finished": utc_now(), "metrics": {},
                                  "checkpoint": None, "error": f"loading its needs' checkpoints: {type(err).__name__}: {err}"},
                   records)
            return None
    say(f"{p.stage.name}: started ({p.stage.kind}, {p.resources.describe()}) -> {records[p.stage.name]['run_dir']}")
    return task.remote([to_dict(c) for c in phase_configs(cfg, p.stage.phases, data)])


def finish(n: str, outcome: dict, records: dict[str, dict]) -> None:
    r = records[n]
    r.update(started=outcome["started"], finished=outcome["finished"], metrics=outcome["metrics"])
    if outcome["error"] is None and outcome["checkpoint"] is None:
        outcome["error"] = "the stage finished without a checkpoint"
    if outcome["error"] is None:
        r.update(status="done", checkpoint=outcome["checkpoint"])
        say(f"{n}: done (checkpoint {r['checkpoint']})")
    else:
        r.update(status="failed", reason=outcome["error"])
        say(f"{n}: failed ({r['reason']})")


def parse_data(items: list[str]) -> dict[str, str]:
    """``["laion=s3://b/laion", "webvid=/data/webvid"]`` -> {style: URI}; a malformed item is one line."""
    out: dict[str, str] = {}
    for item in items or []:
        style, sep, uri = item.partition("=")
        if not sep or not style or not uri:
            raise UsageError(f"--data {item!r}: expected STYLE=URI (e.g. laion=s3://bucket/laion-shards)")
        if style in out:
            raise UsageError(f"--data {style}: given twice ({out[style]} and {uri})")
        out[style] = uri
    return out


def schedule_command(args) -> int:
    """``codiray train --schedule NAME [--data STYLE=URI ...] [--name N] [--storage-path URI] [--config YAML]
    [key=value | STAGE:key=value ...]``: the CLI's whole schedule branch."""
    from training.schedules import SCHEDULES

    name = args.name or args.schedule
    records = run_schedule(SCHEDULES[args.schedule], name, args.storage_path or TrainConfig().storage_path,
                           data=parse_data(args.data), overrides=list(args.overrides or []), config=args.config)
    for r in records.values():
        print(f"{r['name']}: {r['status']}; checkpoint {r['checkpoint']}")
    return 0
