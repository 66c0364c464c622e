"""Cascade stages (Imagen Video §2.5): base, spatial (SSR) and temporal (TSR) super-resolution, v-prediction.

    SSR:  c = up_bilinear(α' · down(x) + σ' ε')        (low-res video, noise-augmented, resized to x's size)
    TSR:  c = repeat_k(α' · x[:, :, ::k] + σ' ε')       (low-frame-rate video, frames repeated or blank-filled)
    both: x̂_θ(concat_channels(z_t, c), t, λ', C(y)),  L = ‖v − v̂‖²,  v = α_t ε − σ_t x  (Imagen Video §2.4)

λ' ~ the cosine schedule at t' ~ U(0, max_t) in training (the core's ``training_noise_augmentation``)
and is an input of the network: ``CascadeDenoiser`` adds an embedding of it to the timestep embedding.
Data: pixel video in [−1, 1] from the shards' ``frames``; the low-res / low-fps input is made from the
same clip (antialiased bilinear resize, frame skipping: the paper's data processing), so every
stage of the cascade trains on the same shards at its own resolution, in parallel.

Task shape: trainable = ``CascadeDenoiser`` (a CoDi 2-D UNet with video layers, no connectors,
2·C input channels for SSR/TSR, plus the λ' embedding); frozen = ``Codecs`` (CLIP text);
``batch_inputs`` builds x, the augmented conditioning, λ', t, ε; ``loss`` is one call + the core's
``diffusion_loss`` in v.

Export: a self-describing folder, ``cascade_config.json`` (``CascadeConfig``: the UNet, the objective —
kind, factor, modes, augmentation, diffusion, condition — and the steps it was distilled for) beside the
safetensors weights; ``load_cascade(folder)`` rebuilds the ``CascadeDenoiser`` from it (local or ``s3://``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Mapping, Optional

import torch
from safetensors.torch import load as load_safetensors, save_file
from torch import Tensor, nn

from common import storage
from common.config import from_dict, to_dict
from common.errors import UsageError
from common.storage import S3Config
from models.codecs import Codecs
from models.codi.config import UNetSpec
from models.codi.unet import UNet2D
from models.diffusion.cascade import NoiseAugmentationConfig, noise_augment
from models.diffusion.config import CONTINUOUS_TIME_SCALE, DiffusionConfig, build_schedule, conditioning_time
from models.diffusion.losses import diffusion_loss
from models.diffusion.schedules import CosineSchedule
from models.unet import timestep_embedding
from training.objectives import diffusion_draw, downsample_video, skip_frames, ssr_condition, tsr_condition
from training.tasks.base import frozen
from training.tasks.batches import modality_data
from training.tasks.ldm import ConditionConfig, condition_inputs

CascadeKind = Literal["base", "ssr", "tsr"]
CASCADE_CONFIG = "cascade_config.json"
WEIGHTS_NAME = "model.safetensors"


def cascade_diffusion() -> DiffusionConfig:
    """Imagen Video's process: continuous cosine schedule with v-prediction (§2.1, §2.4)."""
    return DiffusionConfig(schedule="cosine", prediction="v")


@dataclass
class CascadeObjective:
    kind: CascadeKind = "ssr"
    factor: int = 2                                   # SSR: spatial factor; TSR: temporal factor
    ssr_mode: Literal["bilinear", "nearest"] = "bilinear"
    tsr_mode: Literal["repeat", "blank"] = "repeat"
    augmentation: NoiseAugmentationConfig = field(default_factory=NoiseAugmentationConfig)
    condition: ConditionConfig = field(default_factory=ConditionConfig)
    diffusion: DiffusionConfig = field(default_factory=cascade_diffusion)
    shard_set: str = "webvid"

    def __post_init__(self):
        if self.kind not in ("base", "ssr", "tsr"):
            raise ValueError(f"cascade kind must be base, ssr or tsr, got {self.kind!r}")
        if self.factor < 1:
            raise ValueError("factor must be >= 1")


def cosine_time_from_log_snr(log_snr: Tensor, schedule: CosineSchedule) -> Tensor:
    """t' with λ(t') = λ', inverting λ_t = −2 log tan(a t + b) of the cosine schedule (Imagen Video §2.1)."""
    return (torch.atan(torch.exp(-0.5 * log_snr.double())) - schedule.b) / schedule.a


def video_to_unit(frames: Tensor) -> Tensor:
    """uint8 ``(b, f, h, w, 3)`` → float ``(b, 3, f, h, w)`` in [−1, 1]."""
    return frames.permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0


def cascade_spec(base: UNetSpec, kind: CascadeKind, channels: int = 3) -> UNetSpec:
    """The stage's UNet: ``base`` sizes, video layers on, no connectors; SSR/TSR take z_t and c concatenated."""
    extra = 0 if kind == "base" else channels
    return dataclasses.replace(base, in_channels=channels + extra, out_channels=channels, video=True,
                               connectors=False)


class CascadeDenoiser(nn.Module):
    """A CoDi 2-D video UNet with the conditioning concatenated on channels and λ' added to the time embedding."""

    def __init__(self, spec: UNetSpec):
        super().__init__()
        self.unet = UNet2D(spec)
        width = spec.model_channels
        self.aug_embed = nn.Sequential(nn.Linear(width, 4 * width), nn.SiLU(), nn.Linear(4 * width, 4 * width))
        nn.init.zeros_(self.aug_embed[2].weight)     # starts as the plain UNet; λ' enters as it trains
        nn.init.zeros_(self.aug_embed[2].bias)
        self.schedule = CosineSchedule()

    def forward(self, z_t: Tensor, t: Tensor, context: Tensor, cond: Optional[Tensor] = None,
                aug_log_snr: Optional[Tensor] = None) -> Tensor:
        emb = self.unet.embed_time(t, z_t.dtype)
        if cond is not None:
            aug_t = CONTINUOUS_TIME_SCALE * cosine_time_from_log_snr(aug_log_snr, self.schedule).float()
            emb = emb + self.aug_embed(timestep_embedding(aug_t, self.unet.spec.model_channels).to(z_t.dtype))
            z_t = torch.cat([z_t, cond.to(z_t.dtype)], dim=1)
        return self.unet(z_t, emb, context)


class CascadeTask:
    """The ``cascade_base`` / ``cascade_ssr`` / ``cascade_tsr`` stage kinds."""

    def __init__(self, objective: CascadeObjective, unet: UNetSpec, codecs: Callable[[], Codecs]):
        self.objective, self.spec, self.make_codecs = objective, cascade_spec(unet, objective.kind), codecs
        self.schedule = build_schedule(objective.diffusion)
        self.aug_schedule = CosineSchedule()

    @property
    def required(self) -> list[str]:
        return sorted({"video", *self.objective.condition.weights})

    def build_trainable(self) -> nn.Module:
        return CascadeDenoiser(self.spec)

    def build_frozen(self) -> Optional[nn.Module]:
        return frozen(self.make_codecs())

    def conditioning(self, x0: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """The low-res / low-fps input of x0, noise-augmented at a random λ', resized back to x0's grid."""
        o = self.objective
        low = downsample_video(x0, o.factor) if o.kind == "ssr" else skip_frames(x0, o.factor)
        t_aug = o.augmentation.train_max_t * torch.rand(x0.shape[0], generator=generator, dtype=torch.float64)
        log_snr = self.aug_schedule.log_snr(t_aug).to(x0.device)
        noise = torch.randn(low.shape, generator=generator).to(x0.device, x0.dtype)
        augmented = noise_augment(low, log_snr, noise)
        cond = (ssr_condition(augmented, tuple(x0.shape[-2:]), o.ssr_mode) if o.kind == "ssr"
                else tsr_condition(augmented, o.factor, o.tsr_mode))
        return {"low": low, "aug_noise": noise, "aug_log_snr": log_snr, "cond": cond}

    def batch_inputs(self, batch: Mapping, codecs: Codecs, generator: torch.Generator,
                     device: torch.device) -> dict[str, Tensor]:
        o = self.objective
        x0 = video_to_unit(modality_data(batch, "video", o.shard_set)).to(device)
        inputs = condition_inputs(codecs, batch, o.condition, o.shard_set, generator, device)
        if o.kind != "base":
            inputs.update(self.conditioning(x0, generator))
        return {**inputs, **diffusion_draw(x0, o.diffusion, self.schedule, generator)}

    def loss(self, module, inputs: Mapping[str, Tensor], dtype: torch.dtype = torch.float32) -> Tensor:
        d = self.objective.diffusion
        cond = inputs["cond"].to(dtype) if "cond" in inputs else None
        out = module(inputs["z_t"].to(dtype), conditioning_time(d, inputs["t"]), inputs["context"].to(dtype),
                     cond, inputs.get("aug_log_snr"))
        return diffusion_loss(out, inputs["x0"], inputs["eps"], inputs["alpha"], inputs["sigma"], d.prediction,
                              d.min_snr_gamma).mean()

    def export_state(self, trainable: dict[str, Tensor], frozen_part=None) -> dict[str, Tensor]:
        return dict(trainable)

    def save_pretrained(self, directory: Path, state: dict[str, Tensor], weights_name: str) -> None:
        save_cascade(directory, state, CascadeConfig(self.spec, self.objective), weights_name)


# -- the export: cascade_config.json + weights, and its loader --------------------------------------

@dataclass
class CascadeConfig:
    """What rebuilds and samples a cascade export: the stage's UNet (channels as ``cascade_spec`` set them)
    and objective; ``sampling_steps`` is N for a progressively distilled student (0: not distilled)."""

    unet: UNetSpec
    objective: CascadeObjective
    sampling_steps: int = 0

    def __post_init__(self):
        want = cascade_spec(self.unet, self.objective.kind, self.unet.out_channels)
        if (self.unet.in_channels, self.unet.video, self.unet.connectors) != (want.in_channels, True, False):
            raise ValueError(f"a {self.objective.kind} stage's UNet takes {want.in_channels} input channels, has video "
                             f"layers and no connectors; got in_channels={self.unet.in_channels}, "
                             f"video={self.unet.video}, connectors={self.unet.connectors}")
        if self.sampling_steps < 0:
            raise ValueError("sampling_steps must be >= 0")


def save_cascade(directory: Path, state: dict[str, Tensor], config: CascadeConfig,
                 weights_name: str = WEIGHTS_NAME) -> Path:
    """A cascade export folder: ``weights_name`` (safetensors) and ``cascade_config.json`` beside it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(directory / weights_name))
    (directory / CASCADE_CONFIG).write_text(json.dumps(to_dict(config), indent=2))
    return directory


def cascade_config(folder: str, s3: Optional[S3Config] = None) -> CascadeConfig:
    """The ``CascadeConfig`` of an export folder (local or ``s3://``), without reading the weights."""
    path = storage.join(str(folder), CASCADE_CONFIG)
    if not storage.exists(path, s3):
        raise UsageError(f"{path}: not found — not a cascade export (a cascade or base_distillation stage's "
                         "checkpoint folder)")
    return from_dict(CascadeConfig, json.loads(storage.read_bytes(path, s3).decode()), source=path)


def load_cascade(folder: str, weights_name: str = WEIGHTS_NAME,
                 s3: Optional[S3Config] = None) -> tuple[CascadeDenoiser, CascadeConfig]:
    """(the ``CascadeDenoiser``, its ``CascadeConfig``) of an export folder, local or ``s3://``; a missing
    config or weights file, or weights that do not fit the config's UNet, is one line naming the file."""
    config = cascade_config(folder, s3)
    path = storage.join(str(folder), weights_name)
    if not storage.exists(path, s3):
        raise UsageError(f"{path}: not found — the cascade export has no {weights_name}")
    model = CascadeDenoiser(config.unet)
    try:
        model.load_state_dict(load_safetensors(storage.read_bytes(path, s3)), strict=True)
    except Exception as err:  # safetensors header errors, missing/unexpected/mis-shaped tensors
        problem = " ".join(str(err).split())[:300]
        raise UsageError(f"{path}: does not fit {CASCADE_CONFIG}'s UNet ({type(err).__name__}: {problem})") from None
    return model, config
