"""Per-modality latent diffusion (CoDi §3.3): ε-prediction on ``Codecs.encode`` latents through ``CoDi``.

    L = E_{z, ε, t} ‖ε − ε_θ(z_t, t, C(y))‖²          (CoDi Eq. 1; target per the stage's DiffusionConfig)

with C(y) the frozen, aligned prompt encoder of ONE condition modality drawn per example among the
modalities the example is paired with (multi-condition training), replaced by that modality's null
embedding (``Codecs.null``) with probability ``cond_drop_prob`` (classifier-free guidance).

Task shape: trainable = ``CoDi``; frozen = ``Codecs``; ``batch_inputs`` encodes the target modality,
embeds every condition, draws the condition modality, the dropout, t and ε; ``loss`` is one CoDi
call and the core's ``diffusion_loss``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional

import torch
from torch import Tensor, nn

from models.codecs import Codecs
from models.codi import CoDi, CoDiConfig
from models.diffusion.config import build_schedule, conditioning_time
from models.diffusion.losses import diffusion_loss
from training.objectives import compose_condition, condition_keep_mask, diffusion_draw, sample_condition
from training.tasks.base import frozen, save_codi_folder, weighted_mean
from training.tasks.batches import batch_size, column_for, images_as_videos, modality_data, presence, take_frames

GENERATED = ("image", "video", "audio", "text")
CONDITIONS = ("text", "image", "video", "audio")


@dataclass
class ConditionConfig:
    """Condition modality → sampling weight (drawn per example among the ones it is paired with), and the
    classifier-free dropout rate (CoDi trains with 10 %, as Stable Diffusion)."""

    weights: dict[str, float] = field(default_factory=lambda: {"text": 1.0})
    drop_prob: float = 0.1

    def __post_init__(self):
        unknown = sorted(set(self.weights) - set(CONDITIONS))
        if unknown or not self.weights:
            raise ValueError(f"condition weights must name some of {', '.join(CONDITIONS)}, got {sorted(self.weights)}")
        if any(w < 0 for w in self.weights.values()) or not any(w > 0 for w in self.weights.values()):
            raise ValueError("condition weights must be >= 0 with at least one > 0")
        if not 0.0 <= self.drop_prob <= 1.0:
            raise ValueError("drop_prob must lie in [0, 1]")


TRAINABLE = ("all", "video_layers", "video_layers+cross_attention")


@dataclass
class LDMObjective:
    """One modality's LDM stage: ``modality`` is generated, conditioned as ``condition`` says."""

    modality: str = "image"
    condition: ConditionConfig = field(default_factory=ConditionConfig)
    shard_set: str = "data"          # named in errors about missing tensors
    # video curriculum (CoDi's appendix): clips resampled on the fly, every ``frame_stride``-th frame,
    # at most ``frames`` of them (0: as prepared) — e.g. short low-fps clips first, then longer ones
    frames: int = 0
    frame_stride: int = 1
    # what trains (TRAINABLE): every UNet weight ("all"); only the video layers ("video_layers": temporal
    # attention, frame-shift blocks; the spatial layers stay as the image LDM left them, as in Video LDM,
    # Blattmann et al. 2023); or those plus the text cross-attention ("video_layers+cross_attention", every
    # ``attn2``: the image LDM never read a motion word, and the frozen cross-attention passes "moving left"
    # on to the video layers only by chance). The image and video UNet are one: the demo's video stage
    # trained on every weight took text->image colour from 91 % to 9 %; cross-attention trained with a
    # quarter of the batches images (data.image_fraction) keeps it.
    train: str = "all"

    def __post_init__(self):
        if self.modality not in GENERATED:
            raise ValueError(f"modality must be one of {', '.join(GENERATED)}, got {self.modality!r}")
        if self.frames < 0 or self.frame_stride < 1:
            raise ValueError("frames must be >= 0 and frame_stride >= 1")
        if self.train not in TRAINABLE:
            raise ValueError(f"train must be one of {', '.join(TRAINABLE)}, got {self.train!r}")
        if self.train != "all" and self.modality != "video":
            raise ValueError(f"train: {self.train} is for the video LDM (modality: video)")


@torch.no_grad()
def condition_inputs(codecs: Codecs, batch: Mapping, cfg: ConditionConfig, shard_set: str,
                     generator: torch.Generator, device: torch.device, optional: bool = False) -> dict[str, Tensor]:
    """``context`` (b, 1, 768) plus what was drawn: ``cond_choice`` (index into ``cfg.weights``) and ``cond_keep``.

    With ``optional``, a condition whose column the batch lacks is paired with none of its examples (a
    stage on two shard sets: the text LDM's laion batches have no audio, its audiocaps batches no
    image); without, that is the shard set's error, as for any missing tensor."""
    names, weights = list(cfg.weights), list(cfg.weights.values())
    b = batch_size(batch)
    carried = [not optional or column_for(c) in batch for c in names]
    available = torch.stack([presence(batch, c, shard_set) if here else torch.zeros(b, dtype=torch.bool)
                             for c, here in zip(names, carried)], dim=1)
    choice = sample_condition(available, weights, generator)
    keep = condition_keep_mask(b, cfg.drop_prob, generator)
    nulls = torch.stack([codecs.null(c, 1).float().expand(b, -1, -1) for c in names])
    embeds = torch.stack([codecs.condition(c, modality_data(batch, c, shard_set)).float() if here else nulls[i]
                          for i, (c, here) in enumerate(zip(names, carried))])
    context = compose_condition(embeds.to(device), choice.to(device), keep.to(device), nulls.to(device))
    return {"context": context, "cond_choice": choice.to(device), "cond_keep": keep.to(device)}


@torch.no_grad()
def encode_target(codecs: Codecs, batch: Mapping, modality: str, shard_set: str,
                  device: torch.device) -> tuple[Tensor, Tensor]:
    """(x0, weight): the scaled latent of the batch's ``modality`` and 1/0 per example where it is present/absent."""
    x0 = codecs.encode(modality, modality_data(batch, modality, shard_set)).float().to(device)
    return x0, presence(batch, modality, shard_set).float().to(device)


def video_layer_names(model: nn.Module) -> set[str]:
    """Names of the parameters of the UNets' video layers (CoDi's temporal attention, its relative position
    bias, temporal feed-forward and frame-shift blocks: ``models/codi/video.py``), spatial layers excluded."""
    from models.codi.video import ContinuousPositionBias, ResBlockFrameShift, TemporalAttention, TemporalFeedForward

    video = (TemporalAttention, ContinuousPositionBias, TemporalFeedForward, ResBlockFrameShift)
    prefixes = tuple(f"{name}." for name, module in model.named_modules() if isinstance(module, video))
    return {name for name, _ in model.named_parameters() if name.startswith(prefixes)}


def cross_attention_names(model: nn.Module) -> set[str]:
    """Names of the parameters of the UNets' text cross-attention (the ``attn2`` of every transformer block of
    the UNet proper; the cross-modal connectors' are latent alignment's)."""
    return {name for name, _ in model.named_parameters() if ".attn2." in name and "connecters" not in name}


class LDMTask:
    """The ``ldm`` stage kind: one generated modality on its UNet of a ``CoDi``."""

    def __init__(self, objective: LDMObjective, codi: CoDiConfig, codecs: Callable[[], Codecs],
                 init: Optional[Callable[[], CoDi]] = None, second_set: bool = False):
        """``codi`` sizes the model; ``init`` (optional) builds it instead, e.g. ``CoDi.from_pretrained`` of an
        upstream stage; ``second_set``: some batches come from the stage's second shard set (``data.images``),
        and each batch's examples are paired with the conditions its own set carries."""
        self.objective, self.codi_config, self.make_codecs, self.init = objective, codi, codecs, init
        self.second_set = second_set
        self.diffusion = codi.diffusion
        self.schedule = build_schedule(codi.diffusion)

    @property
    def required(self) -> list[str]:
        """Modalities the stage's shard set must carry (for ``batches.check_manifest`` before the stage starts)."""
        return sorted({self.objective.modality, *self.objective.condition.weights})

    def shard_set_needs(self) -> tuple[list[str], list[str], list[str]]:
        """With a second shard set: what the first must carry, what the second must (its images are the
        video LDM's 1-frame videos), and what at least one of them must (each condition)."""
        m = self.objective.modality
        return [m], ["image" if m == "video" else m], sorted(self.objective.condition.weights)

    def build_trainable(self) -> nn.Module:
        model = self.init() if self.init is not None else CoDi(self.codi_config)
        train = self.objective.train
        if train != "all":
            names = video_layer_names(model)
            if not names:
                raise ValueError(f"train: {train}, but the model's UNets have no video layers (spec.video)")
            if train == "video_layers+cross_attention":
                names |= cross_attention_names(model)
            for name, param in model.named_parameters():
                param.requires_grad_(name in names)
        return model

    def build_frozen(self) -> Optional[nn.Module]:
        return frozen(self.make_codecs())

    def batch_inputs(self, batch: Mapping, codecs: Codecs, generator: torch.Generator,
                     device: torch.device) -> dict[str, Tensor]:
        o = self.objective
        batch = take_frames(images_as_videos(batch) if o.modality == "video" else batch, o.frames, o.frame_stride)
        x0, weight = encode_target(codecs, batch, o.modality, o.shard_set, device)
        inputs = condition_inputs(codecs, batch, o.condition, o.shard_set, generator, device, optional=self.second_set)
        return {**inputs, **diffusion_draw(x0, self.diffusion, self.schedule, generator), "weight": weight}

    def per_sample_loss(self, denoiser, inputs: Mapping[str, Tensor], dtype: torch.dtype) -> Tensor:
        m = self.objective.modality
        t = conditioning_time(self.diffusion, inputs["t"])
        out = denoiser({m: inputs["z_t"].to(dtype)}, t, inputs["context"].to(dtype))[m]
        return diffusion_loss(out, inputs["x0"], inputs["eps"], inputs["alpha"], inputs["sigma"],
                              self.diffusion.prediction, self.diffusion.min_snr_gamma)

    def loss(self, denoiser, inputs: Mapping[str, Tensor], dtype: torch.dtype = torch.float32) -> Tensor:
        return weighted_mean(self.per_sample_loss(denoiser, inputs, dtype), inputs.get("weight"))

    def export_state(self, trainable: dict[str, Tensor], frozen_part=None) -> dict[str, Tensor]:
        return dict(trainable)

    def save_pretrained(self, directory: Path, state: dict[str, Tensor], weights_name: str) -> None:
        save_codi_folder(directory, state, self.codi_config, weights_name)
