"""The sharded preparation job: input rows -> fixed slices -> one Ray Data task per shard.

Slicing the (deduplicated, key-sorted) input into fixed slices before any work is what makes the
output deterministic and resumable: slice i always becomes ``shard-i`` with the same keys, whatever
the cluster size or the order tasks finish in, and a re-run skips slices already committed.
"""

from __future__ import annotations

import logging
import pickle
from typing import Callable

from pipelines import shards
from pipelines.config import PrepareConfig
from pipelines.shards import ShardRecord

log = logging.getLogger(__name__)

# (shard record, rows) -> list of (key, {ext: bytes}) samples; drops go into the record
ShardFn = Callable[[ShardRecord, list[dict]], list[tuple[str, dict[str, bytes]]]]


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


def run_sharded(rows: list[dict], out: str, style: str, cfg: PrepareConfig, process: ShardFn) -> dict:
    """Run ``process`` over slices of ``rows`` as Ray Data tasks, commit shards, write the manifest."""
    import ray

    num_input = len(rows)
    rows, pre_dropped = dedup_by_key(rows)
    n = cfg.shards.samples_per_shard
    slices = [(shards.shard_name(i), rows[start:start + n]) for i, start in enumerate(range(0, len(rows), n))]
    done = shards.done_shards(out, cfg.s3)
    # Rows travel pickled: metadata columns are heterogeneous (NaN, bytes) and must reach the task as-is.
    todo = [{"shard": name, "rows": pickle.dumps(chunk)} for name, chunk in slices if name not in done]
    log.info("%s: %d input rows, %d shards (%d already done)", style, num_input, len(slices), len(slices) - len(todo))

    if todo:
        s3 = cfg.s3

        def run_one(item: dict) -> dict:
            chunk = pickle.loads(item["rows"])
            record = ShardRecord(item["shard"], [r["key"] for r in chunk])
            samples = process(record, chunk)
            record.written = [key for key, _ in samples]
            shards.commit_shard(out, record, samples, s3)
            return {"shard": record.shard, "written": len(record.written), "dropped": len(record.dropped)}

        remote_args = cfg.worker.ray_remote_args()
        dataset = ray.data.from_items(todo, override_num_blocks=len(todo))
        results = dataset.map(run_one, concurrency=cfg.concurrency, **remote_args).take_all()
        log.info("%s: committed %d shards", style, len(results))
    return shards.finalize(out, num_input, style, cfg.s3, pre_dropped)
