"""Noise conditioning augmentation for cascaded super-resolution stages — Imagen Video §2.5 (Ho et al. 2022a).

The low-resolution conditioning c is corrupted with the forward process at log-SNR λ',
c' = α' c + σ' ε with α'² = sigmoid(λ'), σ'² = sigmoid(−λ'), and λ' is given to the model as an
extra input. Training draws λ' at random per sample; sampling uses one fixed, high SNR.

The paper's sampling level ("a fixed signal-to-noise ratio such as 3 or 5, representing a small
amount of augmentation ... while preserving most of the structure") is read as a *log*-SNR: λ' = 3
gives σ' ≈ 0.22 and λ' = 5 σ' ≈ 0.08, whereas a linear SNR of 3 would be σ' = 0.5 — half the
conditioning's variance replaced by noise, not "a small amount". The API names the unit: λ'
(``log_snr``) or the noise scale σ' (``sigma``), never a bare "snr".
"""

import math
from dataclasses import dataclass
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


def sigma_from_log_snr(log_snr: float) -> float:
    """σ' = √sigmoid(−λ'), the noise scale at log-SNR λ' (α'² + σ'² = 1) — Imagen Video §2.1."""
    return float(alpha_sigma_from_log_snr(torch.tensor(float(log_snr), dtype=torch.float64))[1])


def log_snr_from_sigma(sigma: float) -> float:
    """λ' = log(α'²/σ'²) = log((1 − σ'²)/σ'²), the inverse of ``sigma_from_log_snr`` — Imagen Video §2.1."""
    if not 0.0 < sigma < 1.0:
        raise ValueError(f"sigma must lie in (0, 1), got {sigma}")
    return math.log1p(-sigma**2) - 2 * math.log(sigma)


@dataclass
class NoiseAugmentationConfig:
    """A cascade stage's conditioning augmentation — Imagen Video §2.5.

    Sampling uses ONE of ``sampling_log_snr`` (λ', default 3: the paper's "3 or 5" read as log-SNR)
    or ``sampling_sigma`` (σ'); setting ``sampling_sigma`` requires ``sampling_log_snr: null``.
    Training draws t' ~ U(0, ``train_max_t``) on the continuous cosine schedule.
    """

    sampling_log_snr: Optional[float] = 3.0
    sampling_sigma: Optional[float] = None
    train_max_t: float = 1.0

    def __post_init__(self):
        if (self.sampling_log_snr is None) == (self.sampling_sigma is None):
            raise ValueError("set exactly one of sampling_log_snr and sampling_sigma")
        if self.sampling_sigma is not None and not 0.0 < self.sampling_sigma < 1.0:
            raise ValueError("sampling_sigma must lie in (0, 1)")
        if not 0.0 < self.train_max_t <= 1.0:
            raise ValueError("train_max_t must lie in (0, 1]")

    def sampling_level(self) -> float:
        """The sampling λ', whichever unit the config was written in."""
        if self.sampling_log_snr is not None:
            return float(self.sampling_log_snr)
        return log_snr_from_sigma(self.sampling_sigma)


def sampling_noise_augmentation(cond: Tensor, log_snr: float = 3.0, generator: Optional[torch.Generator] = None,
                                noise: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """(c', λ') at one fixed log-SNR λ' ("such as 3 or 5", read as log-SNR) — Imagen Video §2.5 (sampling).

    To give the level as a noise scale, pass ``log_snr_from_sigma(σ')``.
    """
    log_snr = torch.full((cond.shape[0],), float(log_snr), dtype=torch.float64, device=cond.device)
    if noise is None:
        noise = torch.randn(cond.shape, generator=generator, device=cond.device, dtype=cond.dtype)
    return noise_augment(cond, log_snr, noise), log_snr
