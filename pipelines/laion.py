"""`codiray prepare laion`: LAION-style metadata parquet + images -> WebDataset shards of tensors.

Each sample in a shard: ``<key>.image.npy`` (uint8 ``h w 3``) and ``<key>.json`` (key, caption,
source, original size). Inputs that fail a stage land in ``dropped.parquet`` with the reason.
"""

from __future__ import annotations

import json

import pyarrow.parquet as pq

from codiray.errors import UsageError
from pipelines import storage
from pipelines.config import PrepareConfig
from pipelines.filters import check_caption, check_metadata
from pipelines.images import DropSample, decode_image
from pipelines.job import run_sharded
from pipelines.shards import ShardRecord, encode_npy, sanitize_key

REQUIRED_COLUMNS = ("TEXT",)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


def read_metadata(uri: str, cfg: PrepareConfig) -> list[dict]:
    """Rows of the LAION parquet (a file or a folder of them); a ``key`` column is derived if absent."""
    fs, path = storage.resolve(uri, cfg.s3)
    try:
        table = pq.read_table(path, filesystem=fs)
    except FileNotFoundError:
        raise UsageError(f"{uri}: metadata not found") from None
    except OSError as err:
        raise UsageError(f"{uri}: cannot read metadata parquet ({err})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise UsageError(f"{uri}: metadata is missing column(s) {', '.join(missing)} "
                         f"(has: {', '.join(table.column_names)})")
    rows = table.to_pylist()
    for index, row in enumerate(rows):
        row["key"] = sanitize_key(row["key"]) if row.get("key") is not None else f"{index:09d}"
    return rows


def make_processor(media: str, cfg: PrepareConfig):
    """The per-shard function: filter metadata/caption, fetch, decode+resize, emit tensors."""

    def find_image(key: str) -> str | None:
        for ext in IMAGE_EXTENSIONS:
            uri = storage.join(media, f"{key}{ext}")
            if storage.exists(uri, cfg.s3):
                return uri
        return None

    def process(record: ShardRecord, rows: list[dict]) -> list[tuple[str, dict[str, bytes]]]:
        samples = []
        for row in rows:
            key = row["key"]
            try:
                check_metadata(row, cfg.caption)
                caption = check_caption(row.get("TEXT"), cfg.caption)
                uri = find_image(key)
                if uri is None:
                    raise DropSample("fetch", f"no image file for key under {media}")
                image = decode_image(storage.read_bytes(uri, cfg.s3), cfg.image)
            except DropSample as drop:
                record.drop(key, drop.stage, drop.reason)
                continue
            meta = {"key": key, "caption": caption, "source": row.get("URL") or uri,
                    "width": row.get("WIDTH"), "height": row.get("HEIGHT"), "style": "laion"}
            samples.append((key, {"image.npy": encode_npy(image), "json": json.dumps(meta).encode()}))
        return samples

    return process


def prepare_laion(metadata: str, media: str, out: str, cfg: PrepareConfig) -> dict:
    """Run the LAION job end to end and return the manifest."""
    rows = read_metadata(metadata, cfg)
    return run_sharded(rows, out, "laion", cfg, make_processor(media, cfg))
