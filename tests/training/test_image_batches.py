"""Joint image–video training (CoDi's appendix: images as 1-frame videos): which micro-batches come from
the image shard set, how an image batch enters the video LDM, and how a schedule stage names the set."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.errors import UsageError
from training.config import DataConfig
from training.loop import image_turn
from training.schedule import Stage, resolve_stage_config
from training.tasks.batches import images_as_videos
from training.tasks.ldm import ConditionConfig, LDMObjective, LDMTask

from objectives_helpers import debug_codecs, laion_batch, tiny_codi, tiny_image, write_tokenizers


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 1 / 3, 0.9])
def test_image_turns_are_an_even_floor_of_the_fraction(fraction):
    turns = [image_turn(i, fraction) for i in range(120)]
    for n in range(1, 121):                       # of the first n micro-batches, exactly floor(n·f) are images
        assert sum(turns[:n]) == int(n * fraction + 1e-9), (fraction, n)
    if fraction == 0.25:
        assert [i for i, t in enumerate(turns[:12]) if t] == [3, 7, 11]


def test_data_config_refuses_image_fraction_without_images():
    with pytest.raises(ValueError, match="needs data.images"):
        DataConfig(image_fraction=0.25)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        DataConfig(images="/shards/laion", image_fraction=1.0)


def test_a_batch_of_images_trains_the_video_ldm_as_one_frame_videos(tmp_path):
    codecs = debug_codecs(write_tokenizers(tmp_path))
    batch = laion_batch(2, size=16)
    assert "frames" not in batch
    videos = images_as_videos(batch)
    assert videos["frames"].shape == (2, 1, 16, 16, 3) and np.array_equal(videos["frames"][:, 0], batch["image"])
    assert images_as_videos(videos)["frames"] is videos["frames"]         # clips pass through
    # curriculum phase of 4 frames at stride 2: a 1-frame video keeps its one frame
    task = LDMTask(LDMObjective("video", ConditionConfig({"text": 1.0}), frames=4, frame_stride=2),
                   tiny_codi(image=tiny_image(video=True)), lambda: codecs)
    inputs = task.batch_inputs(batch, codecs, torch.Generator().manual_seed(0), torch.device("cpu"))
    want = codecs.encode("video", torch.from_numpy(batch["image"][:, None])).float()
    assert inputs["x0"].shape[2] == 1 and torch.equal(inputs["x0"], want)
    assert torch.isfinite(task.loss(task.build_trainable(), inputs))


def test_a_stage_names_its_image_shard_set_by_style():
    from training import recipes_codi as rc

    stage = Stage("video_ldm", "ldm", recipe=lambda: rc.ldm("video", "webvid", {"text": 1.0}), data="webvid",
                  images="laion")
    cfg = resolve_stage_config(stage, "s", "/runs", {"webvid": "/shards/webvid", "laion": "/shards/laion"}, [],
                               ["video_ldm"])
    assert (cfg.data.path, cfg.data.images, cfg.data.image_fraction) == ("/shards/webvid", "/shards/laion", 0.25)
    with pytest.raises(UsageError, match="needs --data laion=URI for its image batches"):
        resolve_stage_config(stage, "s", "/runs", {"webvid": "/shards/webvid"}, [], ["video_ldm"])
