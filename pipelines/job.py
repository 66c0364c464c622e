"""The sharded preparation job: input rows -> fixed slices -> Ray Data: decode tasks -> (CLIP actor
pool) -> commit tasks.

Slicing the (deduplicated, key-sorted) input into fixed slices before any work is what makes the
output deterministic and resumable: slice i always becomes ``shard-i`` with the same keys, whatever
the cluster size or the order tasks finish in, and a re-run skips slices already committed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import pickle
import sys
import time
from dataclasses import replace
from typing import Callable, Optional

from common.config import to_dict
from common.errors import CodirayError, JobFailed
from common import storage
from pipelines import shards
from pipelines.config import PrepareConfig
from pipelines.shards import ShardRecord

log = logging.getLogger(__name__)

# A sample on its way to a shard: {"key": sample key, "input": input key, "fields": {ext: bytes},
# "caption": str, "image": uint8 h w 3 or None (what the CLIP filter scores)}.
Sample = dict
# (shard record, rows) -> samples; drops go into the record
ShardFn = Callable[[ShardRecord, list[dict]], list[Sample]]


class JobError(CodirayError):
    """A shard task failed for a reason that is not the input's fault (e.g. the store refused)."""


class TooManyDrops(JobFailed):
    """The job wrote nothing, or one stage dropped more than ``max_drop_fraction`` of the inputs
    reaching it. Raised after the shards, ledger and manifest are written (``manifest`` carries them)."""

    def __init__(self, message: str, manifest: dict):
        super().__init__(message)
        self.manifest = manifest


def check_drops(manifest: dict, out: str, max_fraction: float) -> None:
    """Fail loudly (one line: stage, count, most common reason, example key, ledger) when the job
    wrote nothing or a stage dropped more than ``max_fraction`` of what reached it."""
    flow = manifest["per_stage"]["flow"]
    ledger = storage.join(out, "dropped.parquet")
    if manifest["input"] == 0:
        raise TooManyDrops(f"no inputs: the metadata has no rows, nothing was prepared into {out}", manifest)
    over = [s for s in flow if s["dropped"] and s["dropped"] > max_fraction * s["in"]]
    if not over and manifest["written"] == 0:
        over = [max(flow, key=lambda s: s["dropped"])]
    if not over:
        return
    stage = over[0]
    top = manifest["per_stage"]["top_reason"][stage["stage"]]
    also = f"{top['count']} like this, e.g. key {top['example_key']}"
    raise TooManyDrops(f"{stage['dropped']} of {stage['in']} inputs dropped at {stage['stage']}: {top['example']} "
                       f"[{also}]; see {ledger}", manifest)


def drop_summary(manifest: dict) -> list[str]:
    """The end-of-job lines: drops per stage with the most common reason of each."""
    lines = []
    for step in manifest["per_stage"]["flow"]:
        if not step["dropped"]:
            continue
        top = manifest["per_stage"]["top_reason"][step["stage"]]
        lines.append(f"  {step['stage']:<10} dropped {step['dropped']} of {step['in']}; most often ({top['count']}): "
                     f"{top['reason']} (e.g. {top['example_key']})")
    return lines


class ProgressLine:
    """One live status line for the job: redrawn in place on a terminal, printed every ``every_s``
    seconds otherwise (logs), and once at the end."""

    def __init__(self, label: str, total: int, stream=None, every_s: float = 10.0):
        self.label, self.total, self.stream, self.every_s = label, total, stream or sys.stderr, every_s
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.started = self.last = time.monotonic()
        self.done = self.written = self.dropped = 0

    def text(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = (self.written + self.dropped) / elapsed
        left = self.total - self.done
        eta = f"{left * elapsed / self.done:.0f} s" if self.done else "?"
        return (f"{self.label}: {self.done}/{self.total} shards, {self.written} inputs written, "
                f"{self.dropped} dropped, {rate:.1f} inputs/s, ETA {eta}")

    def update(self, written: int, dropped: int) -> None:
        self.done, self.written, self.dropped = self.done + 1, self.written + written, self.dropped + dropped
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r\033[K" + self.text())
            self.stream.flush()
        elif now - self.last >= self.every_s:
            self.last = now
            print(self.text(), file=self.stream, flush=True)

    def close(self) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + self.text() + "\n")
            self.stream.flush()


def tasks(concurrency: Optional[int]):
    """Ray Data's task pool of ``concurrency`` parallel tasks (None: Ray Data decides)."""
    import ray

    return ray.data.TaskPoolStrategy(size=concurrency)


@contextlib.contextmanager
def ray_data_console_warnings_only():
    """Ray Data's INFO lines ("Starting execution ...", "... execution finished") go to its session log
    file only while our job runs; its warnings still reach the console. Restored afterwards."""
    logger = logging.getLogger("ray.data")
    console = [h for h in logger.handlers if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    levels = [h.level for h in console]
    for handler in console:
        handler.setLevel(max(handler.level, logging.WARNING))
        handler.addFilter(_not_our_choice)
    try:
        yield
    finally:
        for handler, level in zip(console, levels):
            handler.setLevel(level)
            handler.removeFilter(_not_our_choice)


def _not_our_choice(record: logging.LogRecord) -> bool:
    """Ray Data warns that progress bars are disabled: that is this job's choice, not news."""
    return not record.getMessage().startswith("Progress bars disabled")


def quiet_context(dataset) -> None:
    """No Ray Data progress bars or plan printout for our jobs: the job draws its own one line."""
    ctx = dataset.context
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
    ctx.print_on_execution_start = False


def dedup_by_key(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """Keep the first row of each key, sorted by key; later duplicates become ledger rows."""
    seen, kept, dropped = set(), [], []
    for row in rows:
        if row["key"] in seen:
            dropped.append({"key": row["key"], "stage": "dedup", "reason": "duplicate key"})
            continue
        seen.add(row["key"])
        kept.append(row)
    return sorted(kept, key=lambda r: r["key"]), dropped


def pin_endpoint(cfg: PrepareConfig) -> PrepareConfig:
    """Resolve the S3 endpoint on the driver (config, else AWS_ENDPOINT_URL) so every task uses the
    same one whatever its environment; credentials are *not* copied: tasks use the AWS chain."""
    return replace(cfg, s3=replace(cfg.s3, endpoint_url=storage.endpoint_of(cfg.s3)))


def plan_slices(rows: list[dict], per_shard: int) -> list[tuple[str, list[dict]]]:
    return [(shards.shard_name(i), rows[start:start + per_shard]) for i, start in enumerate(range(0, len(rows), per_shard))]


PLAN_NAME = "_plan.json"


def plan_fingerprint(style: str, slices: list[tuple[str, list[dict]]], cfg: PrepareConfig) -> str:
    """Hash of what decides the output: the style, which keys go to which shard, and the processing
    config (not where it runs: the S3 endpoint, worker resources and concurrency are left out)."""
    settings = {k: v for k, v in to_dict(cfg).items()
                if k not in ("s3", "worker", "concurrency", "max_drop_fraction")}
    plan = {"style": style, "slices": [[name, [r["key"] for r in chunk]] for name, chunk in slices],
            "config": settings}
    return hashlib.sha256(json.dumps(plan, sort_keys=True, default=str).encode()).hexdigest()


def claim_output(out: str, fingerprint: str, cfg: PrepareConfig) -> None:
    """Refuse to resume into an ``--out`` whose committed shards came from another plan (other
    inputs or settings): their keys would silently mix with this run's. Records the plan otherwise."""
    plan_uri = storage.join(out, PLAN_NAME)
    previous = json.loads(storage.read_bytes(plan_uri, cfg.s3))["fingerprint"] if storage.exists(plan_uri, cfg.s3) else None
    if previous is None and shards.done_shards(out, cfg.s3):
        previous = "unknown"
    if previous is not None and previous != fingerprint:
        raise JobError(f"{out}: already holds shards prepared from other inputs or settings; "
                       f"use a fresh --out (or delete this one) to prepare this corpus")
    if previous is None:
        storage.write_bytes(plan_uri, json.dumps({"fingerprint": fingerprint}).encode(), cfg.s3)


def _unwrap(err: BaseException) -> BaseException:
    """The user-facing error inside Ray's task-error wrappers, if there is one."""
    seen = err
    for _ in range(8):
        if isinstance(seen, CodirayError):
            return seen
        cause = getattr(seen, "cause", None) or seen.__cause__
        if cause is None:
            break
        seen = cause
    return err


def run_sharded(rows: list[dict], out: str, style: str, cfg: PrepareConfig, process: ShardFn,
                stages: list[str] = (), clip_filter: Optional[object] = None) -> dict:
    """Run ``process`` over slices of ``rows`` as Ray Data tasks, commit shards, write the manifest."""
    import ray

    cfg = pin_endpoint(cfg)
    num_input = len(rows)
    rows, pre_dropped = dedup_by_key(rows)
    slices = plan_slices(rows, cfg.shards.samples_per_shard)
    claim_output(out, plan_fingerprint(style, slices, cfg), cfg)
    done = shards.done_shards(out, cfg.s3)
    # Rows travel pickled: metadata columns are heterogeneous (NaN, bytes) and must reach the task as-is.
    todo = [{"shard": name, "payload": pickle.dumps(chunk)} for name, chunk in slices if name not in done]
    log.info("%s: %d input rows, %d shards (%d already done)", style, num_input, len(slices), len(slices) - len(todo))

    if todo:
        s3, shard_cfg = cfg.s3, cfg.shards

        def decode_one(item: dict) -> dict:
            chunk = pickle.loads(item["payload"])
            record = ShardRecord(item["shard"], [r["key"] for r in chunk])
            samples = process(record, chunk)
            return {"shard": item["shard"], "payload": pickle.dumps((record, samples))}

        def commit_one(item: dict) -> dict:
            record, samples = pickle.loads(item["payload"])
            record.written = sorted({s["input"] for s in samples})
            shards.commit_shard(out, record, [(s["key"], s["fields"]) for s in samples], s3,
                                shard_cfg.samples_per_shard, shard_cfg.max_shard_bytes)
            return {"shard": record.shard, "written": len(record.written), "dropped": len(record.dropped)}

        remote_args = cfg.worker.ray_remote_args()
        dataset = ray.data.from_items(todo, override_num_blocks=len(todo))
        quiet_context(dataset)
        if clip_filter is None:
            # One task per slice does decode and commit: no intermediate objects, half the tasks.
            # Ray Data's per-operator reservation would hold this lone operator to a fraction of the
            # cluster (measured: 1 task at a time on a 4-CPU node), so it is off for this dataset.
            dataset.context.op_resource_reservation_enabled = False
            dataset = dataset.map(lambda item: commit_one(decode_one(item)), compute=tasks(cfg.concurrency),
                                  **remote_args)
        else:
            dataset = dataset.map(decode_one, compute=tasks(cfg.concurrency), **remote_args)
            dataset = clip_filter.apply(dataset)
            dataset = dataset.map(commit_one, compute=tasks(cfg.concurrency), num_cpus=0.25)
        progress = ProgressLine(f"prepare {style}", len(todo))
        try:
            results = []
            with ray_data_console_warnings_only():
                for result in dataset.iter_rows():
                    results.append(result)
                    progress.update(result["written"], result["dropped"])
        except Exception as err:  # noqa: BLE001 - surface the store's one-line reason, not Ray's traceback
            inner = _unwrap(err)
            if isinstance(inner, CodirayError):
                raise JobError(str(inner)) from None
            raise
        finally:
            progress.close()
        log.info("%s: committed %d shards", style, len(results))
    planned = {name: [r["key"] for r in chunk] for name, chunk in slices}
    manifest = shards.finalize(out, num_input, style, cfg.s3, pre_dropped, stages, planned)
    check_drops(manifest, out, cfg.max_drop_fraction)
    return manifest


def per_row(fn: Callable[[dict], list[Sample]]) -> ShardFn:
    """A shard function from a row function: a DropSample from any stage becomes the row's ledger
    entry and the shard goes on; anything else (a bug, a permanent store error) stops the job. A row's
    first sample may carry ``notes`` ({topic: value}), counted per input into the manifest."""
    from pipelines.images import DropSample

    def process(record: ShardRecord, rows: list[dict]) -> list[Sample]:
        samples: list[Sample] = []
        for row in rows:
            try:
                made = fn(row)
            except DropSample as drop:
                record.drop(row["key"], drop.stage, drop.reason)
                continue
            for topic, value in (made[0].pop("notes", {}) if made else {}).items():
                record.note(topic, value)
            for sample in made[1:]:
                sample.pop("notes", None)
            samples.extend(made)
        return samples

    return process
