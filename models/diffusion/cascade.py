"""Noise conditioning augmentation for cascaded super-resolution stages — Imagen Video §2.5 (Ho et al. 2022a).

The low-resolution conditioning c is corrupted with the forward process at log-SNR λ',
c' = α' c + σ' ε with α'² = sigmoid(λ'), σ'² = sigmoid(−λ'), and λ' is given to the model as an
extra input. Training draws λ' at random per sample; sampling uses one fixed, high SNR.
"""

import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from .process import q_sample
from .schedules import CosineSchedule, alpha_sigma_from_log_snr


def noise_augment(cond: Tensor, log_snr: Tensor, noise: Tensor) -> Tensor:
    """c' = α' c + σ' ε at log-SNR λ' (α'² = sigmoid(λ')) — Imagen Video §2.5, Eq. 1's forward process."""
    alpha, sigma = alpha_sigma_from_log_snr(torch.as_tensor(log_snr, dtype=torch.float64))
    return q_sample(cond, noise, alpha, sigma)


def training_noise_augmentation(cond: Tensor, schedule: Optional[CosineSchedule] = None, max_t: float = 1.0,
                                generator: Optional[torch.Generator] = None,
                                noise: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """(c', λ') with a random SNR per sample: t' ~ U(0, max_t), λ' = λ(t') — Imagen Video §2.5 (training).

    ``schedule`` defaults to the continuous cosine schedule; ``max_t`` < 1 caps the augmentation
    strength. Feed the returned ``(b,)`` λ' to the model alongside c'.
    """
    schedule = schedule or CosineSchedule()
    t_aug = max_t * torch.rand(cond.shape[0], generator=generator, dtype=torch.float64, device=cond.device)
    log_snr = schedule.log_snr(t_aug)
    if noise is None:
        noise = torch.randn(cond.shape, generator=generator, device=cond.device, dtype=cond.dtype)
    return noise_augment(cond, log_snr, noise), log_snr


def sampling_noise_augmentation(cond: Tensor, snr: float = 3.0, generator: Optional[torch.Generator] = None,
                                noise: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """(c', λ') at one fixed signal-to-noise ratio ("such as 3 or 5"), λ' = log SNR — Imagen Video §2.5 (sampling).

    The paper does not say whether 3 / 5 is SNR or log-SNR; ``snr`` here is α'²/σ'² (so λ' = log snr).
    """
    if snr <= 0:
        raise ValueError("snr must be positive")
    log_snr = torch.full((cond.shape[0],), math.log(snr), dtype=torch.float64, device=cond.device)
    if noise is None:
        noise = torch.randn(cond.shape, generator=generator, device=cond.device, dtype=cond.dtype)
    return noise_augment(cond, log_snr, noise), log_snr
