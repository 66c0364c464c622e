"""ε-, x₀- and v-parameterizations of the denoiser and the exact conversions between them.

With z_t = α_t x + σ_t ε and α_t² + σ_t² = 1 (every schedule here is variance preserving), any one of
(x, ε, v) together with z_t determines the other two. ``alpha``/``sigma`` are signal/noise scales
(α_t = √ᾱ_t), as scalars, ``(b,)`` tensors or data-shaped tensors.
"""

from typing import Literal, Tuple

from torch import Tensor

from .process import Coeff, expand_like

Prediction = Literal["eps", "x0", "v"]
PREDICTIONS = ("eps", "x0", "v")


def eps_from_x0(z_t: Tensor, x0: Tensor, alpha: Coeff, sigma: Coeff) -> Tensor:
    """ε̂ = σ_t⁻¹(z_t − α_t x̂) — Imagen Video §2.1 (below Eq. 2)."""
    return (z_t - expand_like(alpha, z_t) * x0) / expand_like(sigma, z_t)


def x0_from_eps(z_t: Tensor, eps: Tensor, alpha: Coeff, sigma: Coeff) -> Tensor:
    """x̂ = α_t⁻¹(z_t − σ_t ε̂), the inverse of Imagen Video §2.1's ε̂ definition (DDPM Eq. 15)."""
    return (z_t - expand_like(sigma, z_t) * eps) / expand_like(alpha, z_t)


def v_from_x0_eps(x0: Tensor, eps: Tensor, alpha: Coeff, sigma: Coeff) -> Tensor:
    """v_t ≡ α_t ε − σ_t x — Imagen Video §2.4 (Salimans & Ho 2022)."""
    return expand_like(alpha, eps) * eps - expand_like(sigma, x0) * x0


def x0_from_v(z_t: Tensor, v: Tensor, alpha: Coeff, sigma: Coeff) -> Tensor:
    """x̂ = α_t z_t − σ_t v̂ (α_t² + σ_t² = 1) — Salimans & Ho (2022) §4."""
    return expand_like(alpha, z_t) * z_t - expand_like(sigma, z_t) * v


def eps_from_v(z_t: Tensor, v: Tensor, alpha: Coeff, sigma: Coeff) -> Tensor:
    """ε̂ = σ_t z_t + α_t v̂ (α_t² + σ_t² = 1) — Salimans & Ho (2022) §4 (inverting v ≡ α ε − σ x)."""
    return expand_like(sigma, z_t) * z_t + expand_like(alpha, z_t) * v


def check_prediction(prediction: str) -> None:
    """Raise on a parameterization name other than eps / x0 / v."""
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")


def to_x0_eps(model_output: Tensor, z_t: Tensor, alpha: Coeff, sigma: Coeff,
              prediction: Prediction) -> Tuple[Tensor, Tensor]:
    """(x̂, ε̂) from a model output in the ``prediction`` parameterization — Imagen Video §2.1, §2.4."""
    check_prediction(prediction)
    if prediction == "eps":
        return x0_from_eps(z_t, model_output, alpha, sigma), model_output
    if prediction == "x0":
        return model_output, eps_from_x0(z_t, model_output, alpha, sigma)
    return x0_from_v(z_t, model_output, alpha, sigma), eps_from_v(z_t, model_output, alpha, sigma)


def from_x0_eps(x0: Tensor, eps: Tensor, alpha: Coeff, sigma: Coeff, prediction: Prediction) -> Tensor:
    """The ``prediction``-space quantity (ε, x or v) of a pair (x, ε): the training target / model output."""
    check_prediction(prediction)
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    return v_from_x0_eps(x0, eps, alpha, sigma)


def convert_prediction(model_output: Tensor, z_t: Tensor, alpha: Coeff, sigma: Coeff,
                       source: Prediction, target: Prediction) -> Tensor:
    """Re-express a model output from the ``source`` parameterization in the ``target`` one (exact)."""
    x0, eps = to_x0_eps(model_output, z_t, alpha, sigma, source)
    return from_x0_eps(x0, eps, alpha, sigma, target)
