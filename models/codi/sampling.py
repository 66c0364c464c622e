"""Sampling CoDi's latents: one lock-step DDIM loop over a dict of latents, or each latent alone.

    latents = sample_joint(partial(codi, joint_context="paper"), shapes, context, uncond, diffusion,
                           sampling, guidance=table12_guidance(shapes))
    latents = sample_independent(partial(codi, joint_context="paper"), shapes, ...)

``model(latents, t, context) -> {modality: ε}`` is ``CoDi.forward`` (or any callable of that form).

* Joint (CoDi §3.4, Eq. 3): every step calls the model ONCE with all requested latents, so each
  modality's ε sees the others' noisy latents through the environment encoders; all latents move
  through the same timesteps in lock-step.
* Independent: each modality runs its own loop with only its latent (its UNet alone).
* Classifier-free guidance per modality: the model is called once per step on [cond; uncond] (the
  composed context and the composed null context) and each modality's output is combined with its
  own Imagen weight by the core's ``guide``. The defaults are CoDi's Table 12 scales (image/video
  2.0, audio 7.5, text 2.0), given as ``Guidance(s, "scale")`` — the core converts them to w once.
* DDIM is the core's ``ddim_sample`` (Song et al. 2021, Eq. 12/16) run on the latents packed into
  one ``(b, N)`` tensor: the step formula, η, timesteps and parameterization all come from the core,
  nothing is re-derived here. Latents are never clipped (they are not bounded by [−1, 1]).
* Seeds: sample row i of modality m draws x_T and every step's noise from its own generator seeded
  ``modality_seed(seeds[i], m)``, so a row is reproducible alone, and joint and independent sampling
  of the same seed start from the same x_T.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Callable, Mapping, Optional, Sequence

import torch
from torch import Tensor

from models.diffusion.config import DiffusionConfig, SamplingConfig, build_schedule, sample_noise
from models.diffusion.guidance import Guidance, guide
from models.diffusion.samplers import ddim_sample
from models.diffusion.schedules import sampling_timesteps

JointModel = Callable[[dict, Tensor, Tensor], dict]
MODALITY_ORDER = ("image", "video", "audio", "text")
TABLE12_SCALES = {"image": 2.0, "video": 2.0, "audio": 7.5, "text": 2.0}  # CoDi Table 12, SD/CoDi scale s


def table12_guidance(modalities) -> dict[str, Guidance]:
    """CoDi's Table 12 guidance scales for ``modalities`` (scale convention: s·ε_c + (1 − s)·ε_u)."""
    return {m: Guidance(TABLE12_SCALES[m], "scale") for m in modalities}


def modality_seed(seed: int, modality: str) -> int:
    """The generator seed of one (sample seed, modality) pair: distinct for every pair."""
    return len(MODALITY_ORDER) * seed + MODALITY_ORDER.index(modality)


class NoiseSource:
    """Per-(row, modality) generators: ``draw()`` gives each modality's next ``shape`` draw from the prior."""

    def __init__(self, diffusion: DiffusionConfig, shapes: Mapping[str, Sequence[int]], seeds: Sequence[int],
                 device: torch.device):
        self.diffusion, self.shapes, self.device = diffusion, {m: tuple(s) for m, s in shapes.items()}, device
        self.generators = {m: [torch.Generator(device=device).manual_seed(modality_seed(s, m)) for s in seeds]
                           for m in shapes}

    def draw(self, dtype: Optional[torch.dtype] = None) -> dict[str, Tensor]:
        return {m: torch.cat([sample_noise(self.diffusion, (1, *shape[1:]), generator=g, device=self.device,
                                           dtype=dtype) for g in self.generators[m]])
                for m, shape in self.shapes.items()}


@dataclass(frozen=True)
class Packing:
    """A dict of ``(b, ...)`` latents as one ``(b, N)`` tensor and back (the core samplers take one tensor)."""

    shapes: dict

    def pack(self, latents: Mapping[str, Tensor]) -> Tensor:
        return torch.cat([latents[m].reshape(latents[m].shape[0], -1) for m in self.shapes], dim=1)

    def unpack(self, flat: Tensor) -> dict[str, Tensor]:
        sizes = [prod(shape[1:]) for shape in self.shapes.values()]
        parts = flat.split(sizes, dim=1)
        return {m: part.reshape(flat.shape[0], *shape[1:]) for (m, shape), part in zip(self.shapes.items(), parts)}


def guided_joint_denoiser(model: JointModel, context: Tensor, uncond: Tensor) -> Callable:
    """``denoiser(latents, t, weights)``: ONE model call on [cond; uncond] with every latent, guided per modality.

    ``weights`` maps each modality to its Imagen w at this step (Imagen Video Eq. 5 via ``guide``).
    ``uncond`` may have batch 1 (one shared null context).
    """
    batch = context.shape[0]
    uncond = uncond.expand(batch, *uncond.shape[1:]) if uncond.shape[0] == 1 else uncond
    both = torch.cat([context, uncond.to(context.dtype)])

    def denoiser(latents: dict[str, Tensor], t: Tensor, weights: Mapping[str, float]) -> dict[str, Tensor]:
        out = model({m: torch.cat([z, z]) for m, z in latents.items()}, torch.cat([t, t]), both)
        return {m: guide(*out[m].chunk(2), weights[m]) for m in latents}

    return denoiser


def step_weights(guidance: Mapping[str, Guidance], num_steps: int) -> list[dict[str, float]]:
    """One ``{modality: Imagen w}`` per step (each ``Guidance`` converts its own convention)."""
    per_modality = {m: g.imagen_weights(num_steps) for m, g in guidance.items()}
    return [{m: weights[i] for m, weights in per_modality.items()} for i in range(num_steps)]


def check_request(shapes: Mapping[str, Sequence[int]], context: Tensor, guidance: Mapping[str, Guidance]) -> None:
    if not shapes:
        raise ValueError("no outputs requested")
    unknown = [m for m in shapes if m not in MODALITY_ORDER]
    if unknown:
        raise ValueError(f"unknown output modality {unknown[0]!r} (one of {', '.join(MODALITY_ORDER)})")
    missing = [m for m in shapes if m not in guidance]
    if missing:
        raise ValueError(f"no guidance given for {missing[0]}")
    wrong = [m for m, s in shapes.items() if s[0] != context.shape[0]]
    if wrong:
        raise ValueError(f"{wrong[0]} batch {shapes[wrong[0]][0]} != context batch {context.shape[0]}")


@torch.no_grad()
def sample_joint(model: JointModel, shapes: Mapping[str, Sequence[int]], context: Tensor, uncond: Tensor,
                 diffusion: DiffusionConfig, sampling: SamplingConfig, guidance: Mapping[str, Guidance],
                 seeds: Optional[Sequence[int]] = None) -> dict[str, Tensor]:
    """x̂_0 for every modality in ``shapes``, sampled together by guided DDIM (one model call per step).

    ``shapes`` maps modality -> latent shape (batch first, equal to ``context``'s batch); ``seeds``
    gives each row's seed (default ``sampling.seed + row``). ``sampling.guidance`` and ``clip_x0``
    are not used: ``guidance`` holds one setting per modality and latents are not clipped.
    """
    check_request(shapes, context, guidance)
    shapes = {m: tuple(shapes[m]) for m in shapes}
    batch, device = context.shape[0], context.device
    seeds = [sampling.seed + i for i in range(batch)] if seeds is None else list(seeds)
    schedule = build_schedule(diffusion)
    timesteps = sampling_timesteps(schedule, sampling.steps, sampling.spacing)
    noise, packing = NoiseSource(diffusion, shapes, seeds, device), Packing(shapes)
    denoise = guided_joint_denoiser(model, context, uncond)

    def packed_denoiser(z: Tensor, t: Tensor, weights: Mapping[str, float]) -> Tensor:
        return packing.pack(denoise(packing.unpack(z), t, weights))

    def packed_noise(shape, generator=None, device=None, dtype=None) -> Tensor:
        return packing.pack(noise.draw(dtype))

    x_T = packing.pack(noise.draw(context.dtype))
    z_0 = ddim_sample(packed_denoiser, x_T, schedule, timesteps, eta=sampling.eta, prediction=diffusion.prediction,
                      clip_x0=None, noise_fn=packed_noise,
                      guidance_weights=step_weights({m: guidance[m] for m in shapes}, len(timesteps)))
    return packing.unpack(z_0)


@torch.no_grad()
def sample_independent(model: JointModel, shapes: Mapping[str, Sequence[int]], context: Tensor, uncond: Tensor,
                       diffusion: DiffusionConfig, sampling: SamplingConfig, guidance: Mapping[str, Guidance],
                       seeds: Optional[Sequence[int]] = None) -> dict[str, Tensor]:
    """Each modality of ``shapes`` sampled alone (its own loop, its UNet alone), same seeds as ``sample_joint``."""
    check_request(shapes, context, guidance)
    return {m: sample_joint(model, {m: shapes[m]}, context, uncond, diffusion, sampling, guidance, seeds)[m]
            for m in shapes}


def sample_latents(model: JointModel, shapes: Mapping[str, Sequence[int]], context: Tensor, uncond: Tensor,
                   diffusion: DiffusionConfig, sampling: SamplingConfig, guidance: Mapping[str, Guidance],
                   seeds: Optional[Sequence[int]] = None, joint: bool = True) -> dict[str, Tensor]:
    """``sample_joint`` or ``sample_independent``."""
    sample = sample_joint if joint else sample_independent
    return sample(model, shapes, context, uncond, diffusion, sampling, guidance, seeds)
