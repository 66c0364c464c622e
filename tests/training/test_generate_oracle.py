"""Generation wiring, proved with an oracle model whose answer is known in closed form.

The data are Gaussian, x ~ N(μ(c), s² I) per pixel, with μ read from the context (μ_c for the
prompt, μ_u for the empty prompt). The exact denoiser is then affine in z_t:
x̂ = μ + k_t (z_t − α_t μ), k_t = α_t s² / v_t, v_t = α_t² s² + σ_t², and a DDIM step (Eq. 12, with
σ_η of Eq. 16) maps z_t − α_t μ to a_t·(z_t − α_t μ) + σ_η ξ with a_t = (α_s α_t s² + √(σ_s² − σ_η²) σ_t)/v_t.
Guidance is linear, so the guided x̂ is the same affine map around μ_g = (1 + w) μ_c − w μ_u.
The tests run the oracle through ``sample_x0`` — the function `codiray generate` samples with —
and compare against these scalar recursions, with α_t, σ_t computed here from the schedules'
formulas (not from the code under test) and the timesteps written out by hand.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from models.diffusion import DiffusionConfig, from_x0_eps, Guidance, SamplingConfig
from training.generate import sample_x0

S = 0.1                   # data std per pixel
MU_C, MU_U = 0.30, 0.28   # conditional / unconditional data means (μ_g stays inside [−1, 1] for w ≤ 15)
TRAILING_4 = [999, 749, 499, 249]
LEADING_4 = [751, 501, 251, 1]


def alpha_sigma(diffusion: DiffusionConfig, t) -> tuple[float, float]:
    """(α_t, σ_t) from the schedule's defining formula: SD's scaled-linear β, or Imagen Video's cosine λ_t."""
    if diffusion.schedule == "cosine":
        b = math.atan(math.exp(-0.5 * diffusion.cosine_logsnr_max))
        a = math.atan(math.exp(-0.5 * diffusion.cosine_logsnr_min)) - b
        lam = -2 * math.log(math.tan(a * t + b))
        return math.sqrt(1 / (1 + math.exp(-lam))), math.sqrt(1 / (1 + math.exp(lam)))
    assert diffusion.schedule == "scaled_linear"
    betas = np.linspace(diffusion.beta_start**0.5, diffusion.beta_end**0.5, diffusion.num_timesteps) ** 2
    abar = float(np.prod(1 - betas[: t + 1]))
    return math.sqrt(abar), math.sqrt(1 - abar)


class GaussianOracle(nn.Module):
    """model(z_t, t, context): the exact E[x | z_t] for x ~ N(context[:, 0, 0], S²), answered as ε, x₀ or v."""

    def __init__(self, diffusion: DiffusionConfig, answers_as: str):
        super().__init__()
        self.diffusion, self.answers_as = diffusion, answers_as
        self.calls: list[tuple[list, list]] = []  # (t, μ) per call: which timesteps and which contexts were used

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        mu = context[:, 0, 0].double()
        self.calls.append((t.tolist(), mu.tolist()))
        coeffs = [alpha_sigma(self.diffusion, ti) for ti in t.tolist()]
        alpha = torch.tensor([c[0] for c in coeffs], dtype=torch.float64)
        sigma = torch.tensor([c[1] for c in coeffs], dtype=torch.float64)
        view = (-1, 1, 1, 1)
        k = alpha * S**2 / (alpha**2 * S**2 + sigma**2)
        z = z_t.double()
        x0 = mu.view(view) + k.view(view) * (z - (alpha * mu).view(view))
        eps = (z - alpha.view(view) * x0) / sigma.view(view)
        return from_x0_eps(x0, eps, alpha, sigma, self.answers_as).to(z_t.dtype)


def contexts(batch: int = 2):
    """Prompt and empty-prompt contexts carrying μ_c and μ_u (shape like the text encoder's states)."""
    return torch.full((batch, 4, 8), MU_C), torch.full((1, 4, 8), MU_U)


def closed_form(diffusion: DiffusionConfig, timesteps: list, imagen_w: list, eta: float) -> tuple[float, float]:
    """Mean and variance per pixel of DDIM's result from x_T ~ N(0, I), by the affine recursion above."""
    mean, var = 0.0, 1.0
    for i, t in enumerate(timesteps):
        a_t, s_t = alpha_sigma(diffusion, t)
        a_s, s_s = alpha_sigma(diffusion, timesteps[i + 1]) if i + 1 < len(timesteps) else (1.0, 0.0)
        mu = (1 + imagen_w[i]) * MU_C - imagen_w[i] * MU_U
        v_t = a_t**2 * S**2 + s_t**2
        sigma_eta2 = eta**2 * (s_s**2 / s_t**2) * (1 - a_t**2 / a_s**2)  # DDIM Eq. 16
        gain = (a_s * a_t * S**2 + math.sqrt(max(s_s**2 - sigma_eta2, 0.0)) * s_t) / v_t
        mean = a_s * mu + gain * (mean - a_t * mu)
        var = gain**2 * var + sigma_eta2
    return mean, var


def deterministic(diffusion, timesteps, imagen_w, x_T):
    """The η = 0 result for a given x_T: the same recursion applied to x_T itself (var = 0 at the start)."""
    z = x_T.double()
    for i, t in enumerate(timesteps):
        a_t, s_t = alpha_sigma(diffusion, t)
        a_s, s_s = alpha_sigma(diffusion, timesteps[i + 1]) if i + 1 < len(timesteps) else (1.0, 0.0)
        mu = (1 + imagen_w[i]) * MU_C - imagen_w[i] * MU_U
        gain = (a_s * a_t * S**2 + s_s * s_t) / (a_t**2 * S**2 + s_t**2)
        z = a_s * mu + gain * (z - a_t * mu)
    return z


def first_draw(shape, seed):
    """x_T: the first draw of the generator seeded with ``sampling.seed`` (documented in ``sample_x0``)."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


SHAPE = (2, 3, 8, 8)
CASES = [("scaled_linear", "eps"), ("scaled_linear", "x0"), ("scaled_linear", "v"), ("cosine", "v"), ("cosine", "x0")]


@pytest.mark.parametrize("schedule,prediction", CASES)
def test_eta0_result_equals_the_closed_form(schedule, prediction):
    diffusion = DiffusionConfig(schedule=schedule, prediction=prediction)
    oracle = GaussianOracle(diffusion, answers_as=prediction)
    sampling = SamplingConfig(steps=4, eta=0.0, guidance=Guidance(3.0, "scale"), clip_x0="none", seed=5)
    out = sample_x0(oracle, *contexts(), SHAPE, diffusion, sampling)
    timesteps = TRAILING_4 if schedule == "scaled_linear" else [1.0, 0.75, 0.5, 0.25]
    expected = deterministic(diffusion, timesteps, [2.0] * 4, first_draw(SHAPE, 5))  # s = 3 is w = 2
    assert torch.allclose(out.double(), expected, atol=1e-4), (out.double() - expected).abs().max()
    # One batched [cond; uncond] call per step, at the listed timesteps, cond rows first.
    assert [c[0][0] for c in oracle.calls] == pytest.approx(timesteps)
    assert all(c[1] == pytest.approx([MU_C] * 2 + [MU_U] * 2) for c in oracle.calls)


def test_a_v_model_sampled_as_eps_fails_the_closed_form():
    trained = DiffusionConfig(prediction="v")
    sampling = SamplingConfig(steps=4, eta=0.0, guidance=Guidance(3.0, "scale"), clip_x0="none", seed=5)
    expected = deterministic(trained, TRAILING_4, [2.0] * 4, first_draw(SHAPE, 5))
    right = sample_x0(GaussianOracle(trained, "v"), *contexts(), SHAPE, trained, sampling)
    wrong = sample_x0(GaussianOracle(trained, "v"), *contexts(), SHAPE, DiffusionConfig(prediction="eps"), sampling)
    assert torch.allclose(right.double(), expected, atol=1e-4)
    assert (wrong.double() - expected).abs().mean() > 0.1


@pytest.mark.parametrize("guidance,imagen_w", [
    (Guidance(3.0, "scale"), [2.0] * 4),
    (Guidance(2.0, "imagen"), [2.0] * 4),
    (Guidance(1.0, "scale"), [0.0] * 4),                        # s = 1: the plain conditional model
    (Guidance(15.0, "imagen", low=1.0), [15.0, 1.0, 15.0, 1.0]),  # Imagen Video's oscillation, starting high
    (Guidance(16.0, "scale", low=2.0, num_constant_steps=2), [15.0, 15.0, 1.0, 15.0]),
])
def test_guidance_direction_and_weight(guidance, imagen_w):
    diffusion = DiffusionConfig(prediction="v")
    sampling = SamplingConfig(steps=4, eta=0.0, guidance=guidance, clip_x0="none", seed=1)
    out = sample_x0(GaussianOracle(diffusion, "v"), *contexts(), SHAPE, diffusion, sampling).double()
    x_T = first_draw(SHAPE, 1)
    assert torch.allclose(out, deterministic(diffusion, TRAILING_4, imagen_w, x_T), atol=1e-4)
    if any(imagen_w):
        # Swapping the two branches (guiding away from the prompt) lands elsewhere: the check has teeth.
        swapped = [-1 - w for w in imagen_w]  # (1+w)u − w c  ==  (1+w')c − w'u with w' = −1 − w
        assert (out - deterministic(diffusion, TRAILING_4, swapped, x_T)).abs().mean() > 0.05


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("spacing,timesteps", [("trailing", TRAILING_4), ("leading", LEADING_4)])
def test_eta_and_spacing_give_the_closed_form_distribution(eta, spacing, timesteps):
    diffusion = DiffusionConfig(prediction="eps")
    oracle = GaussianOracle(diffusion, "eps")
    sampling = SamplingConfig(steps=4, eta=eta, spacing=spacing, guidance=Guidance(2.0, "scale"), clip_x0="none")
    shape = (2, 4, 64, 64)  # 16384 i.i.d. pixels per prompt
    out = sample_x0(oracle, *contexts(), shape, diffusion, sampling).double()
    assert [c[0][0] for c in oracle.calls] == timesteps
    mean, var = closed_form(diffusion, timesteps, [1.0] * 4, eta)
    n = out.numel()
    assert out.mean().item() == pytest.approx(mean, abs=5 * math.sqrt(var / n))
    assert out.var().item() == pytest.approx(var, rel=5 * math.sqrt(2 / n))
    # η = 0 is the deterministic map of x_T; η = 1 adds fresh noise every step (same x_T, other result).
    gap = (out - deterministic(diffusion, timesteps, [1.0] * 4, first_draw(shape, 0))).abs().mean().item()
    assert gap < 1e-5 if eta == 0 else gap > 1e-3, gap


def test_seed_determinism():
    diffusion = DiffusionConfig(prediction="v")
    oracle = GaussianOracle(diffusion, "v")
    runs = {seed: sample_x0(oracle, *contexts(), SHAPE, diffusion, SamplingConfig(steps=4, eta=1.0, seed=seed))
            for seed in (3, 3, 4)}
    again = sample_x0(oracle, *contexts(), SHAPE, diffusion, SamplingConfig(steps=4, eta=1.0, seed=3))
    assert torch.equal(runs[3], again)
    assert not torch.allclose(runs[3], runs[4])


def test_static_clipping_for_pixel_models_and_none_for_latent_ones():
    # μ_g = 3·0.9 − 2·0.2 = 2.3 lies outside [−1, 1]: clipping x̂ caps the result, not clipping reaches it.
    global MU_C, MU_U
    saved = MU_C, MU_U
    MU_C, MU_U = 0.9, 0.2
    try:
        sampling = SamplingConfig(steps=4, eta=0.0, guidance=Guidance(3.0, "scale"), clip_x0="auto")
        pixel = DiffusionConfig(prediction="v")
        latent = DiffusionConfig(prediction="v", data_space="latent")
        clipped = sample_x0(GaussianOracle(pixel, "v"), *contexts(), SHAPE, pixel, sampling)
        free = sample_x0(GaussianOracle(latent, "v"), *contexts(), SHAPE, latent, sampling)
    finally:
        MU_C, MU_U = saved
    assert clipped.max().item() <= 1.0 + 1e-6
    assert free.mean().item() == pytest.approx(2.3, abs=0.05)
