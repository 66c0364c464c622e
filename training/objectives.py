"""The stage objectives as short pure functions, in the papers' symbols (no modules, no I/O here).

    info_nce             symmetric InfoNCE with a CLIP-style log temperature (CoDi §3.2, CLIP)
    top1_retrieval       the fraction of rows whose nearest partner is their own pair
    l1_reconstruction    Σ|x − x̂| per example, and beta_vae_loss = mean(rec + β·KL) (LDM's autoencoder)
    condition_keep_mask  classifier-free condition dropout (CoDi §3.3, Ho & Salimans 2022)
    sample_condition     one condition modality per example among the paired ones (CoDi §3.3)
    compose_condition    the chosen condition of each example, or the null one where dropped
    diffusion_draw       everything random of a diffusion step (t, ε, z_t) drawn up front (CoDi Eq. 1)
    ssr_condition        low-res video upsampled to the target size (Imagen Video §2.5 / SR3)
    tsr_condition        low-frame-rate video brought to the target frame count (Imagen Video §2.5)

Every random draw takes an explicit ``torch.Generator`` so a task's ``batch_inputs`` can draw all of
a step's randomness at once and the loss stays a deterministic function of inputs and weights.
"""

from __future__ import annotations

import math
from typing import Literal, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from models.diffusion.config import DiffusionConfig, sample_noise
from models.diffusion.process import q_sample
from models.diffusion.schedules import sample_timesteps

LOGIT_SCALE_MAX = 100.0   # CLIP clamps its learned logit scale e^s at 100 (Radford et al. 2021, §2.5)
CLIP_INIT_TEMPERATURE = 0.07


def unit_rows(x: Tensor) -> Tensor:
    """Rows of ``(b, d)`` (or ``(b, 1, d)``, squeezed) scaled to unit L2 norm."""
    x = x.reshape(x.shape[0], -1).float()
    return x / x.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def logit_scale(log_scale: Tensor) -> Tensor:
    """e^s clamped to ≤ 100 (CLIP's clamp, written as a clamp of s so that it is differentiable below it)."""
    return log_scale.float().clamp(max=math.log(LOGIT_SCALE_MAX)).exp()


def info_nce(a: Tensor, b: Tensor, log_scale: Tensor) -> Tensor:
    """Symmetric InfoNCE of paired rows: ½[CE(e^s·â b̂ᵀ, I) + CE(e^s·b̂ âᵀ, I)] — CLIP Fig. 3, CoDi §3.2.

    Row i of ``a`` and row i of ``b`` are a pair; every other row in the batch is a negative.
    """
    logits = logit_scale(log_scale) * unit_rows(a) @ unit_rows(b).T
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


@torch.no_grad()
def top1_retrieval(a: Tensor, b: Tensor) -> float:
    """Share of rows i of ``a`` whose most cosine-similar row of ``b`` is row i (a → b retrieval)."""
    sims = unit_rows(a) @ unit_rows(b).T
    return float((sims.argmax(dim=1) == torch.arange(sims.shape[0], device=sims.device)).float().mean())


def l1_reconstruction(x: Tensor, reconstruction: Tensor) -> Tensor:
    """Σ|x − x̂| per example — LDM's autoencoder reconstruction term (summed, as its ``nll_loss``)."""
    return (x.float() - reconstruction.float()).abs().flatten(1).sum(1)


def beta_vae_loss(rec: Tensor, kl: Tensor, beta: float) -> Tensor:
    """mean_b(rec + β·KL(q(z|x) ‖ N(0, I))) — the β-VAE objective (LDM's autoencoder: β = 1e-6 on sums)."""
    return (rec.float() + beta * kl.float()).mean()


def condition_keep_mask(batch: int, drop_prob: float, generator: torch.Generator) -> Tensor:
    """(b,) bool: True keeps the example's condition, False replaces it by the null one (probability p)."""
    if not 0.0 <= drop_prob <= 1.0:
        raise ValueError(f"condition drop probability must lie in [0, 1], got {drop_prob}")
    return torch.rand(batch, generator=generator) >= drop_prob


def sample_condition(available: Tensor, weights: Sequence[float], generator: torch.Generator) -> Tensor:
    """(b,) index of one condition modality per example, drawn ∝ ``weights`` among its available ones.

    ``available`` is ``(b, M)`` bool (which of the M condition modalities each example is paired
    with); an example with none available is an error (nothing to condition on).
    """
    w = torch.as_tensor(list(weights), dtype=torch.float64)
    if available.ndim != 2 or available.shape[1] != w.numel():
        raise ValueError(f"available must be (batch, {w.numel()}) bool, got {tuple(available.shape)}")
    if bool((w < 0).any()) or not bool((w > 0).any()):
        raise ValueError(f"condition weights must be >= 0 with at least one > 0, got {list(weights)}")
    probs = available.to(torch.float64) * w
    empty = probs.sum(1) == 0
    if bool(empty.any()):
        raise ValueError(f"examples {empty.nonzero().flatten().tolist()} have no available condition modality")
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def compose_condition(candidates: Tensor, choice: Tensor, keep: Tensor, null: Tensor) -> Tensor:
    """c_i = candidates[choice_i, i] where kept, null[choice_i, i] where dropped.

    ``candidates`` and ``null`` are ``(M, b, n, d)``: every condition modality's embedding (and its
    null embedding) for every example.
    """
    rows = torch.arange(choice.shape[0], device=candidates.device)
    chosen, empty = candidates[choice, rows], null[choice, rows]
    return torch.where(keep.to(chosen.device).view(-1, *([1] * (chosen.ndim - 1))), chosen, empty)


def diffusion_draw(x0: Tensor, cfg: DiffusionConfig, schedule, generator: torch.Generator,
                   t: Optional[Tensor] = None) -> dict[str, Tensor]:
    """t ~ U, ε ~ the configured prior, z_t = α_t x0 + σ_t ε — CoDi Eq. 1 / Imagen Video Eq. 1.

    Returns ``x0, eps, t, alpha, sigma, z_t``; ``alpha``/``sigma`` are float32 ``(b,)``. Pass ``t`` to
    share one timestep between modalities generated jointly (CoDi §3.4).
    """
    device = x0.device
    if t is None:
        t = sample_timesteps(schedule, x0.shape[0], generator=generator).to(device)
    eps = sample_noise(cfg, x0.shape, generator=generator).to(device, x0.dtype)
    alpha, sigma = schedule.alpha(t).float().to(device), schedule.sigma(t).float().to(device)
    return {"x0": x0, "eps": eps, "t": t, "alpha": alpha, "sigma": sigma, "z_t": q_sample(x0, eps, alpha, sigma)}


def _per_frame_resize(video: Tensor, size: tuple[int, int], mode: str, antialias: bool) -> Tensor:
    b, c, f = video.shape[:3]
    frames = video.transpose(1, 2).flatten(0, 1).float()
    kwargs = {"align_corners": False, "antialias": antialias} if mode in ("bilinear", "bicubic") else {}
    out = F.interpolate(frames, size=size, mode=mode, **kwargs)
    return out.unflatten(0, (b, f)).transpose(1, 2).to(video.dtype)


def downsample_video(video: Tensor, factor: int) -> Tensor:
    """``(b, c, f, h, w)`` → ``(b, c, f, h/k, w/k)`` by antialiased bilinear resizing (Imagen Video §3's data processing)."""
    h, w = video.shape[-2:]
    if h % factor or w % factor:
        raise ValueError(f"video height and width {h}×{w} must divide by the SSR factor {factor}")
    return _per_frame_resize(video, (h // factor, w // factor), "bilinear", antialias=True)


def ssr_condition(low: Tensor, size: tuple[int, int], mode: Literal["bilinear", "nearest"] = "bilinear") -> Tensor:
    """The SSR conditioning: low-res ``(b, c, f, h, w)`` resized to ``size`` per frame — Imagen Video §2.5
    ("spatial upsampling before concatenation is performed using bilinear resizing")."""
    return _per_frame_resize(low, tuple(size), mode, antialias=False)


def skip_frames(video: Tensor, factor: int) -> Tensor:
    """Every ``factor``-th frame of ``(b, c, f, h, w)`` (Imagen Video §3: "temporally resize videos by skipping frames")."""
    if video.shape[2] % factor:
        raise ValueError(f"{video.shape[2]} frames do not divide by the TSR factor {factor}")
    return video[:, :, ::factor]


def tsr_condition(low: Tensor, factor: int, mode: Literal["repeat", "blank"] = "repeat") -> Tensor:
    """The TSR conditioning: ``(b, c, f, h, w)`` → ``(b, c, f·k, h, w)`` by repeating each frame k times or by
    filling the new frames with blanks (zeros) — Imagen Video §2.5 ("repeating frames or ... blank frames")."""
    if mode == "repeat":
        return low.repeat_interleave(factor, dim=2)
    if mode == "blank":
        out = torch.zeros(*low.shape[:2], low.shape[2] * factor, *low.shape[3:], dtype=low.dtype, device=low.device)
        out[:, :, ::factor] = low
        return out
    raise ValueError(f"TSR mode must be 'repeat' or 'blank', got {mode!r}")
