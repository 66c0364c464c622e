"""Samplers: oracle denoisers recover x₀, DDIM η = 0 is deterministic, DDPM matches q(z_{t−1} | z_t, x₀)."""

import math

import pytest
import torch

from models.diffusion import (PREDICTIONS, CosineSchedule, DiscreteSchedule, DynamicThreshold,
                              ancestral_variance, continuous_timesteps, ddim_sample, ddim_timesteps,
                              ddpm_sample, from_x0_eps, q_posterior_mean, q_posterior_variance,
                              scaled_linear_betas, transition_variance)

DISCRETE = DiscreteSchedule(scaled_linear_betas(1000, 0.00085, 0.012))
COSINE = CosineSchedule()


def oracle(x0, schedule, prediction):
    """A denoiser that knows x₀ and answers in ``prediction`` space (ignores any guidance weight)."""

    def denoiser(z_t, t, w=None):
        shape = (-1,) + (1,) * (z_t.ndim - 1)
        alpha, sigma = schedule.alpha(t), schedule.sigma(t)
        eps = (z_t.double() - alpha.view(shape) * x0.double()) / sigma.view(shape)
        return from_x0_eps(x0.double(), eps, alpha, sigma, prediction).to(z_t.dtype)

    return denoiser


def toy_denoiser(z_t, t, w=None):
    """An arbitrary smooth non-oracle network stand-in."""
    return 0.3 * z_t + torch.tanh(z_t).flip(-1)


def _x0_and_noise(shape=(2, 3, 4, 6, 6), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) * 2 - 1, torch.randn(shape, generator=g)


SAMPLERS = {
    "ddim_eta0": lambda d, x, s, ts, p, g: ddim_sample(d, x, s, ts, eta=0.0, prediction=p, generator=g),
    "ddim_eta1": lambda d, x, s, ts, p, g: ddim_sample(d, x, s, ts, eta=1.0, prediction=p, generator=g),
    "ddpm_gamma0": lambda d, x, s, ts, p, g: ddpm_sample(d, x, s, ts, gamma=0.0, prediction=p, generator=g),
    "ddpm_gamma1": lambda d, x, s, ts, p, g: ddpm_sample(d, x, s, ts, gamma=1.0, prediction=p, generator=g),
    "imagen_gamma0.3": lambda d, x, s, ts, p, g: ddpm_sample(d, x, s, ts, gamma=0.3, prediction=p, generator=g),
}


@pytest.mark.parametrize("sampler", list(SAMPLERS))
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("schedule,timesteps", [(DISCRETE, ddim_timesteps(1000, 10)),
                                                (COSINE, continuous_timesteps(10))], ids=["discrete", "cosine"])
def test_every_sampler_returns_x0_with_an_oracle(sampler, prediction, schedule, timesteps):
    x0, x_T = _x0_and_noise()
    out = SAMPLERS[sampler](oracle(x0, schedule, prediction), x_T, schedule, timesteps, prediction,
                            torch.Generator().manual_seed(1))
    assert out.shape == x0.shape
    assert torch.allclose(out, x0, atol=1e-5)


def test_full_ddpm_chain_returns_x0_with_an_oracle():
    x0, x_T = _x0_and_noise(shape=(2, 1, 8))
    out = ddpm_sample(oracle(x0, DISCRETE, "eps"), x_T, DISCRETE, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, x0, atol=1e-5)


def test_ddim_eta0_is_deterministic_and_eta1_is_not():
    _, x_T = _x0_and_noise()
    steps = ddim_timesteps(1000, 8)
    runs = [ddim_sample(toy_denoiser, x_T, DISCRETE, steps, eta=0.0, generator=torch.Generator().manual_seed(s))
            for s in (0, 1)]
    assert torch.equal(runs[0], runs[1])
    noisy = [ddim_sample(toy_denoiser, x_T, DISCRETE, steps, eta=1.0, generator=torch.Generator().manual_seed(s))
             for s in (0, 1)]
    assert not torch.allclose(noisy[0], noisy[1])


def test_ddim_eta1_equals_ddpm_gamma0():
    # DDIM Eq. 16 with η = 1 is exactly the DDPM posterior; same noise draws ⇒ same chain.
    _, x_T = _x0_and_noise()
    steps = ddim_timesteps(1000, 8)
    a = ddim_sample(toy_denoiser, x_T, DISCRETE, steps, eta=1.0, generator=torch.Generator().manual_seed(7))
    b = ddpm_sample(toy_denoiser, x_T, DISCRETE, steps, gamma=0.0, generator=torch.Generator().manual_seed(7))
    assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("t", [0, 1, 17, 500, 999])
def test_posterior_matches_ddpm_eq7(t):
    betas = DISCRETE.betas
    abar = torch.cumprod(1 - betas, 0)
    abar_t, abar_prev = abar[t], (abar[t - 1] if t > 0 else torch.tensor(1.0, dtype=torch.float64))
    g = torch.Generator().manual_seed(t)
    x0, z_t = torch.randn(4, 8, generator=g, dtype=torch.float64), torch.randn(4, 8, generator=g, dtype=torch.float64)
    # DDPM (Ho et al. 2020) Eq. 7 written with β, ᾱ.
    mean = (abar_prev.sqrt() * betas[t] / (1 - abar_t)) * x0 \
        + ((1 - betas[t]).sqrt() * (1 - abar_prev) / (1 - abar_t)) * z_t
    var = (1 - abar_prev) / (1 - abar_t) * betas[t]
    args = (DISCRETE.alpha(t - 1), DISCRETE.sigma(t - 1), DISCRETE.alpha(t), DISCRETE.sigma(t))
    assert torch.allclose(q_posterior_mean(z_t, x0, *args), mean, atol=1e-12)
    assert q_posterior_variance(*args).item() == pytest.approx(var.item(), rel=1e-10, abs=1e-300)
    assert transition_variance(*args).item() == pytest.approx(betas[t].item(), rel=1e-9)


@pytest.mark.parametrize("s,t", [(0.2, 0.5), (0.5, 0.55), (0.05, 0.9)])
def test_posterior_matches_gaussian_conditioning_for_strided_steps(s, t):
    # Brute force: z_s = α_s x + σ_s ε₁, z_t = (α_t/α_s) z_s + σ_{t|s} ε₂; condition z_s on z_t.
    a_s, s_s, a_t, s_t = COSINE.alpha(s), COSINE.sigma(s), COSINE.alpha(t), COSINE.sigma(t)
    a = a_t / a_s
    cov, var_t = a * s_s**2, s_t**2
    x0, z_t = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    mean = a_s * x0 + cov / var_t * (z_t - a_t * x0)
    var = s_s**2 - cov**2 / var_t
    assert torch.allclose(q_posterior_mean(z_t, x0, a_s, s_s, a_t, s_t), mean, atol=1e-12)
    assert q_posterior_variance(a_s, s_s, a_t, s_t).item() == pytest.approx(var.item(), rel=1e-10)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0])
def test_ancestral_step_moments_match_eq3_eq4(gamma):
    """One sampler step from z_t, many draws: empirical mean/var vs μ̃ and (σ̃²)^{1−γ}(σ²_{t|s})^γ."""
    n = 200_000
    t, s = 600, 400
    x0 = torch.full((1, n), 0.7)
    z_t = torch.full((1, n), -0.3)
    seen = []

    def recording_oracle(z, tt, w=None):
        seen.append(z.clone())
        return oracle(x0, DISCRETE, "eps")(z, tt)

    ddpm_sample(recording_oracle, z_t, DISCRETE, [t, s], gamma=gamma, generator=torch.Generator().manual_seed(0))
    z_s = seen[1].double()
    args = (DISCRETE.alpha(s), DISCRETE.sigma(s), DISCRETE.alpha(t), DISCRETE.sigma(t))
    mean = q_posterior_mean(z_t.double(), x0.double(), *args)[0, 0].item()
    var = ancestral_variance(*args, gamma).item()
    # 5 standard errors: SE(mean) = √(var/n), SE(var) ≈ var·√(2/n).
    assert z_s.mean().item() == pytest.approx(mean, abs=5 * math.sqrt(var / n))
    assert z_s.var().item() == pytest.approx(var, abs=5 * var * math.sqrt(2 / n))
    if gamma == 1.0:
        assert var == pytest.approx(transition_variance(*args).item(), rel=1e-12)


def test_guidance_weights_reach_the_denoiser_in_order():
    seen = []

    def denoiser(z, t, w):
        seen.append(w)
        return torch.zeros_like(z)

    weights = [15.0, 15.0, 1.0, 15.0, 1.0]
    _, x_T = _x0_and_noise()
    ddim_sample(denoiser, x_T, DISCRETE, ddim_timesteps(1000, 5), guidance_weights=weights)
    assert seen == weights
    with pytest.raises(ValueError):
        ddim_sample(denoiser, x_T, DISCRETE, ddim_timesteps(1000, 5), guidance_weights=weights[:2])


@pytest.mark.parametrize("clip", ["static", DynamicThreshold(0.9)])
def test_clipping_keeps_the_sample_in_range(clip):
    x_far = torch.full((2, 3, 4, 4), 3.0)
    x_far[:, 0] = -5.0
    _, x_T = _x0_and_noise(shape=(2, 3, 4, 4))
    for sample in (ddim_sample, ddpm_sample):
        out = sample(oracle(x_far, DISCRETE, "x0"), x_T, DISCRETE, ddim_timesteps(1000, 6), prediction="x0",
                     clip_x0=clip, generator=torch.Generator().manual_seed(0))
        assert float(out.abs().max()) <= 1.0 + 1e-6


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_ddim_eta0_with_an_oracle_stays_on_the_noise_ray(prediction):
    """Every intermediate z_s of deterministic DDIM (Eq. 12, η = 0) fed the true x₀ is exactly
    α_s·x₀ + σ_s·ε for the ε that made z_T: the update itself, not only the last step, is checked."""
    x0, eps = _x0_and_noise(shape=(2, 3, 5))
    steps = ddim_timesteps(1000, 7, "trailing")
    t0 = torch.tensor(steps[0])
    x_T = DISCRETE.alpha(t0).float() * x0 + DISCRETE.sigma(t0).float() * eps
    seen, inner = [], oracle(x0, DISCRETE, prediction)

    def recording(z_t, t, w=None):
        seen.append((int(t[0]), z_t.clone()))
        return inner(z_t, t, w)

    ddim_sample(recording, x_T, DISCRETE, steps, eta=0.0, prediction=prediction)
    assert [t for t, _ in seen] == steps
    for t, z in seen:
        tt = torch.tensor(t)
        expected = DISCRETE.alpha(tt).float() * x0 + DISCRETE.sigma(tt).float() * eps
        assert torch.allclose(z, expected, atol=1e-5), t
