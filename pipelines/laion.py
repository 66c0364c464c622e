"""`codiray prepare laion`: LAION-style metadata parquet + images -> WebDataset shards of tensors.

Each sample in a shard: ``<key>.image.npy`` (uint8 ``h w 3``) and ``<key>.json`` (key, caption,
source, original size). Images come as files named by key or inside img2dataset-style tars. Inputs that fail a stage land in ``dropped.parquet`` with the reason.
"""

from __future__ import annotations

import json

import pyarrow.parquet as pq

from common.errors import UsageError
from common import storage
from pipelines import media
from pipelines.clipfilter import ClipFilter
from pipelines.config import PrepareConfig
from pipelines.filters import check_caption, check_metadata
from pipelines.images import decode_image
from pipelines.job import Sample, per_row, run_sharded
from pipelines.shards import encode_npy, sanitize_key

REQUIRED_COLUMNS = ("TEXT",)
STAGES = ["dedup", "metadata", "caption", "fetch", "decode", "size", "clip_score"]


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
    thresholds = {"punsafe": cfg.caption.punsafe_max, "pwatermark": cfg.caption.pwatermark_max,
                  "similarity": cfg.caption.similarity_min, "aesthetic": cfg.caption.aesthetic_min}
    absent = [c for c, limit in thresholds.items() if limit is not None and c not in table.column_names]
    if absent:
        setting = f"caption.{absent[0]}_{'max' if absent[0] in ('punsafe', 'pwatermark') else 'min'}"
        raise UsageError(f"{uri}: metadata has no {absent[0]!r} column but {setting} is set "
                         f"(set {setting}=null to prepare without that filter)")
    rows = table.to_pylist()
    for index, row in enumerate(rows):
        row["key"] = sanitize_key(row["key"]) if row.get("key") is not None else f"row{index:09d}"
    return rows


def make_row_fn(cfg: PrepareConfig):
    """Per row: metadata thresholds, caption, find the image (file or tar member), decode+resize."""

    def one(row: dict) -> list[Sample]:
        key = row["key"]
        check_metadata(row, cfg.caption)
        caption = check_caption(row.get("TEXT"), cfg.caption)
        uri, _ = media.lookup(row, media.IMAGE_EXTENSIONS)
        image = decode_image(media.read_media_bytes(uri, cfg.s3), cfg.image)
        meta = {"key": key, "caption": caption, "source": row.get("URL") or uri,
                "width": row.get("WIDTH"), "height": row.get("HEIGHT"), "style": "laion"}
        return [{"key": key, "input": key, "image": image, "caption": caption,
                 "fields": {"image.npy": encode_npy(image), "json": json.dumps(meta).encode()}}]

    return one


def prepare_laion(metadata: str, media_uri: str, out: str, cfg: PrepareConfig) -> dict:
    """Run the LAION job end to end and return the manifest. ``media_uri``: a folder of images named
    by key, or of img2dataset-style WebDataset tars (``<key>.jpg`` members)."""
    rows = read_metadata(metadata, cfg)
    if cfg.media.pattern:
        media.check_pattern(cfg.media.pattern, "laion", {"key": "000000000"})

    def candidates(row: dict):
        if cfg.media.pattern:
            return media.pattern_candidates(cfg.media.pattern, {"key": row["key"]})
        return media.simple_candidates([row["key"]], "{key}")

    rows = media.attach(rows, media.index_media(media_uri, cfg.s3, tar_members=True), candidates, media_uri)
    return run_sharded(rows, out, "laion", cfg, per_row(make_row_fn(cfg)), STAGES, ClipFilter.maybe(cfg))
