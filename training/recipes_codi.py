"""CoDi stage recipes (torchtitan style: each stage's config is a function) and the ``upstream``
functions that point a stage at what its needs exported.

Only ``_debug`` sizes exist today: tiny UNets over the debug codecs (training/debug_codecs.py), one
worker, two optimizer steps — what ``codi_debug`` (training/schedules.py) runs end to end on a laptop.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Mapping

import yaml

from common.config import from_dict
from common.resources import WorkerResources
from models.codi import CoDiConfig
from models.codi.config import UNetSpec
from training.config import EMAConfig, OptimConfig, ScalingConfig, TrainConfig
from training.task_config import CodecsSource, TaskConfig
from training.tasks.autoencoder import AutoencoderObjective
from training.tasks.bridging import BridgingObjective
from training.tasks.cascade import CascadeObjective
from training.tasks.distillation import DistillationObjective
from training.tasks.latent_alignment import PHASES, LatentAlignmentObjective
from training.tasks.ldm import ConditionConfig, LDMObjective

CONTEXT = 768              # the codecs' condition width (CLIP / CLAP projection)
WEIGHTS = "model.safetensors"


# -- tiny UNets --------------------------------------------------------------------------------------

def tiny_image_unet(video: bool = False, connectors: bool = True) -> UNetSpec:
    return UNetSpec(in_channels=4, out_channels=4, model_channels=64, channel_mult=[1, 2], num_res_blocks=[1, 1],
                    attention_levels=[True, False], num_heads=4, context_dim=CONTEXT, video=video, video_heads=2,
                    connectors=connectors, connector_mult=[1, 2], connector_blocks=[1, 1],
                    connector_levels=[True, True], connector_dim=64)


def tiny_text_unet(latent: int = 16) -> UNetSpec:
    """The text UNet on the debug Optimus' 16-d latent."""
    return UNetSpec(kind="text", in_channels=latent, out_channels=latent, model_channels=32, channel_mult=[1, 2],
                    num_res_blocks=[1, 1], attention_levels=[True, True], num_heads=4, context_dim=CONTEXT,
                    second_dim=[4, 4], connector_mult=[1, 2], connector_blocks=[1, 1], connector_second_dim=[4, 4],
                    connector_levels=[True, True], connector_dim=64, scale_factor=4.3108)


def debug_stage(name: str, task: TaskConfig, data: str) -> TrainConfig:
    """Two steps of batch 2 on one worker of 1.5 CPUs (two stages side by side on a 4-CPU Ray leave a
    CPU for Ray Data's reads), EMA on, constant LR."""
    task = dataclasses.replace(task, **{f: dataclasses.replace(getattr(task, f), shard_set=data)
                                        for f in ("autoencoder", "bridging", "ldm", "cascade", "distillation")
                                        if getattr(task, f) is not None})
    return TrainConfig(name=name, task=task, seed=0, zero_stage=0, batch_size_per_worker=2, max_steps=2,
                       log_every=1, checkpoint_every=2, optim=OptimConfig(lr=1e-3, warmup_steps=0),
                       ema=EMAConfig(decay=0.999), scaling=ScalingConfig(1, WorkerResources(cpus=1.5)))


# -- recipes -----------------------------------------------------------------------------------------

def image_autoencoder_debug() -> TrainConfig:
    return debug_stage("image_autoencoder", TaskConfig(kind="autoencoder", autoencoder=AutoencoderObjective("image")),
                       "laion")


def audio_autoencoder_debug() -> TrainConfig:
    return debug_stage("audio_autoencoder", TaskConfig(kind="autoencoder", autoencoder=AutoencoderObjective("audio")),
                       "audiocaps")


def audio_bridging_debug() -> TrainConfig:
    return debug_stage("audio_bridging", TaskConfig(kind="bridging_alignment", bridging=BridgingObjective("audio")),
                       "audiocaps")


def image_ldm_debug() -> TrainConfig:
    """Text-to-image LDM on a CoDi holding the image AND text UNets (the text UNet waits for latent alignment)."""
    task = TaskConfig(kind="ldm", ldm=LDMObjective("image", ConditionConfig({"text": 1.0}, drop_prob=0.1)),
                      codi=CoDiConfig(image=tiny_image_unet(), text=tiny_text_unet()))
    return debug_stage("image_ldm", task, "laion")


def text_image_alignment_debug() -> TrainConfig:
    task = TaskConfig(kind="latent_alignment", init="<set by upstream>",
                      latent_alignment=LatentAlignmentObjective(PHASES["text_image"]))
    return debug_stage("text_image_alignment", task, "laion")


def cascade_debug(kind: str) -> TrainConfig:
    task = TaskConfig(kind="cascade", cascade=CascadeObjective(kind=kind, factor=2),
                      cascade_unet=tiny_image_unet(video=True, connectors=False))
    return debug_stage(f"cascade_{kind}", task, "webvid")


def cascade_base_debug() -> TrainConfig:
    return cascade_debug("base")


def cascade_ssr_debug() -> TrainConfig:
    return cascade_debug("ssr")


def cascade_tsr_debug() -> TrainConfig:
    return cascade_debug("tsr")


def image_distillation_debug() -> TrainConfig:
    task = TaskConfig(kind="distillation", init="<set by upstream>",
                      distillation=DistillationObjective("image", student_steps=4))
    return debug_stage("image_distillation", task, "laion")


# -- upstream: a stage's needs' exports -> its config ------------------------------------------------

def stage_config(checkpoint: str) -> TrainConfig:
    """The config a finished stage ran with (``train_config.yaml`` beside its checkpoints)."""
    path = Path(checkpoint).parent / "train_config.yaml"
    return from_dict(TrainConfig, yaml.safe_load(path.read_text()), source=str(path))


def with_task(cfg: TrainConfig, **changes) -> TrainConfig:
    return dataclasses.replace(cfg, task=dataclasses.replace(cfg.task, **changes))


def codecs_from(cfg: TrainConfig, checkpoints: Mapping[str, str]) -> TrainConfig:
    """Lay the needs' codecs exports over the stage's codecs: bridging first (its export is the whole
    codecs with the aligned CLAP), then the autoencoder pieces (only their own tensors)."""
    kinds = {name: stage_config(ckpt).task.kind for name, ckpt in checkpoints.items()}
    order = sorted(checkpoints, key=lambda n: 0 if kinds[n] == "bridging_alignment" else 1)
    overlays = [str(Path(checkpoints[n]) / WEIGHTS) for n in order
                if kinds[n] in ("bridging_alignment", "autoencoder")]
    return with_task(cfg, codecs=dataclasses.replace(cfg.task.codecs, overlays=overlays))


def from_ldm(cfg: TrainConfig, checkpoints: Mapping[str, str]) -> TrainConfig:
    """Start from (align / distil) the one ldm-kind need's export, with the codecs that stage trained on."""
    ldm = [n for n, ckpt in checkpoints.items() if stage_config(ckpt).task.kind in ("ldm", "latent_alignment")]
    if len(ldm) != 1:
        raise ValueError(f"needs exactly one ldm or latent_alignment stage, got {sorted(ldm)}")
    upstream = stage_config(checkpoints[ldm[0]])
    return with_task(cfg, init=checkpoints[ldm[0]], init_weights=WEIGHTS,
                     codecs=CodecsSource(path=upstream.task.codecs.path, overlays=list(upstream.task.codecs.overlays),
                                         seed=upstream.task.codecs.seed))
