"""Stream prepared shards into Ray (Train workers read them through ``get_dataset_shard``)."""

from __future__ import annotations

import json

import numpy as np

from codiray.errors import UsageError
from pipelines import storage
from pipelines.shards import decode_npy
from pipelines.storage import S3Config


def shard_uris(uri: str, s3: S3Config | None = None) -> list[str]:
    """The ``.tar`` shards listed in ``manifest.json`` under ``uri`` (the manifest is the source of truth)."""
    manifest_uri = storage.join(uri, "manifest.json")
    if not storage.exists(manifest_uri, s3):
        raise UsageError(f"{uri}: no manifest.json — is this the --out of 'codiray prepare'?")
    manifest = json.loads(storage.read_bytes(manifest_uri, s3))
    if not manifest["shards"]:
        raise UsageError(f"{uri}: the prepared dataset has no samples (see dropped.parquet)")
    return [storage.join(uri, s["name"]) for s in manifest["shards"]]


def decode_batch(batch: dict) -> dict:
    """Raw WebDataset columns -> numpy tensors: ``*.npy`` to arrays, ``json`` to its fields."""
    out: dict = {}
    for column, values in batch.items():
        if column.endswith(".npy"):
            out[column[: -len(".npy")]] = np.stack([decode_npy(v) for v in values])
        elif column == "json":
            metas = [json.loads(v) for v in values]
            out["key"] = np.array([m["key"] for m in metas])
            out["caption"] = np.array([m.get("caption", "") for m in metas])
    return out


def read_shards(uri: str, s3: S3Config | None = None):
    """A Ray Dataset of decoded samples (``key``, ``caption``, ``image``/``frames``/``audio``...)."""
    import ray

    uris = shard_uris(uri, s3)
    fs, _ = storage.resolve(uri, s3)
    paths = [storage.resolve(u, s3)[1] for u in uris]
    dataset = ray.data.read_webdataset(paths, filesystem=fs, decoder=None)
    return dataset.map_batches(decode_batch, batch_format="numpy")
