"""Batch adapters: what ``codiray prepare`` writes → the data each objective needs, per modality.

Prepared shards (pipelines/reader.py ``decode_batch``) arrive as numpy columns:

    laion               image uint8 (b, h, w, 3), caption
    webvid              frames uint8 (b, f, h, w, 3), image (the middle frame), caption,
                        audio float16 (b, n) and/or mel + ``has_audio`` when only some clips have sound
    audioset/audiocaps  audio float16 (b, n) (with ``audio.keep_waveform``) and/or mel, caption

The objectives read the models' layouts (models/codecs.py): image uint8 (b, h, w, 3), video uint8
(b, f, h, w, 3), audio float32 (b, n) at 16 kHz, text list[str]. A modality a stage needs but the
shard set lacks is one ``UsageError`` naming the shard set and the tensor — raised up front from the
manifest (``check_manifest``) and again, should a batch still lack it, per batch.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from common.errors import UsageError

# Which prepared column carries each modality's data (the waveform for audio: the codecs' log-mel is
# TacotronSTFT's, not the pipeline's optional ``mel``, so the mel column is never used as audio).
COLUMN = {"image": "image", "video": "frames", "audio": "audio", "text": "caption"}
HINT = {"audio": " (prepare with audio.keep_waveform: true)", "video": " (video clips come from 'codiray prepare webvid')",
        "image": "", "text": ""}


def column_for(modality: str) -> str:
    if modality not in COLUMN:
        raise ValueError(f"unknown modality {modality!r} (known: {', '.join(COLUMN)})")
    return COLUMN[modality]


def missing_error(shard_set: str, modality: str) -> UsageError:
    return UsageError(f"{shard_set}: the prepared shards have no '{column_for(modality)}' tensor, which this "
                      f"stage needs for {modality}{HINT[modality]}")


def carries(manifest: Mapping, modality: str) -> bool:
    """Whether a shard set carries ``modality``: captions are in every sample's json, so ``text`` always;
    any other modality must be a ``tensors`` entry of the manifest that at least one sample carries."""
    return modality == "text" or manifest.get("tensors", {}).get(column_for(modality), {}).get("count", 0) > 0


def check_manifest(manifest: Mapping, modalities, shard_set: str) -> None:
    """Refuse, before anything starts, a shard set whose manifest lacks a tensor the stage needs."""
    for modality in modalities:
        if not carries(manifest, modality):
            raise missing_error(shard_set, modality)


def check_shard_sets(manifests: Mapping[str, Mapping], first: list[str], second: list[str], either: list[str]) -> None:
    """A stage on two shard sets (``{uri: manifest}``, its own first): the first must carry ``first``, the
    second ``second``, and each of ``either`` must be carried by at least one of them."""
    (first_uri, first_manifest), (second_uri, second_manifest) = manifests.items()
    check_manifest(first_manifest, first, first_uri)
    check_manifest(second_manifest, second, second_uri)
    for modality in either:
        if not any(carries(m, modality) for m in manifests.values()):
            raise UsageError(f"{first_uri} and {second_uri}: neither shard set has a '{column_for(modality)}' "
                             f"tensor, which this stage needs for {modality}{HINT[modality]}")


def modality_data(batch: Mapping, modality: str, shard_set: str):
    """The batch's data for ``modality`` in the models' layout (uint8 tensors, float32 waveform, list[str])."""
    name = column_for(modality)
    if name not in batch:
        raise missing_error(shard_set, modality)
    values = batch[name]
    if modality == "text":
        return [str(c) for c in np.asarray(values).tolist()]
    array = np.asarray(values)
    if modality == "audio":
        if array.ndim != 2:
            raise UsageError(f"{shard_set}: 'audio' must be mono waveforms (batch, samples), got shape {array.shape}")
        return torch.from_numpy(array.astype(np.float32))
    want = 4 if modality == "image" else 5
    if array.dtype != np.uint8 or array.ndim != want or array.shape[-1] != 3:
        raise UsageError(f"{shard_set}: '{name}' must be uint8 RGB with {want} dims, got {array.dtype} {array.shape}")
    return torch.from_numpy(np.ascontiguousarray(array))


def presence(batch: Mapping, modality: str, shard_set: str) -> torch.Tensor:
    """(b,) bool: which examples carry ``modality`` (the reader's ``has_<name>`` mask; all, if there is none)."""
    name = column_for(modality)
    if name not in batch:
        raise missing_error(shard_set, modality)
    size = len(batch[name])
    mask = batch.get(f"has_{name}")
    if modality == "text":
        return torch.tensor([bool(str(c).strip()) for c in np.asarray(batch[name]).tolist()], dtype=torch.bool)
    return torch.ones(size, dtype=torch.bool) if mask is None else torch.from_numpy(np.asarray(mask, dtype=bool))


def batch_size(batch: Mapping) -> int:
    return len(next(iter(batch.values())))


def images_as_videos(batch: Mapping) -> dict:
    """A batch of images (``image``, no ``frames``) as 1-frame videos (joint image–video training); a batch
    that has clips passes through."""
    if "frames" in batch or "image" not in batch:
        return dict(batch)
    return {**batch, "frames": np.asarray(batch["image"])[:, None]}


def take_frames(batch: Mapping, frames: int, stride: int) -> dict:
    """The batch with its video clips resampled on the fly (a video curriculum's phase): every
    ``stride``-th frame from the first, at most ``frames`` of them (0: all). Clips too short for the
    request keep what they have; other columns pass through."""
    if "frames" not in batch or (frames == 0 and stride == 1):
        return dict(batch)
    clip = np.asarray(batch["frames"])[:, ::stride]
    return {**batch, "frames": clip[:, :frames] if frames else clip}
