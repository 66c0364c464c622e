"""Helpers shared by the pipeline tests: upload, ledger/manifest reading, reconciliation, config."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow.parquet as pq

from common import storage
from pipelines.config import AudioConfig, PrepareConfig, ShardConfig, VideoConfig
from common.storage import S3Config


def upload_tree(local: Path, uri: str, s3: S3Config) -> None:
    """Copy a local folder to ``uri`` (same relative layout)."""
    for path in sorted(Path(local).rglob("*")):
        if path.is_file():
            storage.write_bytes(storage.join(uri, str(path.relative_to(local))), path.read_bytes(), s3)


def read_ledger(out: str, s3: S3Config | None = None) -> dict[str, tuple[str, str]]:
    """``{key: (stage, reason)}`` from ``dropped.parquet``."""
    table = pq.read_table(io.BytesIO(storage.read_bytes(storage.join(out, "dropped.parquet"), s3)))
    return {r["key"]: (r["stage"], r["reason"]) for r in table.to_pylist()}


def read_manifest(out: str, s3: S3Config | None = None) -> dict:
    return json.loads(storage.read_bytes(storage.join(out, "manifest.json"), s3))


def assert_reconciles(manifest: dict, ledger: dict) -> None:
    """input == written + dropped, overall and through every stage, and the ledger agrees."""
    assert manifest["input"] == manifest["written"] + manifest["dropped"]
    assert len(ledger) == manifest["dropped"]
    flow = manifest["per_stage"]["flow"]
    assert flow[0]["in"] == manifest["input"] and flow[-1]["out"] == manifest["written"]
    for before, after in zip(flow, flow[1:]):
        assert before["out"] == after["in"]
    for step in flow:
        assert step["in"] - step["dropped"] == step["out"]
        assert step["dropped"] == sum(1 for stage, _ in ledger.values() if stage == step["stage"])


def small_config(**overrides) -> PrepareConfig:
    """Small, fast settings: 32 px, 4-frame clips at 4 fps (1 s), 2 s audio segments, 3 rows/shard."""
    # the test corpora are mostly bad inputs on purpose (webvid: 5 of the 8 reaching decode fail there)
    cfg = PrepareConfig(video=VideoConfig(size=32, fps=4.0, frames=4, threads=1), max_drop_fraction=0.75,
                        audio=AudioConfig(sample_rate=8000, seconds=2.0, mel=True, n_mels=16, n_fft=256,
                                          win_length=256, hop_length=80, f_max=4000.0),
                        shards=ShardConfig(samples_per_shard=3), concurrency=2)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg
