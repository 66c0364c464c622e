"""Per-modality LDM exports meeting in one CoDi (``task.init_parts``, CoDi §3.3 → §3.4), the video
curriculum's on-the-fly clip resampling, and a schedule run folder as a model (training/run_model.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from common.errors import UsageError
from models.codi import CoDi, CoDiConfig
from training import recipes_codi as rc
from training.task import load_codi_parts, parts_config
from training.task_config import TaskConfig
from training.tasks.batches import take_frames


def save(tmp_path, name: str, seed: int, **specs) -> str:
    torch.manual_seed(seed)
    return str(CoDi(CoDiConfig(**specs)).save_pretrained(tmp_path / name))


def test_init_parts_take_each_unet_whole_from_its_own_folder(tmp_path):
    image = save(tmp_path, "image", 1, image=rc.tiny_image_unet(video=True))
    audio = save(tmp_path, "audio", 2, audio=rc.tiny_audio_unet())
    text = save(tmp_path, "text", 3, text=rc.tiny_text_unet())
    merged = load_codi_parts({"image": image, "audio": audio, "text": text}, "model.safetensors")
    assert sorted(merged.unets) == ["audio", "image", "text"]
    state = merged.state_dict()
    for folder in (image, audio, text):
        own = CoDi.from_pretrained(folder).state_dict()
        assert all(torch.equal(state[k], v) for k, v in own.items()), folder
    assert len(state) == sum(len(CoDi.from_pretrained(f).state_dict()) for f in (image, audio, text))


def test_init_parts_refuse_a_folder_without_the_unet_or_with_another_diffusion(tmp_path):
    image = save(tmp_path, "image", 1, image=rc.tiny_image_unet())
    with pytest.raises(UsageError, match="holds no audio UNet"):
        parts_config({"audio": image})
    other = CoDiConfig(audio=rc.tiny_audio_unet())
    other = dataclasses.replace(other, diffusion=dataclasses.replace(other.diffusion, prediction="v"))
    torch.manual_seed(0)
    folder = CoDi(other).save_pretrained(tmp_path / "v")
    with pytest.raises(UsageError, match="diffusion process differs"):
        parts_config({"image": image, "audio": str(folder)})
    with pytest.raises(ValueError, match="not both"):
        TaskConfig(kind="latent_alignment", init=image, init_parts={"image": image},
                   latent_alignment=rc.alignment("text_image").task.latent_alignment)


def test_video_curriculum_resamples_clips_on_the_fly():
    frames = np.arange(2 * 8).reshape(2, 8)[:, :, None, None, None] * np.ones((1, 1, 2, 2, 3), np.uint8)
    batch = {"frames": frames.astype(np.uint8), "caption": np.array(["a", "b"])}
    index = lambda b: b["frames"][:, :, 0, 0, 0].tolist()  # noqa: E731
    assert index(take_frames(batch, 4, 2)) == [[0, 2, 4, 6], [8, 10, 12, 14]]      # short, low fps
    assert index(take_frames(batch, 3, 3)) == [[0, 3, 6], [8, 11, 14]]
    assert index(take_frames(batch, 0, 1)) == index(batch)                          # as prepared
    assert index(take_frames(batch, 0, 4)) == [[0, 4], [8, 12]]
    assert take_frames({"image": 1}, 4, 2) == {"image": 1}                          # no video: untouched
    with pytest.raises(ValueError, match="frame_stride"):
        rc.ldm("video", "webvid", {"text": 1.0}, frame_stride=0)


def test_merge_ldms_picks_the_video_ldm_image_unet_and_shared_codecs(tmp_path):
    import yaml

    from common.config import to_dict

    def stage(name, modality, specs, codecs="/codecs"):
        folder = tmp_path / name / "checkpoint_000000"
        torch.manual_seed(len(name))
        CoDi(CoDiConfig(**specs)).save_pretrained(folder)
        cfg = rc.with_task(rc.ldm(modality, "x", {"text": 1.0}), init="" if modality != "video" else "/img",
                           codi=None if modality == "video" else CoDiConfig(**specs))
        cfg = rc.with_task(cfg, codecs=dataclasses.replace(cfg.task.codecs, path=codecs))
        (tmp_path / name / "train_config.yaml").write_text(yaml.safe_dump(to_dict(cfg)))
        return str(folder)

    ckpts = {"video_ldm": stage("video_ldm", "video", {"image": rc.tiny_image_unet(video=True)}),
             "audio_ldm": stage("audio_ldm", "audio", {"audio": rc.tiny_audio_unet()}),
             "text_ldm": stage("text_ldm", "text", {"text": rc.tiny_text_unet()})}
    cfg = rc.merge_ldms(rc.alignment("text_image"), ckpts)
    assert cfg.task.init == "" and cfg.task.init_parts == {"image": ckpts["video_ldm"], "audio": ckpts["audio_ldm"],
                                                          "text": ckpts["text_ldm"]}
    assert cfg.task.codecs.path == "/codecs"
    stage("odd_ldm", "audio", {"audio": rc.tiny_audio_unet()}, codecs="/other")
    with pytest.raises(ValueError, match="other codecs"):
        rc.merge_ldms(rc.alignment("text_image"), {**ckpts, "odd": str(tmp_path / "odd_ldm" / "checkpoint_000000")})


def test_one_folder_may_give_several_unets(tmp_path):
    both = save(tmp_path, "both", 4, image=rc.tiny_image_unet(), audio=rc.tiny_audio_unet())
    text = save(tmp_path, "text", 5, text=rc.tiny_text_unet())
    merged = load_codi_parts({"image": both, "audio": both, "text": text}, "model.safetensors").state_dict()
    for folder in (both, text):
        own = CoDi.from_pretrained(folder).state_dict()
        assert all(torch.equal(merged[k], v) for k, v in own.items()), folder
