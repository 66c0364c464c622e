"""Sampling through the cascade — Imagen Video §2.5 with §2.1's sampler: base → TSR → SSR.

    base:    z_1 ~ N(0, I);  x = DDIM_{η=0}(v̂_θ(z_t, t))                       (continuous cosine, v-prediction)
             with guidance weight w: v̂ ← (1 + w)·v̂_θ(z_t, t, text) − w·v̂_θ(z_t, t, ∅)    (Eq. 5, every stage)
    TSR/SSR: c' = α' x_prev + σ' ε'  at the fixed sampling λ' (``NoiseAugmentationConfig.sampling_level``)
             c  = repeat_k(c')  (TSR, frames × k)   or   up_bilinear(c')  (SSR, pixels × s)
             x  = DDIM_{η=0}(v̂_θ(concat(z_t, c), t, λ'))

Each stage is a ``(denoiser, objective)`` pair, the denoiser a pure ``(z_t, t, c, λ') -> v̂`` callable
(``t`` the schedule's time in [0, 1]; ``c``, ``λ'`` None for the base); ``cascade_denoiser`` makes one of a
loaded ``CascadeDenoiser``. Every random draw (each stage's ε', then its z_1) comes from one generator,
so a seed fixes the whole chain.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from models.diffusion.cascade import noise_augment
from models.diffusion.config import build_schedule, conditioning_time, sample_noise
from models.diffusion.guidance import ClipSpec, classifier_free_guidance
from models.diffusion.samplers import ddim_sample
from models.diffusion.schedules import continuous_timesteps
from training.objectives import ssr_condition, tsr_condition
from training.tasks.cascade import CascadeDenoiser, CascadeObjective

CascadeFn = Callable[[Tensor, Tensor, Optional[Tensor], Optional[Tensor]], Tensor]   # (z_t, t, c, λ') -> v̂


def cascade_denoiser(model: CascadeDenoiser, objective: CascadeObjective, context: Tensor,
                     null: Optional[Tensor] = None, w: float = 0.0) -> CascadeFn:
    """A loaded stage as the sampler's ``(z_t, t, c, λ') -> v̂``, conditioned on ``context`` (b, n, d).

    With Imagen's guidance weight ``w`` > 0 and ``null`` (the empty prompt's embedding, (1 or b, n, d): what
    the stage saw for the captions its training dropped, ``objective.condition.drop_prob``), classifier-free
    guidance on v̂ — Imagen Video Eq. 5, ṽ = (1 + w)·v̂(z, c) − w·v̂(z): v̂ is linear in the network's output
    for a given z_t, so guiding it guides x̂ and ε̂ alike. One batched forward on [context; null], the
    low-res conditioning and λ' the same in both halves."""
    if w < 0:
        raise ValueError(f"guidance weight w must be >= 0 (0: unguided), got {w}")
    if w > 0 and null is None:
        raise ValueError("guidance needs the null (empty prompt) embedding")

    def denoise(z: Tensor, t: Tensor, cond: Optional[Tensor], log_snr: Optional[Tensor]) -> Tensor:
        time = conditioning_time(objective.diffusion, t).to(z.device)
        if w == 0:
            return model(z.float(), time, context.to(z.device), cond, log_snr)

        def both_halves(zz: Tensor, tt: Tensor, ctx: Tensor) -> Tensor:
            twice = (lambda x: None if x is None else torch.cat([x, x]))
            return model(zz, tt, ctx, twice(cond), twice(log_snr))

        return classifier_free_guidance(both_halves, z.float(), time, context.to(z.device), null.to(z.device), w)
    return denoise


def stage_shape(previous: Sequence[int], objective: CascadeObjective) -> tuple[int, ...]:
    """A super-resolution stage's output ``(b, c, f, h, w)`` from its input's: f·k frames (TSR) or s·h × s·w (SSR)."""
    b, c, f, h, w = previous
    k = objective.factor
    return (b, c, f * k, h, w) if objective.kind == "tsr" else (b, c, f, h * k, w * k)


def sampling_condition(low: Tensor, objective: CascadeObjective,
                       generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """(c, λ'): the previous stage's video noise-augmented at the fixed sampling λ' and brought to this stage's
    grid, as ``CascadeTask.conditioning`` does in training (augment at low res, then repeat / resize)."""
    o = objective
    log_snr = torch.full((low.shape[0],), o.augmentation.sampling_level(), dtype=torch.float64, device=low.device)
    noise = torch.randn(low.shape, generator=generator).to(low)
    augmented = noise_augment(low, log_snr, noise).to(low.dtype)
    b, c, f, h, w = stage_shape(low.shape, o)
    cond = ssr_condition(augmented, (h, w), o.ssr_mode) if o.kind == "ssr" else tsr_condition(augmented, o.factor,
                                                                                               o.tsr_mode)
    return cond, log_snr


def sample_stage(denoiser: CascadeFn, objective: CascadeObjective, shape: Sequence[int], steps: int,
                 generator: torch.Generator, cond: Optional[Tensor] = None, log_snr: Optional[Tensor] = None,
                 clip_x0: ClipSpec = "static", device: Optional[torch.device] = None) -> Tensor:
    """One stage: z_1 from the stage's prior, ``steps`` deterministic DDIM steps (η = 0) on t = 1, 1 − 1/N, ..., 1/N."""
    d = objective.diffusion
    schedule = build_schedule(d)
    x_T = sample_noise(d, tuple(shape), generator=generator).to(device or torch.device("cpu"))
    out = ddim_sample(lambda z, t: denoiser(z, t, cond, log_snr), x_T, schedule, continuous_timesteps(steps), eta=0.0,
                      prediction=d.prediction, clip_x0=clip_x0)
    return out.float()


def sample_cascade(stages: Sequence[tuple[CascadeFn, CascadeObjective]], shape: Sequence[int],
                   steps: Sequence[int], generator: torch.Generator, clip_x0: ClipSpec = "static",
                   device: Optional[torch.device] = None) -> list[Tensor]:
    """Every stage's video, base first: the base samples ``shape`` ``(b, c, f, h, w)``, each later stage
    conditions on the one before; ``steps`` has one sampler step count per stage."""
    if not stages or stages[0][1].kind != "base" or any(o.kind == "base" for _, o in stages[1:]):
        raise ValueError("a cascade is one base stage followed by TSR / SSR stages, got "
                         f"{[o.kind for _, o in stages]}")
    if len(steps) != len(stages):
        raise ValueError(f"steps needs one count per stage ({len(stages)}), got {list(steps)}")
    (base, base_objective), *rest = stages
    videos = [sample_stage(base, base_objective, shape, steps[0], generator, clip_x0=clip_x0, device=device)]
    for (denoiser, objective), n in zip(rest, steps[1:]):
        cond, log_snr = sampling_condition(videos[-1], objective, generator)
        videos.append(sample_stage(denoiser, objective, stage_shape(videos[-1].shape, objective), n, generator, cond,
                                   log_snr, clip_x0, device))
    return videos
