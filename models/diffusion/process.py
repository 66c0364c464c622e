"""The Gaussian forward process and its reverse posterior, in Imagen Video's (Kingma et al. 2021) notation.

Here ``alpha`` is the *signal scale* α_t = √ᾱ_t and ``sigma`` the noise scale σ_t = √(1 − ᾱ_t) (see
``schedules.py`` for the clash with DDPM's α_t = 1 − β_t). Every function is written for any pair of
times s < t, so the same code serves adjacent DDPM steps, strided DDIM steps and continuous time.
The end of the chain (clean data) is α = 1, σ = 0.

Coefficients may be Python floats, 0-d tensors, per-sample ``(b,)`` tensors or tensors already shaped
like the data; ``expand_like`` is the one place that reshapes them to any data layout
(``b c h w`` images, ``b c f h w`` videos, mel spectrograms, ``b n d`` text latents).
"""

from typing import Union

import torch
from torch import Tensor

Coeff = Union[float, Tensor]


def expand_like(coeff: Coeff, x: Tensor) -> Tensor:
    """Shape a scalar or per-sample ``(b,)`` coefficient as ``(b, 1, ..., 1)`` to broadcast against ``x``."""
    coeff = torch.as_tensor(coeff, device=x.device)
    if coeff.ndim == 1 and x.ndim > 1:
        coeff = coeff.reshape(-1, *([1] * (x.ndim - 1)))
    # Schedules are kept in float64; cast here so coefficients never silently upcast activations.
    return coeff.to(dtype=x.dtype) if x.is_floating_point() else coeff


def q_sample(x0: Tensor, eps: Tensor, alpha: Coeff, sigma: Coeff) -> Tensor:
    """z_t = α_t x + σ_t ε, a draw of q(z_t | x) = N(α_t x, σ_t² I) — Imagen Video Eq. 1 (and below Eq. 2)."""
    return expand_like(alpha, x0) * x0 + expand_like(sigma, x0) * eps


def snr_ratio(alpha_s: Tensor, sigma_s: Tensor, alpha_t: Tensor, sigma_t: Tensor) -> Tensor:
    """e^{λ_t − λ_s} = (α_t²/σ_t²)/(α_s²/σ_s²), written without logs so that σ_s = 0 (data) gives 0 — Imagen Video Eq. 1."""
    return (alpha_t**2 * sigma_s**2) / (sigma_t**2 * alpha_s**2)


def transition_variance(alpha_s: Tensor, sigma_s: Tensor, alpha_t: Tensor, sigma_t: Tensor) -> Tensor:
    """σ²_{t|s} = (1 − e^{λ_t − λ_s}) σ_t², the variance of q(z_t | z_s) — Imagen Video Eq. 1 (β_t when s = t − 1)."""
    return (1 - snr_ratio(alpha_s, sigma_s, alpha_t, sigma_t)) * sigma_t**2


def q_posterior_mean(z_t: Tensor, x0: Tensor, alpha_s: Coeff, sigma_s: Coeff, alpha_t: Coeff,
                     sigma_t: Coeff) -> Tensor:
    """μ̃_{s|t}(z_t, x) = e^{λ_t−λ_s}(α_s/α_t) z_t + (1 − e^{λ_t−λ_s}) α_s x — Imagen Video Eq. 3 (DDPM Eq. 7)."""
    alpha_s, sigma_s, alpha_t, sigma_t = (torch.as_tensor(c, dtype=torch.float64)
                                          for c in (alpha_s, sigma_s, alpha_t, sigma_t))
    r = snr_ratio(alpha_s, sigma_s, alpha_t, sigma_t)
    return expand_like(r * alpha_s / alpha_t, z_t) * z_t + expand_like((1 - r) * alpha_s, x0) * x0


def q_posterior_variance(alpha_s: Coeff, sigma_s: Coeff, alpha_t: Coeff, sigma_t: Coeff) -> Tensor:
    """σ̃²_{s|t} = (1 − e^{λ_t − λ_s}) σ_s² — Imagen Video Eq. 3 (DDPM's β̃_t when s = t − 1)."""
    alpha_s, sigma_s, alpha_t, sigma_t = (torch.as_tensor(c, dtype=torch.float64)
                                          for c in (alpha_s, sigma_s, alpha_t, sigma_t))
    return (1 - snr_ratio(alpha_s, sigma_s, alpha_t, sigma_t)) * sigma_s**2


def ancestral_variance(alpha_s: Coeff, sigma_s: Coeff, alpha_t: Coeff, sigma_t: Coeff,
                       gamma: float) -> Tensor:
    """(σ̃²_{s|t})^{1−γ} (σ²_{t|s})^γ, the log-interpolated sampler variance — Imagen Video Eq. 4."""
    alpha_s, sigma_s, alpha_t, sigma_t = (torch.as_tensor(c, dtype=torch.float64)
                                          for c in (alpha_s, sigma_s, alpha_t, sigma_t))
    lower = q_posterior_variance(alpha_s, sigma_s, alpha_t, sigma_t)
    upper = transition_variance(alpha_s, sigma_s, alpha_t, sigma_t)
    return lower ** (1 - gamma) * upper**gamma
