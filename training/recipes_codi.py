"""CoDi stage recipes (torchtitan style: each stage's config is a function) and the ``upstream``
functions that point a stage at what its needs exported.

Every recipe takes a ``Budget`` (steps, batch, workers, LR) and a codecs variant; the UNets are tiny
(toy worlds on a laptop). ``DEBUG`` — two workers, two optimizer steps — is what ``codi_debug``
(training/schedules.py) runs in the tests; ``codi_demo`` gives the same DAG the demo's budgets.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping, Optional

import yaml

from common import storage
from common.config import from_dict
from common.resources import WorkerResources
from common.storage import S3Config
from models.codi import CoDiConfig
from models.codi.config import UNetSpec
from models.diffusion.config import DiffusionConfig
from training.config import EMAConfig, OptimConfig, Precision, ScalingConfig, TrainConfig
from training.task_config import DEBUG_CODECS, CodecsSource, TaskConfig
from training.tasks.autoencoder import AutoencoderObjective
from training.tasks.bridging import BridgingObjective
from training.tasks.cascade import CascadeObjective
from training.tasks.distillation import DistillationObjective
from training.tasks.latent_alignment import PHASES, LatentAlignmentObjective
from training.tasks.ldm import ConditionConfig, LDMObjective

CONTEXT = 768              # the codecs' condition width (CLIP / CLAP projection)
WEIGHTS = "model.safetensors"
UPSTREAM = "<set by upstream>"   # init placeholder: the stage's ``upstream`` points it at its needs' exports
SET_BY_SCHEDULE = "<set by the schedule>"   # data.images placeholder: the URI of the stage's ``images`` style


# -- tiny UNets --------------------------------------------------------------------------------------

def tiny_image_unet(video: bool = False, connectors: bool = True) -> UNetSpec:
    return UNetSpec(in_channels=4, out_channels=4, model_channels=64, channel_mult=[1, 2], num_res_blocks=[1, 1],
                    attention_levels=[True, False], num_heads=4, context_dim=CONTEXT, video=video, video_heads=2,
                    connectors=connectors, connector_mult=[1, 2], connector_blocks=[1, 1],
                    connector_levels=[True, True], connector_dim=64)


def tiny_audio_unet() -> UNetSpec:
    """The audio UNet on the debug mel-VAE's 8-channel latent (no attention at the full-size level: the
    audio latent has 2-4x the positions of the image one; 64 channels at both levels: a step costs 25 %
    less than with 128 at the second, and in 1500 steps it learns pitch as well, see DEMO_BUDGETS)."""
    return UNetSpec(in_channels=8, out_channels=8, model_channels=64, channel_mult=[1, 1], num_res_blocks=[1, 1],
                    attention_levels=[False, True], num_heads=4, context_dim=CONTEXT, connectors=True,
                    connector_mult=[1, 1], connector_blocks=[1, 1], connector_levels=[True, True], connector_dim=64,
                    scale_factor=0.9228)


def tiny_text_unet(latent: int = 16) -> UNetSpec:
    """The text UNet on the debug Optimus' 16-d latent."""
    return UNetSpec(kind="text", in_channels=latent, out_channels=latent, model_channels=32, channel_mult=[1, 2],
                    num_res_blocks=[1, 1], attention_levels=[True, True], num_heads=4, context_dim=CONTEXT,
                    second_dim=[4, 4], connector_mult=[1, 2], connector_blocks=[1, 1], connector_second_dim=[4, 4],
                    connector_levels=[True, True], connector_dim=64, scale_factor=4.3108)


@dataclass(frozen=True)
class Budget:
    """How long and how wide a stage trains: optimizer steps, batch per worker, workers × CPUs, LR."""

    steps: int = 2
    batch: int = 2
    workers: int = 1
    cpus: float = 1.5
    lr: float = 1e-3
    warmup: int = 0
    checkpoint_every: int = 0          # 0: at the end only
    log_every: int = 1
    precision: Precision = "fp32"      # TrainConfig.precision
    expected_s: Optional[float] = None  # the stage's duration measured on an earlier run (Stage.expected_s)


# two steps of batch 2 on each of two data-parallel workers of 0.75 CPUs: a stage still reserves 1.5 logical
# CPUs, so two stages run side by side on a 4-CPU Ray and leave a CPU for Ray Data's reads
DEBUG = Budget(workers=2, cpus=0.75)


def stage(name: str, task: TaskConfig, data: str, budget: Budget = DEBUG, codecs: str = DEBUG_CODECS) -> TrainConfig:
    """A stage config: the task (its shard set named ``data`` in errors) on the ``codecs`` variant, EMA on,
    constant LR after ``budget.warmup``."""
    task = dataclasses.replace(task, **{f: dataclasses.replace(getattr(task, f), shard_set=data)
                                        for f in ("autoencoder", "bridging", "ldm", "cascade", "distillation")
                                        if getattr(task, f) is not None})
    task = dataclasses.replace(task, codecs=dataclasses.replace(task.codecs, path=codecs))
    b = budget
    return TrainConfig(name=name, task=task, seed=0, zero_stage=0, precision=b.precision,
                       batch_size_per_worker=b.batch, max_steps=b.steps,
                       log_every=b.log_every, checkpoint_every=b.checkpoint_every or b.steps,
                       optim=OptimConfig(lr=b.lr, warmup_steps=b.warmup), ema=EMAConfig(decay=0.999),
                       scaling=ScalingConfig(b.workers, WorkerResources(cpus=b.cpus)))


# -- recipes: each takes its Budget and codecs variant (``codi_schedule`` binds them) ----------------

def with_second_set(cfg: TrainConfig, fraction: float) -> TrainConfig:
    """``cfg`` taking ``fraction`` of its batches from the stage's second shard set (``data.images``, set by
    the schedule from the stage's ``images`` style)."""
    if fraction <= 0:
        return cfg
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, images=SET_BY_SCHEDULE, image_fraction=fraction))


def autoencoder(piece: str, data: str, budget: Budget = DEBUG, codecs: str = DEBUG_CODECS,
                second_fraction: float = 0.0) -> TrainConfig:
    """One codecs piece (image / audio VAE, vocoder, Optimus text VAE) on its own; ``second_fraction`` of its
    batches from a second shard set (the text VAE: audio captions beside image captions)."""
    return with_second_set(stage(f"{piece}_autoencoder", TaskConfig(kind="autoencoder",
                                                                   autoencoder=AutoencoderObjective(piece)),
                                 data, budget, codecs), second_fraction)


def bridging(modality: str, data: str, budget: Budget = DEBUG, codecs: str = DEBUG_CODECS) -> TrainConfig:
    return stage(f"{modality}_bridging", TaskConfig(kind="bridging_alignment", bridging=BridgingObjective(modality)),
                 data, budget, codecs)


def clip_pretraining(data: str, budget: Budget = DEBUG, codecs: str = DEBUG_CODECS, modality: str = "image",
                     image_fraction: float = 0.0) -> TrainConfig:
    """CLIP's own contrastive pretraining, both towers (the toy codecs' CLIP has no pretrained weights;
    CoDi starts from OpenAI's): on image–text pairs (``image``), or on the video–text pairs of ``data``
    with ``image_fraction`` of the batches image–text pairs from the stage's ``images`` shard set
    (``image+video``: the text tower learns the words only motion shows)."""
    return with_second_set(stage("clip_pretraining", TaskConfig(kind="bridging_alignment",
                                                                bridging=BridgingObjective(modality)),
                                 data, budget, codecs), image_fraction)


def ldm(modality: str, data: str, conditions: Mapping[str, float], budget: Budget = DEBUG,
        codecs: str = DEBUG_CODECS, frames: int = 0, frame_stride: int = 1, image_fraction: float = 0.25,
        video_train: str = "video_layers+cross_attention", second_fraction: float = 0.0,
        min_snr_gamma: Optional[float] = None) -> TrainConfig:
    """One modality's LDM on a CoDi holding only its UNet; video starts from the image LDM (``from_ldm``) and
    trains ``video_train`` of it (``LDMObjective.train``). ``second_fraction`` of the batches come from a
    second shard set, paired with the conditions that set carries (the text LDM: image captions with text
    or image conditions, audio captions with text or audio); the video LDM's is ``image_fraction``.
    ``min_snr_gamma``: weight the ε-loss by min(SNR, γ)/SNR (Hang et al. 2023; CoDi: none). It is part of
    the CoDi config's diffusion block, so the video LDM and the latent alignment inherit it from their
    upstream LDMs (which must agree on it to merge)."""
    specs = {"image": {"image": tiny_image_unet(video=True)}, "audio": {"audio": tiny_audio_unet()},
             "text": {"text": tiny_text_unet()}, "video": None}[modality]
    # the video LDM grows video layers on the image LDM's UNet (one UNet for both) and trains those (and the
    # text cross-attention, with images among its batches)
    objective = LDMObjective(modality, ConditionConfig(dict(conditions), drop_prob=0.1), frames=frames,
                             frame_stride=frame_stride, train=video_train if modality == "video" else "all")
    diffusion = DiffusionConfig(data_space="latent", min_snr_gamma=min_snr_gamma)
    task = TaskConfig(kind="ldm", ldm=objective, codi=CoDiConfig(**specs, diffusion=diffusion) if specs else None,
                      init="" if specs else UPSTREAM)
    cfg = stage(f"{modality}_ldm", task, data, budget, codecs)
    # joint image-video training: this fraction of the video LDM's batches are images as 1-frame videos
    # (CoDi's appendix), from the stage's ``images`` shard set
    return with_second_set(cfg, image_fraction if modality == "video" else second_fraction)


def alignment(phase: str, budget: Budget = DEBUG, codecs: str = DEBUG_CODECS,
              train: Optional[tuple[str, ...]] = None) -> TrainConfig:
    """One latent-alignment phase of ``PHASES``; ``train`` overrides which of its modalities' V + connectors
    learn (CoDi's phase 3 trains only video's: see ``codi_schedule``'s ``video_audio_train``)."""
    p = PHASES[phase] if train is None else dataclasses.replace(PHASES[phase], train=tuple(train))
    task = TaskConfig(kind="latent_alignment", init=UPSTREAM, latent_alignment=LatentAlignmentObjective(p))
    return stage(f"{phase}_alignment", task, p.shard_set, budget, codecs)


def micro_video_unet() -> UNetSpec:
    """The cascade's pixel-space video UNet: no spatial attention (32 px x 8 frames in pixels is 8k tokens)."""
    return UNetSpec(in_channels=3, out_channels=3, model_channels=32, channel_mult=[1, 2], num_res_blocks=[1, 1],
                    attention_levels=[False, False], num_heads=4, context_dim=CONTEXT, video=True, video_heads=2,
                    connectors=False)


def cascade(kind: str, budget: Budget = DEBUG, codecs: str = DEBUG_CODECS) -> TrainConfig:
    task = TaskConfig(kind="cascade", cascade=CascadeObjective(kind=kind, factor=2), cascade_unet=micro_video_unet())
    return stage(f"cascade_{kind}", task, "webvid", budget, codecs)


def base_distillation(budget: Budget = DEBUG, codecs: str = DEBUG_CODECS, student_steps: int = 4) -> TrainConfig:
    """Progressive distillation of the cascade's base (Imagen Video §2.7): an N-step student of the base export
    (``from_cascade_base``), exported as a cascade base with ``sampling_steps`` N for the next halving."""
    objective = DistillationObjective("video", student_steps=student_steps, teacher="cascade")
    return stage("base_distillation", TaskConfig(kind="distillation", init=UPSTREAM, distillation=objective),
                 "webvid", budget, codecs)


# -- upstream: a stage's needs' exports -> its config ------------------------------------------------

def stage_config(checkpoint: str, s3: Optional[S3Config] = None) -> TrainConfig:
    """The config a finished stage ran with (``train_config.yaml`` beside its checkpoints, local or ``s3://``)."""
    path = storage.join(storage.parent(checkpoint), "train_config.yaml")
    return from_dict(TrainConfig, yaml.safe_load(storage.read_bytes(path, s3)), source=path)


def with_task(cfg: TrainConfig, **changes) -> TrainConfig:
    return dataclasses.replace(cfg, task=dataclasses.replace(cfg.task, **changes))


def codecs_from(cfg: TrainConfig, checkpoints: Mapping[str, str]) -> TrainConfig:
    """Lay the needs' codecs exports over the stage's codecs: each autoencoder and bridging stage exports
    only its own piece (``image.vae.*``, ``clip.model.*``, ``clip.temporal.*``, ``clap.*``, ...), so the
    order does not matter; it is the needs' order."""
    kinds = {name: stage_config(ckpt, cfg.data.s3).task.kind for name, ckpt in checkpoints.items()}
    overlays = [storage.join(checkpoints[n], WEIGHTS) for n in checkpoints
                if kinds[n] in ("bridging_alignment", "autoencoder")]
    return with_task(cfg, codecs=dataclasses.replace(cfg.task.codecs, overlays=overlays))


def from_ldm(cfg: TrainConfig, checkpoints: Mapping[str, str]) -> TrainConfig:
    """Start from (align / distil) the one ldm-kind need's export, with the codecs that stage trained on."""
    s3 = cfg.data.s3
    ldm = [n for n, ckpt in checkpoints.items() if stage_config(ckpt, s3).task.kind in ("ldm", "latent_alignment")]
    if len(ldm) != 1:
        raise ValueError(f"needs exactly one ldm or latent_alignment stage, got {sorted(ldm)}")
    upstream = stage_config(checkpoints[ldm[0]], s3)
    return with_task(cfg, init=checkpoints[ldm[0]], init_weights=WEIGHTS,
                     codecs=CodecsSource(path=upstream.task.codecs.path, overlays=list(upstream.task.codecs.overlays),
                                         seed=upstream.task.codecs.seed))


def from_cascade_base(cfg: TrainConfig, checkpoints: Mapping[str, str]) -> TrainConfig:
    """Distil the one cascade-base need's export (its teacher and the student's start; a ``base_distillation``
    need's student for a further halving), with the codecs that stage trained on."""
    s3 = cfg.data.s3

    def is_base(ckpt: str) -> bool:
        task = stage_config(ckpt, s3).task
        return ((task.kind == "cascade" and task.cascade.kind == "base")
                or (task.kind == "distillation" and task.distillation.teacher == "cascade"))

    base = [n for n, ckpt in checkpoints.items() if is_base(ckpt)]
    if len(base) != 1:
        raise ValueError(f"needs exactly one cascade base (or base distillation) stage, got {sorted(base)}")
    upstream = stage_config(checkpoints[base[0]], s3)
    return with_task(cfg, init=checkpoints[base[0]], init_weights=WEIGHTS,
                     codecs=dataclasses.replace(upstream.task.codecs, overlays=list(upstream.task.codecs.overlays)))


def merge_ldms(cfg: TrainConfig, checkpoints: Mapping[str, str]) -> TrainConfig:
    """Start latent alignment from the per-modality LDMs trained apart (CoDi §3.3 → §3.4): each UNet from
    the need whose export holds it (a video LDM's image UNet wins over the image LDM it grew from), with
    the codecs they trained on (which must be the same)."""
    from training.task import codi_config

    parts: dict[str, str] = {}
    codecs = None
    for name, ckpt in checkpoints.items():
        upstream = stage_config(ckpt, cfg.data.s3)
        if upstream.task.kind != "ldm":
            continue
        held = codi_config(ckpt, cfg.data.s3).specs()
        video = upstream.task.ldm.modality == "video"
        for unet in held:
            if video or unet not in parts:
                parts[unet] = ckpt
        if codecs is not None and upstream.task.codecs != codecs:
            raise ValueError(f"{name}: trained on other codecs than its fellow LDM stages")
        codecs = upstream.task.codecs
    if codecs is None:
        raise ValueError(f"needs ldm stages to merge, got {sorted(checkpoints)}")
    return with_task(cfg, init="", init_parts=parts, init_weights=WEIGHTS, codecs=codecs)
