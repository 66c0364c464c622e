"""Stream prepared shards into Ray (Train workers read them through ``get_dataset_shard``)."""

from __future__ import annotations

import json

import numpy as np

from common.errors import UsageError
from common import storage
from pipelines.shards import decode_npy
from common.storage import S3Config


def read_manifest(uri: str, s3: S3Config | None = None) -> dict:
    manifest_uri = storage.join(uri, "manifest.json")
    if not storage.exists(manifest_uri, s3):
        raise UsageError(f"{uri}: no manifest.json — is this the --out of 'codiray prepare'?")
    return json.loads(storage.read_bytes(manifest_uri, s3))


def shard_uris(uri: str, s3: S3Config | None = None) -> list[str]:
    """The ``.tar`` shards listed in ``manifest.json`` under ``uri`` (the manifest is the source of truth)."""
    manifest = read_manifest(uri, s3)
    if not manifest["shards"]:
        raise UsageError(f"{uri}: the prepared dataset has no samples (see dropped.parquet)")
    return [storage.join(uri, s["name"]) for s in manifest["shards"]]


def stack_optional(values, spec: dict) -> tuple[np.ndarray, np.ndarray]:
    """Stack ``.npy`` cells, zeros where a sample lacks the tensor, and the per-sample presence mask."""
    arrays = [decode_npy(v) if v is not None else None for v in values]
    blank = np.zeros(spec["shape"], dtype=np.dtype(spec["dtype"]))
    present = np.array([a is not None for a in arrays], dtype=bool)
    return np.stack([a if a is not None else blank for a in arrays]), present


def decode_batch(batch: dict, tensors: dict | None = None) -> dict:
    """Raw WebDataset columns -> numpy tensors: ``*.npy`` to arrays, ``json`` to its fields.

    ``tensors`` (the manifest's) makes every batch carry the same columns: a tensor that only some
    samples have (audio of clips from silent videos) comes with a ``has_<name>`` mask."""
    out: dict = {}
    tensors = tensors or {}
    size = len(next(iter(batch.values())))
    samples = max((spec["count"] for spec in tensors.values()), default=0)
    for name, spec in tensors.items():
        values = batch.get(f"{name}.npy", [None] * size)
        out[name], present = stack_optional(values, spec)
        if spec["count"] < samples:  # optional in this dataset: every batch gets the mask
            out[f"has_{name}"] = present
    for column, values in batch.items():
        if column.endswith(".npy") and column[: -len(".npy")] not in tensors:
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
    tensors = read_manifest(uri, s3).get("tensors", {})
    fs, _ = storage.resolve(uri, s3)
    paths = [storage.resolve(u, s3)[1] for u in uris]
    dataset = ray.data.read_webdataset(paths, filesystem=fs, decoder=None)
    return dataset.map_batches(decode_batch, batch_format="numpy", fn_kwargs={"tensors": tensors})
