"""The toy world's four corpora go through the real `codiray prepare` jobs (Ray Data) with zero drops,
and every prepared sample — resized image, 4 fps clip with its audio, resampled 10 s-padded sound —
still shows what its caption says, by the probes."""

from __future__ import annotations

import numpy as np
import pytest
from pipeline_helpers import read_ledger, small_config

from pipelines.cli import prepare
from pipelines.reader import read_shards
from pipelines.toyworld_av import write_toyworld
from pipelines.toyworld_probes import audio_attributes, image_attributes, video_attributes
from pipelines.toyworld_spec import parse_caption


def _samples(out: str) -> dict:
    batches = list(read_shards(out).iter_batches(batch_size=1000, batch_format="numpy"))
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def _decoded(style: str, data: dict, index: int, cfg) -> dict:
    if style == "laion":
        return image_attributes(data["image"][index])
    sound = audio_attributes(data["audio"][index].astype(np.float32), cfg.audio.sample_rate)
    if style == "webvid":
        return {**video_attributes(data["frames"][index], cfg.video.fps), **sound}
    return sound


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_toyworld_corpora_pass_every_prepare_job_and_keep_their_truth(ray_local, tmp_path):
    corpora = write_toyworld(tmp_path / "raw", images=8, videos=4, sounds=4, seed=3, image_size=48)
    cfg = small_config()  # 32 px images and 4-frame 4 fps clips, 8 kHz audio cut/padded to 2 s
    inputs = {"laion": 8, "webvid": 4, "audioset": 4, "audiocaps": 4}
    samples = {**inputs, "webvid": 8}  # two 1 s clips per 2 s video
    for style, paths in corpora.items():
        out = str(tmp_path / "out" / style)
        manifest = prepare(style, str(paths["metadata"]), str(paths["media"]), out, cfg)
        assert manifest["dropped"] == 0 and read_ledger(out) == {}, (style, read_ledger(out))
        assert manifest["written"] == manifest["input"] == inputs[style]
        data = _samples(out)
        assert len(data["key"]) == samples[style]
        for index, caption in enumerate(data["caption"].tolist()):
            truth = parse_caption(caption)
            assert truth and _decoded(style, data, index, cfg) == truth, (style, caption)
