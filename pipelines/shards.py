"""WebDataset shard writing, the per-shard commit record, the drop ledger and the manifest.

Each shard task writes ``shard-NNNNNN.tar`` (continued in ``shard-NNNNNN_pK.tar`` parts when a tar
reaches the samples or bytes target) and then ``_parts/shard-NNNNNN.json`` (its commit record: the
input keys it owned, the inputs written, the sample keys, the drops with their reasons). A shard
counts as done only once its record exists, so a killed job re-run redoes exactly the unfinished
shards, rewriting the same tar names with the same bytes, and yields the same key set. ``finalize``
folds the records into ``manifest.json`` and ``dropped.parquet`` and checks ``input == written +
dropped`` overall and stage by stage.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from common.errors import JobFailed
from common import storage
from common.storage import S3Config

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
    written: list[str] = field(default_factory=list)   # input keys with at least one sample written
    dropped: list[dict] = field(default_factory=list)  # {"key", "stage", "reason"}, one per input
    bytes: int = 0
    samples: list[str] = field(default_factory=list)   # sample keys (a video gives one per clip)
    parts: list[dict] = field(default_factory=list)    # {"name", "samples", "bytes"} per tar written
    tensors: dict = field(default_factory=dict)        # {name: {"shape", "dtype"}} of the .npy fields
    notes: dict = field(default_factory=dict)          # {topic: {value: inputs}}, e.g. which naming matched

    def drop(self, key: str, stage: str, reason: str) -> None:
        self.dropped.append({"key": key, "stage": stage, "reason": reason})

    def note(self, topic: str, value: str) -> None:
        counts = self.notes.setdefault(topic, {})
        counts[value] = counts.get(value, 0) + 1


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


def tensor_specs(samples: list[tuple[str, dict[str, bytes]]]) -> dict:
    """Shape and dtype of each ``.npy`` field (from the first sample that has it), read from the npy
    header only. The reader needs these to give every batch the same columns when a field is absent
    from some samples (a clip from a video without an audio track)."""
    specs: dict = {}
    for _, fields in samples:
        for ext, data in fields.items():
            if not ext.endswith(".npy"):
                continue
            if ext[:-4] not in specs:
                buf = io.BytesIO(data)
                version = np.lib.format.read_magic(buf)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, dtype = read(buf)
                specs[ext[:-4]] = {"shape": list(shape), "dtype": np.dtype(dtype).str, "count": 0}
            specs[ext[:-4]]["count"] += 1
    return specs


def merge_tensor_specs(records: list[dict]) -> dict:
    """The dataset's tensors: shape/dtype and how many samples carry each."""
    merged: dict = {}
    for record in records:
        for name, spec in record.get("tensors", {}).items():
            entry = merged.setdefault(name, {"shape": spec["shape"], "dtype": spec["dtype"], "count": 0})
            entry["count"] += spec["count"]
    return dict(sorted(merged.items()))


def part_name(shard: str, index: int) -> str:
    return f"{shard}.tar" if index == 0 else f"{shard}_p{index}.tar"


def split_parts(samples: list[tuple[str, dict[str, bytes]]], max_samples: int, max_bytes: int) -> list[list]:
    """Cut samples, in order, into tars of at most ``max_samples`` samples and about ``max_bytes``
    (a sample larger than the limit gets a tar of its own rather than being dropped)."""
    parts, current, size = [], [], 0
    for key, fields in samples:
        sample_bytes = sum(len(v) + 512 for v in fields.values()) + 512  # tar: header per member
        if current and (len(current) >= max_samples or size + sample_bytes > max_bytes):
            parts.append(current)
            current, size = [], 0
        current.append((key, fields))
        size += sample_bytes
    if current:
        parts.append(current)
    return parts


def commit_shard(out: str, record: ShardRecord, samples: list[tuple[str, dict[str, bytes]]],
                 s3: S3Config | None = None, max_samples: int | None = None,
                 max_bytes: int | None = None) -> ShardRecord:
    """Write the shard's tar part(s), then its record (the commit point)."""
    record.samples = [key for key, _ in samples]
    record.tensors = tensor_specs(samples)
    record.parts, record.bytes = [], 0
    for index, part in enumerate(split_parts(samples, max_samples or len(samples) or 1, max_bytes or 2**62)):
        data = tar_bytes(part)
        name = part_name(record.shard, index)
        storage.write_bytes(storage.join(out, name), data, s3)
        record.parts.append({"name": name, "samples": len(part), "bytes": len(data)})
        record.bytes += len(data)
    storage.write_bytes(storage.join(out, PARTS_DIR, f"{record.shard}.json"),
                        json.dumps(record.__dict__).encode(), s3)
    return record


def done_shards(out: str, s3: S3Config | None = None) -> set[str]:
    """Names of shards whose commit record exists (skipped on re-run)."""
    parts = storage.list_files(storage.join(out, PARTS_DIR), ".json", s3)
    return {p.rsplit("/", 1)[-1][: -len(".json")] for p in parts}


def stage_flow(num_input: int, dropped: list[dict], stages: list[str]) -> list[dict]:
    """Per stage, in pipeline order: inputs reaching it, dropped by it, passed on (``out`` of one
    stage is ``in`` of the next; the last ``out`` is the number of inputs written)."""
    counts = Counter(d["stage"] for d in dropped)
    order = list(stages) + sorted(s for s in counts if s not in stages)
    flow, remaining = [], num_input
    for stage in order:
        flow.append({"stage": stage, "in": remaining, "dropped": counts.get(stage, 0),
                     "out": remaining - counts.get(stage, 0)})
        remaining -= counts.get(stage, 0)
    return flow


def reason_kind(reason: str) -> str:
    """A ledger reason without its per-input details (names, numbers in parentheses), so reasons can
    be counted: "media file missing (looked for x.* ...)" -> "media file missing"."""
    kind = re.sub(r"\s*\(.*", "", reason)
    return re.sub(r"\d+(\.\d+)?", "N", kind).strip() or reason


def top_reasons(dropped: list[dict]) -> dict:
    """Per stage: its most common kind of reason, how many inputs it covers, and one example."""
    by_stage: dict[str, Counter] = {}
    example: dict[tuple[str, str], dict] = {}
    for d in dropped:
        kind = reason_kind(d["reason"])
        by_stage.setdefault(d["stage"], Counter())[kind] += 1
        example.setdefault((d["stage"], kind), d)
    out = {}
    for stage, counts in sorted(by_stage.items()):
        kind, count = max(counts.items(), key=lambda kv: (kv[1], -len(kv[0])))
        first = example[(stage, kind)]
        out[stage] = {"reason": kind, "count": count, "example_key": first["key"], "example": first["reason"]}
    return out


def merge_notes(records: list[dict]) -> dict:
    merged: dict = {}
    for record in records:
        for topic, counts in record.get("notes", {}).items():
            for value, n in counts.items():
                merged.setdefault(topic, {})[value] = merged.get(topic, {}).get(value, 0) + n
    return {topic: dict(sorted(counts.items())) for topic, counts in sorted(merged.items())}


def check_records(out: str, records: list[dict], planned: dict[str, list[str]]) -> None:
    """Key-level accounting: the records are exactly the planned shards, each owns exactly its
    planned keys, and every one of them is either written or dropped, never both or neither."""
    names = {r["shard"] for r in records}
    if names != set(planned):
        odd = sorted(names.symmetric_difference(planned))[:3]
        raise JobFailed(f"{out}: shard records do not match this run's plan (e.g. {', '.join(odd)})")
    for record in records:
        owned, written = set(record["input_keys"]), set(record["written"])
        dropped = [d["key"] for d in record["dropped"]]
        if record["input_keys"] != planned[record["shard"]] or written & set(dropped) \
                or len(dropped) != len(set(dropped)) or written | set(dropped) != owned:
            raise JobFailed(f"{out}: {record['shard']}: its written and dropped keys do not account for "
                            f"exactly the keys it was planned to own")


def finalize(out: str, num_input: int, style: str, s3: S3Config | None = None,
             pre_dropped: list[dict] = (), stages: list[str] = (),
             planned: dict[str, list[str]] | None = None) -> dict:
    """Fold shard records (+ drops made before sharding, e.g. dedup) into manifest and ledger."""
    records = [json.loads(storage.read_bytes(p, s3))
               for p in storage.list_files(storage.join(out, PARTS_DIR), ".json", s3)]
    if planned is not None:
        check_records(out, records, planned)
    dropped = list(pre_dropped) + [d for r in records for d in r["dropped"]]
    written = sum(len(r["written"]) for r in records)
    flow = stage_flow(num_input, dropped, list(stages))
    manifest = {
        "style": style,
        "input": num_input,
        "written": written,
        "dropped": len(dropped),
        "samples": sum(len(r.get("samples", r["written"])) for r in records),
        "shards": [part for r in records for part in _parts_of(r)],
        "tensors": merge_tensor_specs(records),
        "per_stage": {"dropped": dict(sorted(Counter(d["stage"] for d in dropped).items())), "flow": flow,
                      "top_reason": top_reasons(dropped)},
        "notes": merge_notes(records),
    }
    if num_input != written + len(dropped) or (flow and flow[-1]["out"] != written):
        raise JobFailed(f"{out}: counts do not reconcile: input {num_input} != written {written} "
                           f"+ dropped {len(dropped)}")
    table = pa.Table.from_pylist(dropped, schema=pa.schema([(c, pa.string()) for c in LEDGER_COLUMNS]))
    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.write_bytes(storage.join(out, "dropped.parquet"), buf.getvalue(), s3)
    storage.write_bytes(storage.join(out, "manifest.json"), json.dumps(manifest, indent=2).encode(), s3)
    return manifest


def _parts_of(record: dict) -> list[dict]:
    if "parts" in record:
        return record["parts"]
    # records written before tar parts existed: one tar per shard
    return [{"name": f"{record['shard']}.tar", "samples": len(record["written"]), "bytes": record["bytes"]}] \
        if record["written"] else []
