"""Schedules against their closed forms: β endpoints, ᾱ products, monotonicity, cosine λ_t."""

import math

import numpy as np
import pytest
import torch

from models.diffusion import (CosineSchedule, DiscreteSchedule, continuous_timesteps, ddim_timesteps,
                              linear_betas, sample_timesteps, sampling_timesteps, scaled_linear_betas)

CODI = dict(num_timesteps=1000, beta_start=0.00085, beta_end=0.012)  # CoDi Table 12


def test_linear_betas_are_codi_endpoints_evenly_spaced():
    betas = linear_betas(**CODI)
    assert betas.shape == (1000,)
    assert betas[0].item() == pytest.approx(0.00085, abs=1e-15)
    assert betas[-1].item() == pytest.approx(0.012, abs=1e-15)
    assert torch.allclose(betas.diff(), torch.full((999,), (0.012 - 0.00085) / 999, dtype=torch.float64))


def test_scaled_linear_betas_are_squares_of_linear_sqrt():
    betas = scaled_linear_betas(**CODI)
    assert betas[0].item() == pytest.approx(0.00085, rel=1e-12)
    assert betas[-1].item() == pytest.approx(0.012, rel=1e-12)
    step = (0.012**0.5 - 0.00085**0.5) / 999
    assert torch.allclose(betas.sqrt().diff(), torch.full((999,), step, dtype=torch.float64))


@pytest.mark.parametrize("make_betas", [linear_betas, scaled_linear_betas])
def test_discrete_schedule_values_at_known_t(make_betas):
    betas = make_betas(**CODI)
    sched = DiscreteSchedule(betas)
    b = betas.numpy()
    for t in (0, 1, 10, 499, 999):
        alpha_bar = float(np.prod(1.0 - b[: t + 1]))  # brute-force ᾱ_t = Π_{s≤t}(1 − β_s)
        assert sched.alpha_bar(t).item() == pytest.approx(alpha_bar, rel=1e-12)
        assert sched.alpha(t).item() == pytest.approx(math.sqrt(alpha_bar), rel=1e-12)
        assert sched.sigma(t).item() == pytest.approx(math.sqrt(1 - alpha_bar), rel=1e-12)
        assert sched.log_snr(t).item() == pytest.approx(math.log(alpha_bar / (1 - alpha_bar)), rel=1e-10)
        assert sched.step_alpha(t).item() == pytest.approx(1 - b[t], rel=1e-15)
    assert sched.alpha_bar(0).item() == pytest.approx(1 - 0.00085, rel=1e-12)


def test_stable_diffusion_terminal_alpha_bar():
    # Lin et al. (2024) report √ᾱ_T = 0.068265 for Stable Diffusion's schedule (scaled linear 0.00085 → 0.012).
    sched = DiscreteSchedule(scaled_linear_betas(**CODI))
    assert sched.alpha(999).item() == pytest.approx(0.068265, abs=5e-7)


@pytest.mark.parametrize("make_betas", [linear_betas, scaled_linear_betas])
def test_alpha_bar_monotone_and_consistent(make_betas):
    sched = DiscreteSchedule(make_betas(**CODI))
    t = torch.arange(-1, 1000)
    a = sched.alpha_bar(t)
    assert a[0].item() == 1.0 and sched.sigma(-1).item() == 0.0  # t = −1 is clean data
    assert bool((a.diff() < 0).all())
    assert bool((sched.log_snr(torch.arange(1000)).diff() < 0).all())
    assert torch.allclose(sched.alpha(t) ** 2 + sched.sigma(t) ** 2, torch.ones_like(a), atol=1e-15)


def test_discrete_schedule_rejects_float_and_out_of_range_t():
    sched = DiscreteSchedule(linear_betas(**CODI))
    with pytest.raises(TypeError):
        sched.alpha_bar(torch.tensor([0.5]))
    with pytest.raises(IndexError):
        sched.alpha_bar(1000)


def test_cosine_log_snr_matches_formula():
    sched = CosineSchedule(logsnr_min=-20.0, logsnr_max=20.0)
    b = math.atan(math.exp(-0.5 * 20.0))
    a = math.atan(math.exp(-0.5 * -20.0)) - b
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    expected = -2 * torch.log(torch.tan(a * t + b))
    assert torch.allclose(sched.log_snr(t), expected, atol=1e-12)
    assert sched.log_snr(0.0).item() == pytest.approx(20.0, abs=1e-9)
    assert sched.log_snr(1.0).item() == pytest.approx(-20.0, abs=1e-9)
    lam = sched.log_snr(t)
    assert bool((lam.diff() < 0).all()) and bool((sched.alpha_bar(t).diff() < 0).all())
    alpha, sigma = sched.alpha(t), sched.sigma(t)
    assert torch.allclose(alpha**2 + sigma**2, torch.ones_like(t), atol=1e-15)
    assert torch.allclose(torch.log(alpha**2 / sigma**2), lam, atol=1e-9)


def test_unclipped_cosine_is_cos_sin():
    sched = CosineSchedule(logsnr_min=-math.inf, logsnr_max=math.inf)
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    assert torch.allclose(sched.alpha(t), torch.cos(math.pi * t / 2), atol=1e-12)
    assert torch.allclose(sched.sigma(t), torch.sin(math.pi * t / 2), atol=1e-12)
    assert torch.allclose(sched.log_snr(t), -2 * torch.log(torch.tan(math.pi * t / 2)), atol=1e-12)


def test_ddim_timesteps_codi_50_steps():
    steps = ddim_timesteps(1000, 50)
    assert len(steps) == 50 and steps[0] == 981 and steps[-1] == 1
    assert all(a - b == 20 for a, b in zip(steps, steps[1:]))
    trailing = ddim_timesteps(1000, 50, spacing="trailing")
    assert trailing[0] == 999 and trailing[-1] == 19 and len(set(trailing)) == 50
    assert ddim_timesteps(1000, 1000) == list(range(999, -1, -1))
    assert ddim_timesteps(1000, 3) == [667, 334, 1]
    with pytest.raises(ValueError):
        ddim_timesteps(1000, 1001)


def test_continuous_and_training_timesteps():
    assert continuous_timesteps(4) == [1.0, 0.75, 0.5, 0.25]
    assert sampling_timesteps(CosineSchedule(), 4) == [1.0, 0.75, 0.5, 0.25]
    assert sampling_timesteps(DiscreteSchedule(linear_betas(**CODI)), 50)[0] == 981
    g = torch.Generator().manual_seed(0)
    t = sample_timesteps(DiscreteSchedule(linear_betas(**CODI)), 4096, generator=g)
    assert t.dtype == torch.long and int(t.min()) >= 0 and int(t.max()) <= 999
    u = sample_timesteps(CosineSchedule(), 4096, generator=g)
    assert u.is_floating_point() and float(u.min()) >= 0.0 and float(u.max()) < 1.0
