"""Batch adapters: reader output (pipelines/reader.py ``decode_batch`` on WebDataset columns, as
``codiray prepare`` writes them) → each modality in the models' layout; a tensor a stage needs but the
shards lack is one UsageError naming the shard set and the tensor — from the manifest up front and per batch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from common.errors import UsageError
from pipelines.reader import decode_batch
from pipelines.shards import encode_npy
from training.tasks.batches import check_manifest, modality_data, presence


def webdataset_columns(samples: list[dict]) -> dict:
    """Raw columns of a WebDataset batch: one ``<name>.npy`` bytes cell per sample (None where absent) + json."""
    names = sorted({k for s in samples for k in s if k not in ("key", "caption")})
    columns = {f"{n}.npy": [encode_npy(s[n]) if n in s else None for s in samples] for n in names}
    columns["json"] = [json.dumps({"key": s["key"], "caption": s["caption"]}).encode() for s in samples]
    return columns


def specs(samples: list[dict]) -> dict:
    out = {}
    for s in samples:
        for k, v in s.items():
            if isinstance(v, np.ndarray):
                entry = out.setdefault(k, {"shape": list(v.shape), "dtype": str(v.dtype), "count": 0})
                entry["count"] += 1
    return out


def test_webvid_clips_with_and_without_sound():
    rng = np.random.default_rng(0)
    samples = []
    for i in range(3):
        frames = rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
        s = {"key": f"k{i}", "caption": f"clip {i}", "frames": frames, "image": frames[2]}
        if i != 1:
            s["audio"] = (0.1 * (i + 1) * np.ones(1600)).astype(np.float16)
        samples.append(s)
    manifest = {"style": "webvid", "tensors": specs(samples)}
    batch = decode_batch(webdataset_columns(samples), manifest["tensors"])
    check_manifest(manifest, ["video", "audio", "image", "text"], "webvid")
    video = modality_data(batch, "video", "webvid")
    assert video.dtype == torch.uint8 and video.shape == (3, 4, 8, 8, 3)
    assert torch.equal(video[2], torch.from_numpy(samples[2]["frames"]))
    audio = modality_data(batch, "audio", "webvid")
    assert audio.dtype == torch.float32 and audio.shape == (3, 1600)
    assert audio[0, 0].item() == pytest.approx(0.1, abs=1e-3) and audio[1].abs().sum() == 0
    assert presence(batch, "audio", "webvid").tolist() == [True, False, True]
    assert presence(batch, "video", "webvid").all()
    assert modality_data(batch, "text", "webvid") == ["clip 0", "clip 1", "clip 2"]


def test_missing_tensor_is_one_clear_usage_error():
    samples = [{"key": "a", "caption": "x", "image": np.zeros((8, 8, 3), np.uint8)}]
    manifest = {"style": "laion", "tensors": specs(samples)}
    with pytest.raises(UsageError, match=r"^laion: the prepared shards have no 'audio' tensor.*keep_waveform"):
        check_manifest(manifest, ["image", "audio"], "laion")
    with pytest.raises(UsageError, match=r"^laion: the prepared shards have no 'frames' tensor, which this stage needs for video"):
        check_manifest(manifest, ["video"], "laion")
    batch = decode_batch(webdataset_columns(samples), manifest["tensors"])
    with pytest.raises(UsageError, match="^laion: .*'frames'"):
        modality_data(batch, "video", "laion")
    check_manifest(manifest, ["image", "text"], "laion")          # what it has passes
    # mel-only audio shards: the stage needs the waveform (the codecs compute their own log-mel)
    mel_only = {"style": "audiocaps", "tensors": {"mel": {"shape": [64, 101], "dtype": "float16", "count": 3}}}
    with pytest.raises(UsageError, match="^audiocaps: .*'audio'"):
        check_manifest(mel_only, ["audio"], "audiocaps")


def test_wrong_layout_is_refused():
    with pytest.raises(UsageError, match="'image' must be uint8 RGB"):
        modality_data({"image": np.zeros((2, 8, 8, 3), np.float32)}, "image", "laion")


def test_tasks_name_what_their_shards_must_carry():
    from training.tasks.bridging import BridgingObjective, BridgingTask
    from training.tasks.latent_alignment import PHASES, LatentAlignmentObjective, LatentAlignmentTask
    from training.tasks.ldm import ConditionConfig, LDMObjective, LDMTask
    from objectives_helpers import tiny_codi, tiny_image

    ldm = LDMTask(LDMObjective("image", ConditionConfig({"text": 1.0, "audio": 0.5})), tiny_codi(image=tiny_image()), None)
    assert ldm.required == ["audio", "image", "text"]
    assert LatentAlignmentTask(LatentAlignmentObjective(PHASES["video_audio"]), None, None).required == \
        ["audio", "text", "video"]
    assert BridgingTask(BridgingObjective("video"), None, None).required == ["text", "video"]
    laion = {"tensors": {"image": {"shape": [8, 8, 3], "dtype": "uint8", "count": 4}}}
    with pytest.raises(UsageError, match="^laion: .*'audio'"):
        check_manifest(laion, ldm.required, "laion")
