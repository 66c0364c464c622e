"""Per-stage diffusion config: schedule, parameterization, loss weighting and video noise prior.

The same ``DiffusionConfig`` must drive a stage's training and its sampling: ``build_schedule`` gives
the schedule both use, and ``sample_noise`` / ``noise_fn`` draw from the one configured prior (for ε
in training, for x_T and for every ancestral step at sampling time).
"""

from dataclasses import dataclass
from functools import partial
from typing import Literal, Optional, Sequence

import torch
from torch import Tensor

from .noise_priors import (NoiseFn, iid_noise, pyoco_mixed_noise, pyoco_progressive_noise,
                           videofusion_noise)
from .schedules import CosineSchedule, DiscreteSchedule, Schedule, linear_betas, scaled_linear_betas

VIDEO_NDIM = 5  # b c f h w; every other layout (images, mels, text latents) gets i.i.d. noise


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


def build_schedule(cfg: DiffusionConfig) -> Schedule:
    """The stage's schedule: a ``DiscreteSchedule`` for (scaled) linear β, a ``CosineSchedule`` for cosine."""
    if cfg.schedule == "linear":
        return DiscreteSchedule(linear_betas(cfg.num_timesteps, cfg.beta_start, cfg.beta_end))
    if cfg.schedule == "scaled_linear":
        return DiscreteSchedule(scaled_linear_betas(cfg.num_timesteps, cfg.beta_start, cfg.beta_end))
    if cfg.schedule == "cosine":
        return CosineSchedule(cfg.cosine_logsnr_min, cfg.cosine_logsnr_max)
    raise ValueError(f"unknown schedule {cfg.schedule!r}")


def sample_noise(cfg: DiffusionConfig, shape: Sequence[int], generator: Optional[torch.Generator] = None,
                 device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None) -> Tensor:
    """ε from the configured prior for a ``b c f h w`` video; i.i.d. for any other shape."""
    shape = tuple(shape)
    kwargs = dict(generator=generator, device=device, dtype=dtype)
    if cfg.noise_prior == "iid" or len(shape) != VIDEO_NDIM:
        return iid_noise(shape, **kwargs)
    if cfg.noise_prior == "pyoco_mixed":
        return pyoco_mixed_noise(shape, cfg.noise_prior_alpha, cfg.frame_dim, **kwargs)
    if cfg.noise_prior == "pyoco_progressive":
        return pyoco_progressive_noise(shape, cfg.noise_prior_alpha, cfg.frame_dim, **kwargs)
    if cfg.noise_prior == "videofusion":
        return videofusion_noise(shape, cfg.noise_prior_lambda, cfg.frame_dim, **kwargs)
    raise ValueError(f"unknown noise prior {cfg.noise_prior!r}")


def noise_fn(cfg: DiffusionConfig) -> NoiseFn:
    """``sample_noise`` bound to ``cfg``: the samplers' ``noise_fn`` argument."""
    return partial(sample_noise, cfg)
