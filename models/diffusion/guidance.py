"""Classifier-free guidance, oscillating guidance, and x̂ clipping / dynamic thresholding.

Two conventions name the same line through the conditional and unconditional outputs:

* ``"imagen"``: x̃ = (1 + w)·x̂(z, c) − w·x̂(z), Imagen Video Eq. 5 (Ho & Salimans 2021); w = 0 is
  the plain conditional model. Imagen Video's numbers (constant 6, oscillating 15 / 1) are w's.
* ``"scale"``:  x̃ = s·x̂(z, c) + (1 − s)·x̂(z), the "guidance scale" of Stable Diffusion and CoDi's
  Table 12 (2.0 / 7.5 / 2.0); s = 1 is the plain conditional model. s = 1 + w.

Everything below ``Guidance`` — ``guide``, the samplers' per-step weights, distillation — takes
Imagen's w only. A user-facing strength is a ``Guidance``, which carries its convention, and
``Guidance.imagen_weights`` is the one place where a scale becomes a w: Imagen's (15, 1) read as
scales would be w = (14, 0), i.e. every low step unguided.

The combination is linear, so it is equally valid in x-, ε- or v-space (Imagen Video §2.6.1); it is
applied to whatever the model outputs.
"""

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional, Union

import torch
from torch import Tensor

from .process import Coeff, expand_like

GuidanceConvention = Literal["imagen", "scale"]
OSCILLATION_CONSTANT_FRACTION = 0.25  # default share of leading constant-high steps (the paper gives no number)


def guide(cond_out: Tensor, uncond_out: Tensor, w: Coeff) -> Tensor:
    """x̃ = (1 + w)·x̂(z, c) − w·x̂(z) with Imagen's guidance weight w — Imagen Video Eq. 5."""
    w = expand_like(w, cond_out)
    return (1 + w) * cond_out - w * uncond_out


def scale_from_imagen_weight(w: float) -> float:
    """s = 1 + w: Imagen Video's guidance strength as a CoDi / SD guidance scale."""
    return 1.0 + w


def imagen_weight_from_scale(s: float) -> float:
    """w = s − 1: a CoDi / SD guidance scale as Imagen Video's guidance strength (Eq. 5)."""
    return s - 1.0


def constant_guidance_weights(num_steps: int, weight: float) -> list:
    """The same guidance weight at every sampling step (Imagen Video Table 1, "constant=6")."""
    return [float(weight)] * num_steps


def default_constant_steps(num_steps: int) -> int:
    """⌈N/4⌉ leading high steps (at least 1): "a certain number of initial sampling steps" — Imagen Video §2.6.2."""
    return max(1, math.ceil(OSCILLATION_CONSTANT_FRACTION * num_steps))


def oscillating_guidance_weights(num_steps: int, high: float = 15.0, low: float = 1.0,
                                 num_constant_steps: Optional[int] = None) -> list:
    """High for the first k steps, then low, high, low, ... — oscillating guidance, Imagen Video §2.6.2.

    "a constant high guidance weight for a certain number of initial sampling steps, followed by
    oscillation between high and low": the sequence always starts high (k ≥ 1); k defaults to
    ``default_constant_steps(num_steps)``.
    """
    k = default_constant_steps(num_steps) if num_constant_steps is None else num_constant_steps
    if not 1 <= k <= num_steps:
        raise ValueError(f"num_constant_steps must lie in [1, {num_steps}] (the paper starts high), got {k}")
    return [float(high) if i < k or (i - k) % 2 == 1 else float(low) for i in range(num_steps)]


@dataclass(frozen=True)
class Guidance:
    """A classifier-free guidance setting in an explicit convention (``"imagen"`` w or ``"scale"`` s).

    ``weight`` alone is constant guidance; with ``low`` it is oscillating guidance between ``weight``
    (high) and ``low``, after ``num_constant_steps`` leading high steps (default ⌈N/4⌉) — Imagen
    Video §2.6.2. ``low`` is read in the same convention as ``weight``.
    """

    weight: float
    convention: GuidanceConvention
    low: Optional[float] = None
    num_constant_steps: Optional[int] = None

    def __post_init__(self):
        if self.convention not in ("imagen", "scale"):
            raise ValueError(f"guidance convention must be 'imagen' or 'scale', got {self.convention!r}")
        if self.low is None and self.num_constant_steps is not None:
            raise ValueError("num_constant_steps only applies to oscillating guidance (set low)")
        if self.num_constant_steps is not None and self.num_constant_steps < 1:
            raise ValueError("num_constant_steps must be >= 1 (oscillating guidance starts high)")

    def to_imagen(self, value: float) -> float:
        """``value`` of this convention as Imagen's w — the only scale → w conversion in codiray."""
        return float(value) if self.convention == "imagen" else imagen_weight_from_scale(value)

    def imagen_weights(self, num_steps: int) -> list:
        """One Imagen w per sampling step (what the samplers and ``guide`` take)."""
        if self.low is None:
            return constant_guidance_weights(num_steps, self.to_imagen(self.weight))
        return oscillating_guidance_weights(num_steps, self.to_imagen(self.weight), self.to_imagen(self.low),
                                            self.num_constant_steps)


def _batch_cond_uncond(cond: Any, uncond: Any, batch: int) -> Any:
    """Concatenate [cond; uncond] on the batch axis (tensors, or dicts / lists / tuples of them)."""
    if isinstance(cond, Tensor):
        if uncond.shape[0] == 1 and batch > 1:  # one shared "empty prompt" embedding
            uncond = uncond.expand(batch, *uncond.shape[1:])
        return torch.cat([cond, uncond.to(cond.dtype)])
    if isinstance(cond, dict):
        return {k: _batch_cond_uncond(cond[k], uncond[k], batch) for k in cond}
    if isinstance(cond, (list, tuple)):
        return type(cond)(_batch_cond_uncond(c, u, batch) for c, u in zip(cond, uncond))
    raise TypeError(f"unsupported context type {type(cond).__name__}")


def classifier_free_guidance(model: Callable[[Tensor, Tensor, Any], Tensor], z_t: Tensor, t: Tensor,
                             cond: Any, uncond: Any, w: Coeff) -> Tensor:
    """Guided output from ONE batched forward on [cond; uncond] — Imagen Video Eq. 5 (Ho & Salimans 2021).

    ``model(z, t, context)``; ``uncond`` has the same shape as ``cond`` except the batch, which may be 1.
    ``w`` is Imagen's weight, a float or a per-sample ``(b,)`` tensor.
    """
    batch = z_t.shape[0]
    t = torch.as_tensor(t, device=z_t.device)
    if t.ndim == 0:
        t = t.expand(batch)
    out = model(torch.cat([z_t, z_t]), torch.cat([t, t]), _batch_cond_uncond(cond, uncond, batch))
    cond_out, uncond_out = out.chunk(2)
    return guide(cond_out, uncond_out, w)


def guided_denoiser(model: Callable[[Tensor, Tensor, Any], Tensor], cond: Any, uncond: Any,
                    w: Optional[float] = None) -> Callable[..., Tensor]:
    """A sampler-ready ``denoiser(z_t, t, w=None)`` applying CFG with per-step Imagen weight ``w`` (else the default)."""
    default = w

    def denoiser(z_t: Tensor, t: Tensor, w: Optional[Coeff] = None) -> Tensor:
        w = default if w is None else w
        if w is None:
            raise ValueError("no guidance weight: pass w= or per-step guidance_weights to the sampler")
        return classifier_free_guidance(model, z_t, t, cond, uncond, w)

    return denoiser


def static_clip(x0: Tensor) -> Tensor:
    """np.clip(x, −1, 1): static clipping of x̂ to the pixel range — Imagen Video §2.6.2."""
    return x0.clamp(-1.0, 1.0)


def threshold(x0: Tensor, s: Coeff) -> Tensor:
    """np.clip(x, −s, s) / s — dynamic clipping with threshold s, Imagen Video §2.6.2 (Saharia et al. 2022b)."""
    s = expand_like(s, x0)
    return torch.maximum(torch.minimum(x0, s), -s) / s


def dynamic_threshold(x0: Tensor, percentile: float = 0.995) -> Tensor:
    """s = max(p-th percentile of |x̂| per sample, 1), then clip(x̂, −s, s)/s — Imagen (Saharia et al. 2022b) §2.3.

    The percentile is the nearest-rank one (``kthvalue``), which, unlike ``torch.quantile``, has no
    input-size limit for full-resolution videos.
    """
    if not 0.0 < percentile <= 1.0:
        raise ValueError("percentile must lie in (0, 1]")
    flat = x0.detach().abs().flatten(1).float()
    k = max(1, math.ceil(percentile * flat.shape[1]))
    s = flat.kthvalue(k, dim=1).values.clamp(min=1.0)  # s ≥ 1: never *expand* x̂ beyond [−1, 1]
    return threshold(x0, s)


@dataclass(frozen=True)
class DynamicThreshold:
    """Sampler ``clip_x0`` spec for dynamic thresholding at ``percentile`` p (Imagen uses p = 0.995)."""

    percentile: float = 0.995

    def __call__(self, x0: Tensor) -> Tensor:
        return dynamic_threshold(x0, self.percentile)


ClipSpec = Union[None, Literal["static"], Callable[[Tensor], Tensor]]


def resolve_clip(clip_x0: ClipSpec) -> Optional[Callable[[Tensor], Tensor]]:
    """None → no clipping; "static" → ``static_clip``; a callable (e.g. ``DynamicThreshold()``) as is."""
    if clip_x0 is None:
        return None
    if isinstance(clip_x0, str) and clip_x0 == "static":
        return static_clip
    if callable(clip_x0):
        return clip_x0
    raise ValueError(f"clip_x0 must be None, 'static' or a callable, got {clip_x0!r}")
