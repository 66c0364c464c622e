"""Denoising losses per parameterization, with optional min-SNR-γ weighting (Hang et al. 2023, ICCV)."""

from typing import Optional

import torch
from torch import Tensor

from .parameterization import Prediction, check_prediction, from_x0_eps
from .process import Coeff


def mse_per_sample(prediction: Tensor, target: Tensor) -> Tensor:
    """‖a − b‖² averaged over every non-batch dimension, shape ``(b,)``."""
    return (prediction - target).pow(2).flatten(1).mean(1)


def snr(alpha: Coeff, sigma: Coeff) -> Tensor:
    """SNR(t) = α_t²/σ_t² = e^{λ_t} — Imagen Video §2.1 (λ_t = log[α_t²/σ_t²])."""
    alpha, sigma = torch.as_tensor(alpha), torch.as_tensor(sigma)
    return alpha**2 / sigma**2


def min_snr_weight(alpha: Coeff, sigma: Coeff, prediction: Prediction, gamma: float) -> Tensor:
    """min(SNR, γ)/k with k = 1, SNR, SNR+1 for x₀, ε, v targets — min-SNR-γ, Hang et al. (2023).

    (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy".)

    ‖ε̂ − ε‖² = SNR·‖x̂ − x‖² and ‖v̂ − v‖² = (SNR + 1)·‖x̂ − x‖², so dividing by k makes all three
    targets minimise the same min(SNR, γ)·‖x̂ − x‖².
    """
    check_prediction(prediction)
    s = snr(alpha, sigma)
    clipped = torch.clamp(s, max=gamma)
    if prediction == "x0":
        return clipped
    if prediction == "eps":
        return clipped / s
    return clipped / (s + 1)


def diffusion_loss(model_output: Tensor, x0: Tensor, eps: Tensor, alpha: Coeff, sigma: Coeff,
                   prediction: Prediction, min_snr_gamma: Optional[float] = None) -> Tensor:
    """Per-sample ‖output − target‖² for an ε / x / v target, shape ``(b,)`` — Imagen Video Eq. 2, §2.4.

    ``eps`` is whatever noise made z_t (i.i.d. or a correlated video prior); with ``min_snr_gamma``
    each sample is weighted by ``min_snr_weight``.
    """
    target = from_x0_eps(x0, eps, alpha, sigma, prediction)
    loss = mse_per_sample(model_output.float(), target.float())
    if min_snr_gamma is not None:
        weight = min_snr_weight(alpha, sigma, prediction, min_snr_gamma)
        loss = loss * torch.as_tensor(weight, device=loss.device).to(loss.dtype).expand_as(loss)
    return loss
