"""Samplers: DDIM with η (and deterministic η = 0), and DDPM / Imagen Video ancestral sampling with γ.

Each sampler takes a ``denoiser(z_t, t)`` returning the model output in the ``prediction``
parameterization, where ``t`` is a ``(b,)`` tensor (long for discrete schedules, float in [0, 1] for
the continuous one), the noisy start ``x_T`` and a descending list of timesteps. After the last
listed timestep the chain jumps to clean data (α = 1, σ = 0), so the result is that step's x̂.

With ``guidance_weights`` (one Imagen w per step, e.g. ``Guidance.imagen_weights(n)``) the sampler
calls ``denoiser(z_t, t, w)`` instead — the signature of ``guided_denoiser``. ``noise_fn`` draws each
step's fresh noise (default i.i.d.); pass the stage's video prior so sampling matches training.
"""

from typing import Callable, Iterable, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .guidance import ClipSpec, resolve_clip
from .noise_priors import NoiseFn, iid_noise
from .parameterization import Prediction, eps_from_x0, to_x0_eps
from .process import Coeff, ancestral_variance, expand_like, q_posterior_mean, q_posterior_variance

Denoiser = Callable[..., Tensor]


def timestep_batch(schedule, t, like: Tensor) -> Tensor:
    """``t`` repeated over the batch of ``like``: long for discrete schedules, float32 for continuous ones."""
    dtype = torch.long if schedule.discrete else torch.float32
    return torch.full((like.shape[0],), t, dtype=dtype, device=like.device)


def _alpha_sigma(schedule, t, like: Tensor) -> Tuple[Tensor, Tensor]:
    """Per-sample (α_t, σ_t); ``t=None`` is the end of the chain, clean data (α = 1, σ = 0)."""
    if t is None:
        ones = torch.ones(like.shape[0], dtype=torch.float64, device=like.device)
        return ones, torch.zeros_like(ones)
    tt = timestep_batch(schedule, t, like)
    return schedule.alpha(tt), schedule.sigma(tt)


def predict_x0_eps(denoiser: Denoiser, z_t: Tensor, t, schedule, prediction: Prediction,
                   clip: Optional[Callable[[Tensor], Tensor]] = None,
                   weight: Optional[Coeff] = None) -> Tuple[Tensor, Tensor]:
    """(x̂, ε̂) at one step; a clipped x̂ is turned back into a consistent ε̂ (Imagen Video §2.6.2)."""
    tt = timestep_batch(schedule, t, z_t)
    out = denoiser(z_t, tt) if weight is None else denoiser(z_t, tt, weight)
    alpha, sigma = schedule.alpha(tt), schedule.sigma(tt)
    x0, eps = to_x0_eps(out, z_t, alpha, sigma, prediction)
    if clip is not None:
        x0 = clip(x0)
        eps = eps_from_x0(z_t, x0, alpha, sigma)
    return x0, eps


def ddim_step(x0: Tensor, eps: Tensor, alpha_s: Coeff, sigma_s: Coeff, sigma_eta: Coeff = 0.0,
              noise: Optional[Tensor] = None) -> Tensor:
    """z_s = α_s x̂ + √(σ_s² − σ_η²)·ε̂ + σ_η·ξ — DDIM (Song et al. 2021) Eq. 12; η = 0 is deterministic."""
    sigma_s = torch.as_tensor(sigma_s, dtype=torch.float64)
    sigma_eta = torch.as_tensor(sigma_eta, dtype=torch.float64)
    direction = (sigma_s**2 - sigma_eta**2).clamp(min=0).sqrt()
    z_s = expand_like(alpha_s, x0) * x0 + expand_like(direction, eps) * eps
    if noise is not None:
        z_s = z_s + expand_like(sigma_eta, noise) * noise
    return z_s


def ddim_sigma(alpha_s: Coeff, sigma_s: Coeff, alpha_t: Coeff, sigma_t: Coeff, eta: float) -> Tensor:
    """σ_η = η·√((1−ᾱ_s)/(1−ᾱ_t))·√(1 − ᾱ_t/ᾱ_s) = η·σ̃_{s|t} — DDIM Eq. 16 (η = 1 is DDPM's posterior)."""
    return eta * q_posterior_variance(alpha_s, sigma_s, alpha_t, sigma_t).sqrt()


def _steps(timesteps: Sequence, progress: bool) -> Iterable:
    """(i, t, s) triples: step i goes from t to the next listed timestep s (None after the last)."""
    timesteps = list(timesteps)
    if not timesteps:
        raise ValueError("timesteps must not be empty")
    triples = [(i, t, timesteps[i + 1] if i + 1 < len(timesteps) else None) for i, t in enumerate(timesteps)]
    if progress:
        from tqdm.auto import tqdm

        return tqdm(triples)
    return triples


def _check_weights(guidance_weights: Optional[Sequence], timesteps: Sequence) -> None:
    if guidance_weights is not None and len(guidance_weights) != len(timesteps):
        raise ValueError("guidance_weights needs one weight per timestep")


@torch.no_grad()
def ddim_sample(denoiser: Denoiser, x_T: Tensor, schedule, timesteps: Sequence, eta: float = 0.0,
                prediction: Prediction = "eps", generator: Optional[torch.Generator] = None,
                clip_x0: ClipSpec = None, progress: bool = False, *, noise_fn: NoiseFn = iid_noise,
                guidance_weights: Optional[Sequence] = None) -> Tensor:
    """DDIM sampling with stochasticity η — Song et al. (2021) Eq. 12, 16; CoDi samples 50 steps with η = 1.

    η = 0 is the deterministic probability-flow sampler used for distillation (Imagen Video §2.1, §2.7).
    """
    _check_weights(guidance_weights, timesteps)
    clip = resolve_clip(clip_x0)
    z = x_T
    for i, t, s in _steps(timesteps, progress):
        w = None if guidance_weights is None else guidance_weights[i]
        x0, eps = predict_x0_eps(denoiser, z, t, schedule, prediction, clip, w)
        alpha_t, sigma_t = _alpha_sigma(schedule, t, z)
        alpha_s, sigma_s = _alpha_sigma(schedule, s, z)
        sigma_eta = ddim_sigma(alpha_s, sigma_s, alpha_t, sigma_t, eta)
        noise = None
        if eta > 0 and s is not None:
            noise = noise_fn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        z = ddim_step(x0, eps, alpha_s, sigma_s, sigma_eta, noise)
    return z


@torch.no_grad()
def ddpm_sample(denoiser: Denoiser, x_T: Tensor, schedule, timesteps: Optional[Sequence] = None,
                gamma: float = 0.0, prediction: Prediction = "eps", generator: Optional[torch.Generator] = None,
                clip_x0: ClipSpec = None, progress: bool = False, *, noise_fn: NoiseFn = iid_noise,
                guidance_weights: Optional[Sequence] = None) -> Tensor:
    """Ancestral sampling z_s = μ̃_{s|t}(z_t, x̂) + √((σ̃²_{s|t})^{1−γ}(σ²_{t|s})^γ)·ε — Imagen Video Eq. 3–4.

    DDPM (Ho et al. 2020) Alg. 2 in Imagen Video's form: γ = 0 uses the posterior variance (DDPM's β̃_t, "fixed small"), γ = 1 the forward one (β_t for
    adjacent steps, "fixed large"). ``timesteps`` defaults to every step T−1, ..., 0 of a discrete
    schedule; no noise is added on the final step.
    """
    if timesteps is None:
        if not schedule.discrete:
            raise ValueError("a continuous schedule needs explicit timesteps")
        timesteps = list(range(schedule.num_timesteps - 1, -1, -1))
    _check_weights(guidance_weights, timesteps)
    clip = resolve_clip(clip_x0)
    z = x_T
    for i, t, s in _steps(timesteps, progress):
        w = None if guidance_weights is None else guidance_weights[i]
        x0, _ = predict_x0_eps(denoiser, z, t, schedule, prediction, clip, w)
        alpha_t, sigma_t = _alpha_sigma(schedule, t, z)
        alpha_s, sigma_s = _alpha_sigma(schedule, s, z)
        z_next = q_posterior_mean(z, x0, alpha_s, sigma_s, alpha_t, sigma_t)
        if s is not None:
            std = ancestral_variance(alpha_s, sigma_s, alpha_t, sigma_t, gamma).sqrt()
            noise = noise_fn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
            z_next = z_next + expand_like(std, noise) * noise
        z = z_next
    return z
