"""``TrainConfig.task``: typed stage kinds, ``build_task`` over the kind, the task-aware pre-start data
check, the debug codecs folder and codecs overlays."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import save_file

from common.config import from_dict, to_dict
from common.errors import ConfigError, UsageError
from training import recipes_codi as rc
from training.config import TrainConfig
from training.debug_codecs import ensure_debug_codecs
from training.launch import check_data_fits, resolve_debug_codecs
from training.schedules import SCHEDULES
from training.step import TextToImageTask
from training.task import build_task, load_codecs
from training.task_config import CodecsSource
from training.tasks.autoencoder import AutoencoderTask
from training.tasks.bridging import BridgingTask
from training.tasks.cascade import CascadeTask
from training.tasks.ldm import LDMTask


def test_text_to_image_stays_the_default_task():
    assert TrainConfig().task.kind == "text_to_image"
    assert isinstance(build_task(TrainConfig()), TextToImageTask)


def test_every_codi_debug_recipe_round_trips_through_its_yaml_dict():
    for stage in SCHEDULES["codi_debug"]().stages:
        cfg = stage.recipe()
        assert from_dict(TrainConfig, to_dict(cfg)) == cfg, stage.name


def test_demo_ldms_weight_by_min_snr_and_codi_default_does_not():
    """The demo's (and its debug twin's) image, audio and text LDMs train with min-SNR-5 (the video LDM
    inherits it from the image LDM it grows on); ``codi_schedule``'s default keeps CoDi's unweighted loss."""
    from training.schedules import DEMO_BUDGETS, codi_schedule, video_curriculum

    for name in ("codi_demo", "codi_debug"):
        ldms = {s.name: s.recipe() for s in SCHEDULES[name]().stages if s.kind == "ldm"}
        assert {n: c.task.codi.diffusion.min_snr_gamma for n, c in ldms.items() if c.task.codi} == {
            "image_ldm": 5.0, "audio_ldm": 5.0, "text_ldm": 5.0}, name
        assert ldms["video_ldm"].task.codi is None and ldms["video_ldm"].task.init, name
    plain = [s.recipe() for s in codi_schedule(DEMO_BUDGETS, "toy", video_curriculum(1, 2)).stages if s.kind == "ldm"]
    assert {c.task.codi.diffusion.min_snr_gamma for c in plain if c.task.codi} == {None}


def test_a_kind_without_its_objective_is_one_config_error():
    with pytest.raises(ConfigError, match="task.kind ldm needs task.ldm"):
        from_dict(TrainConfig, {"task": {"kind": "ldm"}})
    with pytest.raises(ConfigError, match="expected one of"):
        from_dict(TrainConfig, {"task": {"kind": "ClassFromString"}})
    with pytest.raises(ConfigError, match="task.kind cascade needs task.cascade_unet"):
        from_dict(TrainConfig, {"task": {"kind": "cascade", "cascade": {"kind": "base"}}})


@pytest.fixture(scope="module")
def codecs_dir(tmp_path_factory):
    return str(ensure_debug_codecs(tmp_path_factory.mktemp("codecs") / "debug_codecs"))


def with_codecs(cfg: TrainConfig, path: str, overlays=()) -> TrainConfig:
    return rc.with_task(cfg, codecs=CodecsSource(path=path, overlays=list(overlays)))


def test_build_task_picks_the_class_of_the_kind(codecs_dir):
    kinds = [(rc.autoencoder("image", "laion"), AutoencoderTask), (rc.bridging("audio", "audiocaps"), BridgingTask),
             (rc.ldm("image", "laion", {"text": 1.0}), LDMTask), (rc.cascade("tsr"), CascadeTask)]
    for cfg, cls in kinds:
        assert type(build_task(with_codecs(cfg, codecs_dir))) is cls, cfg.name


def write_manifest(path, tensors: dict, samples: int = 8) -> str:
    path.mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps({"style": "audiocaps", "samples": samples, "shards": [],
                                                    "tensors": tensors}))
    return str(path)


def test_pre_start_check_asks_each_codi_task_for_its_modalities(tmp_path, codecs_dir):
    mel_only = write_manifest(tmp_path / "mel", {"mel": {"shape": [32, 16], "count": 8}})
    cfg = with_codecs(rc.bridging("audio", "audiocaps"), codecs_dir)
    with pytest.raises(UsageError) as err:
        check_data_fits(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=mel_only)))
    assert str(err.value) == (f"{mel_only}: the prepared shards have no 'audio' tensor, which this stage needs "
                              "for audio (prepare with audio.keep_waveform: true)")
    one = write_manifest(tmp_path / "one", {"audio": {"shape": [5120], "count": 1}}, samples=1)
    with pytest.raises(UsageError, match="1 samples cannot fill one batch of 2"):
        check_data_fits(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=one)))


def test_pre_start_check_of_a_stage_on_two_shard_sets(tmp_path, codecs_dir):
    """The text LDM on laion + audiocaps: each condition must come from one of the sets; a stage kind that
    reads one shard set refuses a second."""
    laion = write_manifest(tmp_path / "laion", {"image": {"shape": [16, 16, 3], "count": 8}})
    audiocaps = write_manifest(tmp_path / "audiocaps", {"audio": {"shape": [5120], "count": 8}})
    laion2 = write_manifest(tmp_path / "laion2", {"image": {"shape": [16, 16, 3], "count": 8}})

    def on(cfg, first, second):
        return dataclasses.replace(with_codecs(cfg, codecs_dir), data=dataclasses.replace(
            cfg.data, path=first, images=second, image_fraction=cfg.data.image_fraction or 0.5))

    text = rc.ldm("text", "laion", {"text": 1.0, "image": 1.0, "audio": 1.0}, second_fraction=0.5)
    check_data_fits(on(text, laion, audiocaps))
    with pytest.raises(UsageError, match=f"{laion} and {laion2}: neither shard set has a 'audio' tensor"):
        check_data_fits(on(text, laion, laion2))
    with pytest.raises(UsageError, match="a cascade stage reads one shard set"):
        check_data_fits(on(rc.cascade("tsr"), laion, audiocaps))


def test_debug_codecs_are_written_once_under_the_storage_path(tmp_path):
    cfg = dataclasses.replace(rc.ldm("image", "laion", {"text": 1.0}), storage_path=str(tmp_path / "runs"))
    resolved = resolve_debug_codecs(cfg)
    folder = tmp_path / "runs" / "debug_codecs"
    assert resolved.task.codecs.path == str(folder)
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert resolve_debug_codecs(cfg).task.codecs.path == str(folder)
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp   # not rewritten
    assert load_codecs(resolved.task.codecs).condition("text", ["a red dog"]).shape == (1, 1, 768)
    text_cfg = resolve_debug_codecs(TrainConfig(storage_path=str(tmp_path / "t2i")))
    assert text_cfg.task.codecs.path == "debug" and not (tmp_path / "t2i").exists()


def test_codecs_overlays_replace_exactly_their_tensors_and_refuse_foreign_ones(tmp_path, codecs_dir):
    base = load_codecs(CodecsSource(path=codecs_dir)).state_dict()
    key = next(k for k in base if k.startswith("image.vae.") and k.endswith("weight"))
    save_file({key: torch.full_like(base[key], 0.25)}, str(tmp_path / "piece.safetensors"))
    laid = load_codecs(CodecsSource(path=codecs_dir, overlays=[str(tmp_path / "piece.safetensors")])).state_dict()
    assert torch.equal(laid[key], torch.full_like(base[key], 0.25))
    assert all(torch.equal(laid[k], base[k]) for k in base if k != key and not k.startswith("text.decoder.gpt2.lm_head"))
    save_file({"image.vae.nope": torch.zeros(1)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(UsageError, match="1 tensor\\(s\\) do not fit the codecs"):
        load_codecs(CodecsSource(path=codecs_dir, overlays=[str(tmp_path / "foreign.safetensors")]))


def test_toy_codecs_know_every_caption_word_and_hold_128_mel_frames(tmp_path):
    from pipelines.toyworld_spec import Clip, Scene, Sound

    cfg = dataclasses.replace(rc.ldm("image", "laion", {"text": 1.0}, codecs="toy"), storage_path=str(tmp_path))
    resolved = resolve_debug_codecs(cfg)
    assert resolved.task.codecs.path == str(tmp_path / "toy_codecs")
    codecs = load_codecs(resolved.task.codecs)
    assert codecs.cfg.audio.frames == 128          # 1.28 s: two pulses of the slowest rhythm (2/s)
    assert codecs.cfg.clip.temporal and codecs.clip.temporal is not None   # CoDi's video prompt encoder
    toks = codecs.tokenizers()
    for caption in (Scene("yellow", "triangle", "center").caption, Clip("blue", "square", "down", "quickly").caption,
                    Sound("shrill", "rattling").caption):
        words = caption.replace(",", "").split()
        assert toks["bert"].tokenize(caption.replace(",", "")) == words, caption      # one token per word, no [UNK]
        pieces = toks["gpt2"].tokenize(" " + caption.replace(",", ""))
        assert [p.lstrip("\u0120") for p in pieces] == words, caption
        clip = toks["clip"].tokenize(caption)                     # CLIP: one token per word (and the comma)
        assert [p.removesuffix("</w>") for p in clip] == caption.replace(",", " ,").split(), caption
        ids = codecs.clip.tokenize([caption])[0].tolist()
        assert len(ids) == codecs.cfg.clip.max_position_embeddings and max(ids) < codecs.cfg.clip.vocab_size
    assert [p.removesuffix("</w>") for p in toks["clip"].tokenize("a zebra")] == ["a", "z", "e", "b", "r", "a"]
