"""Per-stage diffusion config: schedule, parameterization, loss weighting and video noise prior.

The same ``DiffusionConfig`` must drive a stage's training and its sampling: ``build_schedule`` gives
the schedule both use, and ``sample_noise`` / ``noise_fn`` draw from the one configured prior (for ε
in training, for x_T and for every ancestral step at sampling time). ``conditioning_time`` is the
one map from a schedule's t to the value the network's timestep embedding sees, and
``SamplingConfig`` holds the sampler settings (see docs/paper-defaults.md for where they differ
from CoDi's Table 12).
"""

from dataclasses import dataclass, field
from functools import partial
from typing import Literal, Optional, Sequence

import math

import torch
from torch import Tensor

from .guidance import ClipSpec, DynamicThreshold, Guidance
from .noise_priors import (NoiseFn, iid_noise, pyoco_mixed_noise, pyoco_progressive_noise,
                           videofusion_noise)
from .schedules import CosineSchedule, DiscreteSchedule, Schedule, linear_betas, scaled_linear_betas

VIDEO_NDIM = 5  # b c f h w; every other layout (images, mels, text latents) gets i.i.d. noise
CONTINUOUS_TIME_SCALE = 1000.0  # continuous t ∈ [0, 1] is embedded as 1000·t, the range of discrete indices


@dataclass
class DiffusionConfig:
    """One stage's diffusion settings (CoDi Table 12 defaults: 1000 steps, β from 0.00085 to 0.012, ε)."""

    schedule: Literal["linear", "scaled_linear", "cosine"] = "scaled_linear"
    num_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    prediction: Literal["eps", "x0", "v"] = "eps"
    min_snr_gamma: Optional[float] = None
    noise_prior: Literal["iid", "pyoco_mixed", "pyoco_progressive", "videofusion"] = "iid"
    noise_prior_alpha: float = 1.0      # PYoCo α (Eq. 3–4)
    noise_prior_lambda: float = 0.5     # VideoFusion λ for non-key frames (§4.1)
    frame_dim: int = 2                  # which dim is frames for video tensors (b c f h w)
    cosine_logsnr_min: float = -20.0    # λ range of the continuous cosine schedule
    cosine_logsnr_max: float = 20.0
    data_space: Literal["pixel", "latent"] = "pixel"  # latent models must not clip x̂ to [−1, 1]

    def __post_init__(self):
        if self.num_timesteps < 1:
            raise ValueError("num_timesteps must be positive")
        if not 0.0 < self.beta_start < self.beta_end < 1.0:
            raise ValueError("need 0 < beta_start < beta_end < 1")
        if self.min_snr_gamma is not None and self.min_snr_gamma <= 0:
            raise ValueError("min_snr_gamma must be positive")
        if self.noise_prior_alpha < 0:
            raise ValueError("noise_prior_alpha must be >= 0")
        if not 0.0 <= self.noise_prior_lambda <= 1.0:
            raise ValueError("noise_prior_lambda must lie in [0, 1]")
        if not 1 <= self.frame_dim < VIDEO_NDIM:
            raise ValueError(f"frame_dim must lie in [1, {VIDEO_NDIM - 1}]")
        if not self.cosine_logsnr_min < self.cosine_logsnr_max:
            raise ValueError("cosine_logsnr_min must be below cosine_logsnr_max")
        if self.schedule == "cosine" and self.prediction == "eps":
            # α_1 = √sigmoid(λ_min) ≈ 4.5e-5 at λ_min = −20: x̂ = (z − σ ε̂)/α_1 multiplies ε̂'s error by ~2e4
            # on the first sampling step. Imagen Video §2.4 pairs this schedule with v-prediction.
            raise ValueError("schedule 'cosine' with prediction 'eps' is refused: at t = 1 the signal scale is "
                             f"α ≈ {math.sqrt(1 / (1 + math.exp(-self.cosine_logsnr_min))):.1e}, so x̂ = (z − σε̂)/α "
                             "blows up on the first step; use prediction 'v' (Imagen Video §2.4) or 'x0'")


def build_schedule(cfg: DiffusionConfig) -> Schedule:
    """The stage's schedule: a ``DiscreteSchedule`` for (scaled) linear β, a ``CosineSchedule`` for cosine."""
    if cfg.schedule == "linear":
        return DiscreteSchedule(linear_betas(cfg.num_timesteps, cfg.beta_start, cfg.beta_end))
    if cfg.schedule == "scaled_linear":
        return DiscreteSchedule(scaled_linear_betas(cfg.num_timesteps, cfg.beta_start, cfg.beta_end))
    if cfg.schedule == "cosine":
        return CosineSchedule(cfg.cosine_logsnr_min, cfg.cosine_logsnr_max)
    raise ValueError(f"unknown schedule {cfg.schedule!r}")


def conditioning_time(cfg: DiffusionConfig, t: Tensor) -> Tensor:
    """The timestep value the network's sinusoidal embedding sees: the discrete index t, or 1000·t for continuous t.

    The embedding (DDPM / Transformer, max period 10⁴) is built for t up to ~1000: fed a continuous
    t ∈ [0, 1] its fastest channel turns by at most one radian over the whole range and the network
    barely sees the noise level. Scaling by ``CONTINUOUS_TIME_SCALE`` gives both kinds of schedule
    the same range (VDM / Imagen Video condition on a well-scaled function of t likewise).
    """
    t = torch.as_tensor(t)
    if cfg.schedule == "cosine":
        return CONTINUOUS_TIME_SCALE * t.float()
    return t.float()


def sample_noise(cfg: DiffusionConfig, shape: Sequence[int], generator: Optional[torch.Generator] = None,
                 device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None,
                 video_frames: Optional[int] = None) -> Tensor:
    """ε from the configured prior for a ``b c f h w`` video; i.i.d. for any other shape.

    Joint image–video training (Imagen Video §2.3) appends independent images on the frame axis:
    with ``video_frames`` = n only the first n frames are one video and get the correlated prior;
    the appended image frames get i.i.d. noise, uncorrelated with the video and with each other.
    """
    shape = tuple(shape)
    kwargs = dict(generator=generator, device=device, dtype=dtype)
    if cfg.noise_prior == "iid" or len(shape) != VIDEO_NDIM:
        return iid_noise(shape, **kwargs)
    frames = shape[cfg.frame_dim]
    n = frames if video_frames is None else video_frames
    if not 0 <= n <= frames:
        raise ValueError(f"video_frames must lie in [0, {frames}], got {video_frames}")
    video_shape = shape[:cfg.frame_dim] + (n,) + shape[cfg.frame_dim + 1:]
    video = _video_prior(cfg, video_shape, **kwargs)
    if n == frames:
        return video
    images = iid_noise(shape[:cfg.frame_dim] + (frames - n,) + shape[cfg.frame_dim + 1:], **kwargs)
    return torch.cat([video, images], dim=cfg.frame_dim)


def _video_prior(cfg: DiffusionConfig, shape: tuple, **kwargs) -> Tensor:
    """The configured correlated prior over the frames of ``shape`` (one video per batch element)."""
    if shape[cfg.frame_dim] == 0:
        return iid_noise(shape, **kwargs)
    if cfg.noise_prior == "pyoco_mixed":
        return pyoco_mixed_noise(shape, cfg.noise_prior_alpha, cfg.frame_dim, **kwargs)
    if cfg.noise_prior == "pyoco_progressive":
        return pyoco_progressive_noise(shape, cfg.noise_prior_alpha, cfg.frame_dim, **kwargs)
    if cfg.noise_prior == "videofusion":
        return videofusion_noise(shape, cfg.noise_prior_lambda, cfg.frame_dim, **kwargs)
    raise ValueError(f"unknown noise prior {cfg.noise_prior!r}")


def noise_fn(cfg: DiffusionConfig, video_frames: Optional[int] = None) -> NoiseFn:
    """``sample_noise`` bound to ``cfg`` (and ``video_frames``): the samplers' ``noise_fn`` argument."""
    return partial(sample_noise, cfg, video_frames=video_frames)


@dataclass
class SamplingConfig:
    """Sampler settings of ``codiray generate`` (DDIM, CoDi §B: 50 steps, η = 1).

    ``guidance`` carries its own convention (CoDi's scale s or Imagen's w); the default is s = 3.0.
    ``clip_x0``: ``auto`` clips x̂ to [−1, 1] for pixel-space models and never for latent ones (a
    latent is not bounded by [−1, 1]); ``static`` / ``dynamic`` (Imagen Video §2.6.2) are pixel-only.
    See docs/paper-defaults.md for each default against CoDi's Table 12.
    """

    steps: int = 50
    eta: float = 1.0
    spacing: Literal["leading", "trailing"] = "trailing"
    guidance: Guidance = field(default_factory=lambda: Guidance(3.0, "scale"))
    clip_x0: Literal["auto", "none", "static", "dynamic"] = "auto"
    seed: int = 0

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError("steps must be >= 1")
        if self.eta < 0:
            raise ValueError("eta must be >= 0")


def resolve_x0_clip(diffusion: DiffusionConfig, clip_x0: str) -> ClipSpec:
    """The sampler's ``clip_x0`` for a stage: static clipping for pixel models on ``auto``, never for latent ones."""
    if clip_x0 == "auto":
        clip_x0 = "static" if diffusion.data_space == "pixel" else "none"
    if clip_x0 != "none" and diffusion.data_space == "latent":
        raise ValueError(f"clip_x0 {clip_x0!r} clips x̂ to [−1, 1], which a latent model's x̂ is not bounded by; "
                         "use 'auto' or 'none'")
    return {"none": None, "static": "static", "dynamic": DynamicThreshold()}[clip_x0]
