"""A stage's second shard set (``data.images``): joint image–video training (CoDi's appendix: images as
1-frame videos) and the text stages' audio captions beside image captions — which micro-batches come from
it, how its batches enter the task, what each set must carry, and how a schedule stage names the set."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.errors import UsageError
from training.config import DataConfig
from training.loop import image_turn
from training.schedule import Stage, resolve_stage_config
from training.tasks.batches import check_shard_sets, images_as_videos
from training.tasks.ldm import ConditionConfig, LDMObjective, LDMTask

from objectives_helpers import (audiocaps_batch, debug_codecs, laion_batch, tiny_codi, tiny_image, tiny_text,
                                write_tokenizers)


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
    with pytest.raises(UsageError, match="needs --data laion=URI for its second shard set"):
        resolve_stage_config(stage, "s", "/runs", {"webvid": "/shards/webvid"}, [], ["video_ldm"])


def test_each_batch_of_a_two_set_stage_is_paired_with_the_conditions_its_set_carries(tmp_path):
    """The text LDM on image captions (text or image condition) and audio captions (text or audio): a laion
    batch never draws audio, an audiocaps batch never image, and the context of every kept example is the
    prompt encoder's embedding of its drawn condition (computed here straight from the codecs)."""
    codecs = debug_codecs(write_tokenizers(tmp_path))
    names = ["text", "image", "audio"]
    objective = LDMObjective("text", ConditionConfig(dict.fromkeys(names, 1.0), drop_prob=0.2))
    task = LDMTask(objective, tiny_codi(text=tiny_text()), lambda: codecs, second_set=True)
    for batch, absent, column in ((laion_batch(16, size=16), "audio", "image"), (audiocaps_batch(16), "image", "audio")):
        inputs = task.batch_inputs(batch, codecs, torch.Generator().manual_seed(3), torch.device("cpu"))
        drawn = [names[i] for i in inputs["cond_choice"].tolist()]
        assert absent not in drawn and {"text", column} <= set(drawn), drawn
        data = {"text": list(batch["caption"]), column: torch.from_numpy(np.asarray(
            batch[column], dtype=np.uint8 if column == "image" else np.float32))}
        for i, (name, kept) in enumerate(zip(drawn, inputs["cond_keep"].tolist())):
            want = (codecs.condition(name, data[name][i:i + 1]) if kept else codecs.null(name, 1)).float()
            torch.testing.assert_close(inputs["context"][i:i + 1], want, atol=1e-5, rtol=1e-4)
        assert torch.isfinite(task.loss(task.build_trainable(), inputs))
    # on one shard set, a condition the set lacks stays the set's error
    one_set = LDMTask(objective, tiny_codi(text=tiny_text()), lambda: codecs)
    with pytest.raises(UsageError, match="no 'audio' tensor"):
        one_set.batch_inputs(laion_batch(4, size=16), codecs, torch.Generator().manual_seed(0), torch.device("cpu"))


def test_two_shard_sets_must_carry_each_condition_between_them():
    laion = {"tensors": {"image": {"count": 512}}}
    audiocaps = {"tensors": {"audio": {"count": 256}}}
    task = LDMTask(LDMObjective("text", ConditionConfig({"text": 1.0, "image": 1.0, "audio": 1.0})),
                   tiny_codi(text=tiny_text()), lambda: None, second_set=True)
    check_shard_sets({"/s/laion": laion, "/s/audiocaps": audiocaps}, *task.shard_set_needs())
    with pytest.raises(UsageError, match=r"/s/laion and /s/laion2: neither shard set has a 'audio' tensor"):
        check_shard_sets({"/s/laion": laion, "/s/laion2": laion}, *task.shard_set_needs())
    video = LDMTask(LDMObjective("video", ConditionConfig({"text": 1.0})), tiny_codi(image=tiny_image(video=True)),
                    lambda: None, second_set=True)
    assert video.shard_set_needs() == (["video"], ["image"], ["text"])
    with pytest.raises(UsageError, match=r"/s/audiocaps: the prepared shards have no 'image' tensor"):
        check_shard_sets({"/s/webvid": {"tensors": {"frames": {"count": 8}}}, "/s/audiocaps": audiocaps},
                         *video.shard_set_needs())
