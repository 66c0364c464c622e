"""WebDataset shard writing, the per-shard commit record, the drop ledger and the manifest.

Each shard task writes ``shard-NNNNNN.tar`` and then ``_parts/shard-NNNNNN.json`` (its commit
record: the input keys it owned, the keys written, the drops with their reasons). A shard counts as
done only once its record exists, so a killed job re-run redoes exactly the unfinished shards and
yields the same key set. ``finalize`` folds the records into ``manifest.json`` and ``dropped.parquet``
and checks ``input == written + dropped``.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import storage
from pipelines.storage import S3Config

PARTS_DIR = "_parts"
LEDGER_COLUMNS = ("key", "stage", "reason")


def shard_name(index: int) -> str:
    return f"shard-{index:06d}"


def sanitize_key(key: str) -> str:
    """WebDataset splits a member name at its first dot, so keys may not contain dots or slashes."""
    return str(key).replace(".", "_").replace("/", "_")


def encode_npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def decode_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


@dataclass
class ShardRecord:
    """What one shard task did with the input rows it owned."""

    shard: str
    input_keys: list[str]
    written: list[str] = field(default_factory=list)
    dropped: list[dict] = field(default_factory=list)  # {"key", "stage", "reason"}
    bytes: int = 0

    def drop(self, key: str, stage: str, reason: str) -> None:
        self.dropped.append({"key": key, "stage": stage, "reason": reason})


def tar_bytes(samples: list[tuple[str, dict[str, bytes]]]) -> bytes:
    """A deterministic tar (fixed mtime/owner, given order) of ``[(key, {ext: bytes})]`` samples."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, fields in samples:
            for ext in sorted(fields):
                data = fields[ext]
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def commit_shard(out: str, record: ShardRecord, samples: list[tuple[str, dict[str, bytes]]],
                 s3: S3Config | None = None) -> ShardRecord:
    """Write the shard's tar, then its record (the commit point)."""
    data = tar_bytes(samples)
    record.bytes = len(data)
    if samples:
        storage.write_bytes(storage.join(out, f"{record.shard}.tar"), data, s3)
    storage.write_bytes(storage.join(out, PARTS_DIR, f"{record.shard}.json"),
                        json.dumps(record.__dict__).encode(), s3)
    return record


def done_shards(out: str, s3: S3Config | None = None) -> set[str]:
    """Names of shards whose commit record exists (skipped on re-run)."""
    parts = storage.list_files(storage.join(out, PARTS_DIR), ".json", s3)
    return {p.rsplit("/", 1)[-1][: -len(".json")] for p in parts}


def finalize(out: str, num_input: int, style: str, s3: S3Config | None = None,
             pre_dropped: list[dict] = ()) -> dict:
    """Fold shard records (+ drops made before sharding, e.g. dedup) into manifest and ledger."""
    records = [json.loads(storage.read_bytes(p, s3))
               for p in storage.list_files(storage.join(out, PARTS_DIR), ".json", s3)]
    dropped = list(pre_dropped) + [d for r in records for d in r["dropped"]]
    written = sum(len(r["written"]) for r in records)
    per_stage = Counter(d["stage"] for d in dropped)
    manifest = {
        "style": style,
        "input": num_input,
        "written": written,
        "dropped": len(dropped),
        "shards": [{"name": f"{r['shard']}.tar", "samples": len(r["written"]), "bytes": r["bytes"]}
                   for r in records if r["written"]],
        "per_stage": {"dropped": dict(sorted(per_stage.items()))},
    }
    if num_input != written + len(dropped):
        raise RuntimeError(f"{out}: counts do not reconcile: input {num_input} != written {written} "
                           f"+ dropped {len(dropped)}")
    table = pa.Table.from_pylist(dropped, schema=pa.schema([(c, pa.string()) for c in LEDGER_COLUMNS]))
    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.write_bytes(storage.join(out, "dropped.parquet"), buf.getvalue(), s3)
    storage.write_bytes(storage.join(out, "manifest.json"), json.dumps(manifest, indent=2).encode(), s3)
    return manifest
