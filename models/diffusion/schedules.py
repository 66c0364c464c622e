"""Noise schedules: discrete β schedules (DDPM, Stable Diffusion / CoDi) and Imagen Video's continuous cosine.

Naming clash, read this once: DDPM (Ho et al. 2020) and CoDi §3 write α_t = 1 − β_t for the *per-step*
factor and ᾱ_t = Π_{s≤t} α_s for the cumulative one; VDM / Imagen Video §2.1 write α_t for the
*signal scale* of q(z_t | x) = N(α_t x, σ_t² I), i.e. α_t = √ᾱ_t. (CoDi §3 even writes
z_t = α_t z + σ_t ε with α_t := 1 − β_t, which is a typo for √ᾱ_t.) In this package:

* ``alpha_bar(t)`` = ᾱ_t (DDPM),   ``step_alpha(t)`` = 1 − β_t (DDPM's α_t, discrete only),
* ``alpha(t)`` = √ᾱ_t (Imagen Video's α_t),   ``sigma(t)`` = √(1 − ᾱ_t),
* ``log_snr(t)`` = λ_t = log(α_t²/σ_t²).

Discrete schedules take integer ``t`` in ``0 .. T−1`` (code index; the papers' 1-indexed step is
``t + 1``), and also accept ``t = −1`` meaning "before the first step" (ᾱ = 1, clean data). The
continuous schedule takes float ``t`` in [0, 1]. Values are float64 tensors on ``t``'s device.
"""

import math
from typing import Literal, Optional, Sequence, Union

import torch
from torch import Tensor

TimeLike = Union[int, float, Sequence, Tensor]


def linear_betas(num_timesteps: int, beta_start: float, beta_end: float) -> Tensor:
    """β_t linear from β_1 to β_T — DDPM (Ho et al. 2020) §4; CoDi Table 12 uses β_0 = 0.00085, β_T = 0.012."""
    return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)


def scaled_linear_betas(num_timesteps: int, beta_start: float, beta_end: float) -> Tensor:
    """β_t = (linear from √β_1 to √β_T)² — Latent Diffusion / Stable Diffusion (Rombach et al. 2022)."""
    # CoDi's table says "Linear" but its LDM code's "linear" is this squared-sqrt form (SD 1.5's schedule).
    return torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64) ** 2


def alpha_sigma_from_log_snr(log_snr: Tensor) -> tuple:
    """α² = sigmoid(λ), σ² = sigmoid(−λ): λ = log(α²/σ²) with α² + σ² = 1 — Imagen Video §2.1."""
    return torch.sigmoid(log_snr).sqrt(), torch.sigmoid(-log_snr).sqrt()


class DiscreteSchedule:
    """A variance-preserving schedule given by β_1..β_T — DDPM (Ho et al. 2020) Eq. 4: ᾱ_t = Π_{s≤t}(1 − β_s)."""

    discrete = True

    def __init__(self, betas: Tensor):
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.ndim != 1 or not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("betas must be a 1-D tensor with values in (0, 1)")
        self.betas = betas
        self.num_timesteps = betas.numel()
        # Slot 0 is ᾱ before the first step (the empty product, 1) so t = −1 addresses clean data.
        self._alpha_bar = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, 0)])
        self._on_device = {}

    def _tables(self, device: torch.device) -> tuple:
        """(β, ᾱ) on ``device``, copied once per device rather than on every lookup."""
        if device not in self._on_device:
            self._on_device[device] = (self.betas.to(device), self._alpha_bar.to(device))
        return self._on_device[device]

    def _index(self, t: TimeLike, first: int = -1) -> Tensor:
        t = torch.as_tensor(t)
        if t.is_floating_point():
            raise TypeError("a discrete schedule takes integer timesteps")
        # Range-checked on CPU only: on an accelerator the check would force a host sync every call.
        if t.device.type == "cpu" and bool(((t < first) | (t >= self.num_timesteps)).any()):
            raise IndexError(f"timesteps must lie in [{first}, {self.num_timesteps - 1}]")
        return t.long() + 1

    def beta(self, t: TimeLike) -> Tensor:
        """β_t, the per-step noise variance (t ≥ 0) — DDPM Eq. 2."""
        idx = self._index(t, first=0)
        return self._tables(idx.device)[0][idx - 1]

    def step_alpha(self, t: TimeLike) -> Tensor:
        """DDPM's α_t = 1 − β_t (the per-step factor, *not* the signal scale) — DDPM §2."""
        return 1 - self.beta(t)

    def alpha_bar(self, t: TimeLike) -> Tensor:
        """ᾱ_t = Π_{s≤t} α_s — DDPM Eq. 4; ᾱ_{−1} = 1."""
        idx = self._index(t)
        return self._tables(idx.device)[1][idx]

    def alpha(self, t: TimeLike) -> Tensor:
        """Signal scale α_t = √ᾱ_t of q(z_t | x) — Imagen Video Eq. 1."""
        return self.alpha_bar(t).sqrt()

    def sigma(self, t: TimeLike) -> Tensor:
        """Noise scale σ_t = √(1 − ᾱ_t) of q(z_t | x) — Imagen Video Eq. 1."""
        return (1 - self.alpha_bar(t)).sqrt()

    def log_snr(self, t: TimeLike) -> Tensor:
        """λ_t = log(α_t²/σ_t²) = log ᾱ_t − log(1 − ᾱ_t) — Imagen Video §2.1."""
        a = self.alpha_bar(t)
        return a.log() - torch.log1p(-a)


class CosineSchedule:
    """Continuous-time cosine schedule, λ_t = −2 log tan(a t + b) — Imagen Video §2.1 (Nichol & Dhariwal 2021 in continuous time).

    a, b clip λ to [logsnr_min, logsnr_max] (Salimans & Ho 2022's ``logsnr_schedule_cosine``); with
    infinite limits a = π/2, b = 0 and α_t = cos(πt/2), σ_t = sin(πt/2).
    """

    discrete = False

    def __init__(self, logsnr_min: float = -20.0, logsnr_max: float = 20.0):
        if not logsnr_min < logsnr_max:
            raise ValueError("logsnr_min must be below logsnr_max")
        self.logsnr_min, self.logsnr_max = logsnr_min, logsnr_max
        self.b = math.atan(math.exp(-0.5 * logsnr_max))
        self.a = math.atan(math.exp(-0.5 * logsnr_min)) - self.b

    def log_snr(self, t: TimeLike) -> Tensor:
        """λ_t = −2 log tan(a t + b), decreasing from logsnr_max at t = 0 to logsnr_min at t = 1."""
        t = torch.as_tensor(t, dtype=torch.float64)
        return -2 * torch.log(torch.tan(self.a * t + self.b))

    def alpha_bar(self, t: TimeLike) -> Tensor:
        """ᾱ_t = α_t² = sigmoid(λ_t)."""
        return torch.sigmoid(self.log_snr(t))

    def alpha(self, t: TimeLike) -> Tensor:
        """Signal scale α_t = √sigmoid(λ_t) — Imagen Video Eq. 1."""
        return alpha_sigma_from_log_snr(self.log_snr(t))[0]

    def sigma(self, t: TimeLike) -> Tensor:
        """Noise scale σ_t = √sigmoid(−λ_t) — Imagen Video Eq. 1."""
        return alpha_sigma_from_log_snr(self.log_snr(t))[1]


Schedule = Union[DiscreteSchedule, CosineSchedule]


def ddim_timesteps(num_train_timesteps: int, num_steps: int,
                   spacing: Literal["leading", "trailing"] = "leading") -> list:
    """Descending subsequence τ of {0..T−1} for an S-step sampler — DDIM (Song et al. 2021) §4.2.

    ``leading`` is LDM/CoDi's uniform spacing ``range(0, T, T // S) + 1`` (50 steps: 981, 961, ..., 1);
    ``trailing`` ends at the noisiest step (50 steps: 999, 979, ..., 19).
    """
    if not 0 < num_steps <= num_train_timesteps:
        raise ValueError(f"num_steps must lie in [1, {num_train_timesteps}]")
    if spacing == "leading":
        stride = num_train_timesteps // num_steps
        # LDM's "+1" offset; dropped when every step is used so the list stays within 0..T−1.
        offset = 1 if stride > 1 else 0
        steps = [i * stride + offset for i in range(num_steps)]
    elif spacing == "trailing":
        stride = num_train_timesteps / num_steps
        steps = [round(num_train_timesteps - i * stride) - 1 for i in range(num_steps)]
    else:
        raise ValueError(f"unknown spacing {spacing!r}")
    return steps[::-1] if spacing == "leading" else steps


def continuous_timesteps(num_steps: int) -> list:
    """t = 1, 1 − 1/N, ..., 1/N: "s, t follow a uniformly spaced sequence from 1 to 0" — Imagen Video §2.1."""
    if num_steps < 1:
        raise ValueError("num_steps must be positive")
    return [1.0 - i / num_steps for i in range(num_steps)]


def sampling_timesteps(schedule: Schedule, num_steps: int,
                       spacing: Literal["leading", "trailing"] = "leading") -> list:
    """The descending sampler timesteps for ``schedule`` (DDIM spacing or uniform continuous).

    With few steps ``leading`` starts far from the noisiest step (4 steps: t = 751, ᾱ ≈ 0.06) although
    sampling starts from pure noise; ``trailing`` always starts at T−1 (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed").
    """
    if schedule.discrete:
        return ddim_timesteps(schedule.num_timesteps, num_steps, spacing)
    return continuous_timesteps(num_steps)


def sample_timesteps(schedule: Schedule, batch_size: int, generator: Optional[torch.Generator] = None,
                     device: Optional[torch.device] = None) -> Tensor:
    """Training timesteps t ~ U{0..T−1} (DDPM Alg. 1) or t ~ U(0, 1) (Imagen Video Eq. 2), shape ``(b,)``."""
    if schedule.discrete:
        return torch.randint(0, schedule.num_timesteps, (batch_size,), generator=generator, device=device)
    return torch.rand(batch_size, generator=generator, device=device, dtype=torch.float64)
