"""Video noise priors: i.i.d., PYoCo mixed / progressive (Ge et al. 2023), VideoFusion decomposed (Luo et al. 2023).

Every prior is one video's: in joint image–video training (Imagen Video §2.3) the images appended on
the frame axis get i.i.d. noise (``config.sample_noise(..., video_frames=n)``). Every prior has unit
marginal variance per element, so it is a drop-in replacement for ε ~ N(0, I)
in q_sample, in the training target, for x_T and for every ancestral step of a sampler (pass the prior
as the sampler's ``noise_fn``): training and sampling must use the same prior. Noise is correlated
only along ``frame_dim`` (``b c f h w`` → 2); all other elements stay independent.

All samplers share the signature ``fn(shape, generator=None, device=None, dtype=None) -> Tensor``
once the prior's own parameters are bound (e.g. with ``functools.partial``).
"""

import math
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from .losses import mse_per_sample
from .process import expand_like

NoiseFn = Callable[..., Tensor]


def iid_noise(shape: Sequence[int], generator: Optional[torch.Generator] = None,
              device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None) -> Tensor:
    """ε ~ N(0, I), independent across frames — the image prior (DDPM Eq. 4)."""
    return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)


def _frame_shape(shape: Sequence[int], frame_dim: int) -> tuple:
    """``shape`` with the frame axis collapsed to 1 (one noise map shared by every frame)."""
    shape = list(shape)
    shape[frame_dim] = 1
    return tuple(shape)


def _along_frames(values: Tensor, ndim: int, frame_dim: int) -> Tensor:
    """A per-frame ``(f,)`` vector shaped to broadcast along ``frame_dim`` of an ``ndim`` tensor."""
    shape = [1] * ndim
    shape[frame_dim] = values.numel()
    return values.reshape(shape)


def pyoco_mixed_noise(shape: Sequence[int], alpha: float = 1.0, frame_dim: int = 2,
                      generator: Optional[torch.Generator] = None, device: Optional[torch.device] = None,
                      dtype: Optional[torch.dtype] = None) -> Tensor:
    """ε^i = ε_shared + ε^i_ind, ε_shared ~ N(0, α²/(1+α²) I), ε^i_ind ~ N(0, 1/(1+α²) I) — PYoCo Eq. 3.

    Any two frames have correlation α²/(1+α²); α = 0 is i.i.d.
    """
    shared = torch.randn(_frame_shape(shape, frame_dim), generator=generator, device=device, dtype=dtype)
    ind = torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
    scale = 1.0 / math.sqrt(1.0 + alpha**2)
    return alpha * scale * shared + scale * ind


def pyoco_progressive_noise(shape: Sequence[int], alpha: float = 1.0, frame_dim: int = 2,
                            generator: Optional[torch.Generator] = None, device: Optional[torch.device] = None,
                            dtype: Optional[torch.dtype] = None) -> Tensor:
    """ε^0 ~ N(0, I), ε^i = α/√(1+α²)·ε^{i−1} + ε^i_ind, ε^i_ind ~ N(0, 1/(1+α²) I) — PYoCo Eq. 4.

    An AR(1) chain along frames: corr(ε^i, ε^j) = (α/√(1+α²))^|i−j|.
    """
    ind = torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
    rho = alpha / math.sqrt(1.0 + alpha**2)
    scale = 1.0 / math.sqrt(1.0 + alpha**2)
    frames = [ind.select(frame_dim, 0)]  # ε^0 keeps unit variance
    for i in range(1, shape[frame_dim]):
        frames.append(rho * frames[-1] + scale * ind.select(frame_dim, i))
    return torch.stack(frames, dim=frame_dim)


def videofusion_key_frame(num_frames: int) -> int:
    """0-based index of the key (base) frame: the paper's 1-based ⌊N/2⌋ — VideoFusion §3.3."""
    return max(num_frames // 2 - 1, 0)


def videofusion_lambdas(num_frames: int, lam: float = 0.5) -> Tensor:
    """λ^i = ``lam`` for every frame except the key frame, where λ = 1 (x^0 = x^⌊N/2⌋) — VideoFusion §3.3, §4.1."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError("VideoFusion λ must lie in [0, 1]")
    lambdas = torch.full((num_frames,), float(lam), dtype=torch.float64)
    lambdas[videofusion_key_frame(num_frames)] = 1.0
    return lambdas


def videofusion_noise(shape: Sequence[int], lam: float = 0.5, frame_dim: int = 2,
                      generator: Optional[torch.Generator] = None, device: Optional[torch.device] = None,
                      dtype: Optional[torch.dtype] = None) -> Tensor:
    """ε^i = √λ^i·b + √(1−λ^i)·r^i with one base noise b shared by all frames — VideoFusion Eq. 7, 9, 11.

    corr(ε^i, ε^j) = √(λ^i λ^j); the key frame's noise is b itself.
    """
    base = torch.randn(_frame_shape(shape, frame_dim), generator=generator, device=device, dtype=dtype)
    residual = torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
    lambdas = _along_frames(videofusion_lambdas(shape[frame_dim], lam), len(shape), frame_dim)
    return expand_like(lambdas.sqrt(), residual) * base + expand_like((1 - lambdas).sqrt(), residual) * residual


def remove_base_noise(z_t: Tensor, base_eps: Tensor, sigma: Tensor, lam: float = 0.5,
                      frame_dim: int = 2) -> Tensor:
    """z^i_t − √λ^i·σ_t·b̂ for i ≠ ⌊N/2⌋ (key frame untouched) — VideoFusion Eq. 12, with σ_t = √(1−ᾱ_t)."""
    num_frames = z_t.shape[frame_dim]
    coeff = videofusion_lambdas(num_frames, lam).sqrt()
    coeff[videofusion_key_frame(num_frames)] = 0.0
    coeff = _along_frames(coeff, z_t.ndim, frame_dim).to(device=z_t.device, dtype=z_t.dtype)
    return z_t - coeff * expand_like(sigma, z_t) * base_eps.unsqueeze(frame_dim)


def combine_base_residual(base_eps: Tensor, residual_eps: Tensor, lam: float = 0.5,
                          frame_dim: int = 2) -> Tensor:
    """ε̂^i = √λ^i·b̂ + √(1−λ^i)·r̂^i, which is b̂ on the key frame (λ = 1) — VideoFusion Eq. 13."""
    lambdas = _along_frames(videofusion_lambdas(residual_eps.shape[frame_dim], lam), residual_eps.ndim,
                            frame_dim).to(device=residual_eps.device, dtype=residual_eps.dtype)
    return lambdas.sqrt() * base_eps.unsqueeze(frame_dim) + (1 - lambdas).sqrt() * residual_eps


def frame_indices(z_t: Tensor, frame_dim: int = 2) -> Tensor:
    """The 0-based frame index i of every frame, shaped ``(f,)`` — the i of VideoFusion's z_ψ(·, t, i)."""
    return torch.arange(z_t.shape[frame_dim], device=z_t.device)


def videofusion_eps(base_generator: Callable[[Tensor, Tensor], Tensor],
                    residual_generator: Callable[[Tensor, Tensor, Tensor], Tensor], z_t: Tensor, t: Tensor,
                    sigma: Tensor, lam: float = 0.5, frame_dim: int = 2, stop_base_gradient: bool = False):
    """(ε̂, b̂): base generator on the key frame, base removed (Eq. 12), residual generator, Eq. 13 — VideoFusion §3.3.

    ``base_generator(z_key, t)`` is an image ε-model on the key frame (frame axis removed);
    ``residual_generator(z, t, i)`` is z_ψ(z^i_t − √λ^i σ_t b̂, t, i): it sees the whole base-removed
    video and the ``(f,)`` frame indices i along ``frame_dim`` (VideoFusion §3.3, Eq. 13: "the residual
    generator is conditioned on the frame number i"). ``stop_base_gradient`` applies Eq. 14's [·]_sg to b̂
    wherever it enters a non-key frame.
    """
    key = videofusion_key_frame(z_t.shape[frame_dim])
    base_eps = base_generator(z_t.select(frame_dim, key), t)
    base_for_others = base_eps.detach() if stop_base_gradient else base_eps
    residual_eps = residual_generator(remove_base_noise(z_t, base_for_others, sigma, lam, frame_dim), t,
                                      frame_indices(z_t, frame_dim))
    eps = combine_base_residual(base_for_others, residual_eps, lam, frame_dim)
    # The key frame's ε̂ is b̂ itself and must keep its gradient (Eq. 14, first case).
    index = _along_frames(frame_indices(eps, frame_dim), eps.ndim, frame_dim)
    eps = torch.where(index == key, base_eps.unsqueeze(frame_dim).to(eps.dtype), eps)
    return eps, base_eps


def videofusion_denoiser(base_generator: Callable[[Tensor, Tensor], Tensor],
                         residual_generator: Callable[[Tensor, Tensor, Tensor], Tensor], schedule,
                         lam: float = 0.5, frame_dim: int = 2) -> Callable[[Tensor, Tensor], Tensor]:
    """An ε-prediction ``denoiser(z_t, t)`` for the samplers — VideoFusion Algorithm 1 / Fig. 4 (Eq. 12–13).

    Sample with ``noise_fn=partial(videofusion_noise, lam=lam, frame_dim=frame_dim)`` so that x_T and
    each step's noise are decomposed too, as Algorithm 1 does.
    """

    def denoiser(z_t: Tensor, t: Tensor) -> Tensor:
        return videofusion_eps(base_generator, residual_generator, z_t, t, schedule.sigma(t), lam, frame_dim)[0]

    return denoiser


def videofusion_loss(base_generator: Callable[[Tensor, Tensor], Tensor],
                     residual_generator: Callable[[Tensor, Tensor, Tensor], Tensor], z_t: Tensor, t: Tensor,
                     eps: Tensor, sigma: Tensor, lam: float = 0.5, frame_dim: int = 2) -> Tensor:
    """Per-sample ‖ε^i − ε̂^i‖² over all frames, b̂ stop-gradiented on non-key frames — VideoFusion Eq. 14.

    ``eps`` is the ``videofusion_noise`` that made z_t. Only the key-frame term trains the base
    generator; the residual generator gets the base-removed input of Eq. 12, as at sampling time.
    """
    eps_hat, _ = videofusion_eps(base_generator, residual_generator, z_t, t, sigma, lam, frame_dim,
                                 stop_base_gradient=True)
    return mse_per_sample(eps_hat.float(), eps.float())
