"""Video noise priors: empirical frame covariances vs. closed forms; VideoFusion's denoising step and loss."""

import math
from functools import partial

import pytest
import torch

from models.diffusion import (DiscreteSchedule, combine_base_residual, ddim_timesteps, ddpm_sample, iid_noise,
                              pyoco_mixed_noise, pyoco_progressive_noise, q_sample, remove_base_noise,
                              scaled_linear_betas, videofusion_denoiser, videofusion_eps, videofusion_key_frame,
                              videofusion_lambdas, videofusion_loss, videofusion_noise)

F = 8
SHAPE = (64, 4, F, 32, 32)  # n = 64·4·32·32 = 262144 independent draws per frame
N = SHAPE[0] * SHAPE[1] * SHAPE[3] * SHAPE[4]
# Sample covariance of unit-variance Gaussians has SE √((1 + ρ²)/n) ≤ √(2/n) ≈ 0.0028; allow 5 SE.
TOL = 5 * math.sqrt(2 / N)
SCHEDULE = DiscreteSchedule(scaled_linear_betas(1000, 0.00085, 0.012))


def frame_covariance(eps, frame_dim=2):
    frames = eps.movedim(frame_dim, 0).reshape(eps.shape[frame_dim], -1).double()
    return frames @ frames.T / frames.shape[1]


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_iid_noise_has_identity_covariance():
    cov = frame_covariance(iid_noise(SHAPE, generator=_gen()))
    assert torch.allclose(cov, torch.eye(F, dtype=torch.float64), atol=TOL)


@pytest.mark.parametrize("alpha", [0.5, 2.0])
def test_pyoco_mixed_covariance(alpha):
    cov = frame_covariance(pyoco_mixed_noise(SHAPE, alpha=alpha, generator=_gen()))
    rho = alpha**2 / (1 + alpha**2)
    expected = torch.full((F, F), rho, dtype=torch.float64).fill_diagonal_(1.0)
    assert torch.allclose(cov, expected, atol=TOL)


@pytest.mark.parametrize("alpha", [0.5, 2.0])
def test_pyoco_progressive_covariance(alpha):
    cov = frame_covariance(pyoco_progressive_noise(SHAPE, alpha=alpha, generator=_gen()))
    rho = alpha / math.sqrt(1 + alpha**2)
    i = torch.arange(F, dtype=torch.float64)
    expected = rho ** (i[:, None] - i[None, :]).abs()
    assert torch.allclose(cov, expected, atol=TOL)


def test_pyoco_alpha_zero_is_iid_and_frame_dim_is_respected():
    cov = frame_covariance(pyoco_mixed_noise(SHAPE, alpha=0.0, generator=_gen()))
    assert torch.allclose(cov, torch.eye(F, dtype=torch.float64), atol=TOL)
    shape = (64, F, 4, 32, 32)  # b f c h w
    cov = frame_covariance(pyoco_progressive_noise(shape, alpha=1.0, frame_dim=1, generator=_gen()), frame_dim=1)
    i = torch.arange(F, dtype=torch.float64)
    assert torch.allclose(cov, (1 / math.sqrt(2)) ** (i[:, None] - i[None, :]).abs(), atol=TOL)


@pytest.mark.parametrize("lam", [0.25, 0.5])
def test_videofusion_correlation_is_sqrt_lambda_product(lam):
    eps = videofusion_noise(SHAPE, lam=lam, generator=_gen())
    lambdas = videofusion_lambdas(F, lam)
    assert videofusion_key_frame(F) == 3 and lambdas[3] == 1.0  # paper: frame ⌊8/2⌋ = 4 (1-based)
    expected = (lambdas[:, None] * lambdas[None, :]).sqrt().fill_diagonal_(1.0)
    assert torch.allclose(frame_covariance(eps), expected, atol=TOL)


def test_videofusion_key_frame_matches_paper():
    assert videofusion_key_frame(16) == 7 and videofusion_key_frame(1) == 0 and videofusion_key_frame(3) == 0


def _video(b=2, c=3, f=5, h=4, w=4, seed=0):
    g = _gen(seed)
    return torch.randn(b, c, f, h, w, generator=g, dtype=torch.float64), g


def test_videofusion_step_with_oracle_generators_recovers_the_noise():
    """Eq. 12–13: base noise removed before the residual generator, ε̂ = √λ b̂ + √(1−λ) r̂ is exact."""
    lam, f = 0.5, 5
    x0, g = _video(f=f)
    key = videofusion_key_frame(f)
    lambdas = videofusion_lambdas(f, lam).view(1, 1, f, 1, 1)
    base = torch.randn(2, 3, 1, 4, 4, generator=g, dtype=torch.float64)
    residual = torch.randn(2, 3, f, 4, 4, generator=g, dtype=torch.float64)
    eps = lambdas.sqrt() * base + (1 - lambdas).sqrt() * residual
    t = torch.tensor([300, 800])
    alpha, sigma = SCHEDULE.alpha(t), SCHEDULE.sigma(t)
    z_t = q_sample(x0, eps, alpha, sigma)
    a, s = alpha.view(-1, 1, 1, 1, 1), sigma.view(-1, 1, 1, 1, 1)
    seen = {}

    def base_generator(z_key, tt):
        return (z_key - a[:, :, 0] * x0[:, :, key]) / s[:, :, 0]

    def residual_generator(z, tt, i):
        seen["z"], seen["i"] = z, i
        return (z - a * x0) / (s * (1 - lambdas).clamp(min=1e-12).sqrt())

    eps_hat, base_hat = videofusion_eps(base_generator, residual_generator, z_t, t, sigma, lam)
    assert torch.allclose(base_hat, base[:, :, 0], atol=1e-10)
    others = [i for i in range(f) if i != key]
    # The residual generator saw z^i − √λ σ b = α x^i + σ √(1−λ) r^i on non-key frames, raw z on the key.
    expected_input = a * x0 + s * (1 - lambdas).sqrt() * residual
    assert torch.allclose(seen["z"][:, :, others], expected_input[:, :, others], atol=1e-10)
    assert torch.allclose(seen["z"][:, :, key], z_t[:, :, key])
    assert torch.equal(seen["i"], torch.arange(f))  # z_ψ(z, t, i): the frame index reaches the residual generator
    assert torch.allclose(eps_hat, eps, atol=1e-10)
    assert torch.allclose(combine_base_residual(base[:, :, 0], residual, lam), eps, atol=1e-12)
    assert torch.allclose(remove_base_noise(z_t, base[:, :, 0], sigma, lam)[:, :, others],
                          expected_input[:, :, others], atol=1e-10)


def test_videofusion_ddpm_sampling_with_oracles_returns_x0():
    """Algorithm 1: ancestral sampling with decomposed x_T and step noise; oracle generators ⇒ x₀."""
    lam, f = 0.5, 4
    x0, g = _video(f=f)
    x0 = x0.float()
    key = videofusion_key_frame(f)
    lambdas = videofusion_lambdas(f, lam).view(1, 1, f, 1, 1)

    def coeffs(tt):
        return SCHEDULE.alpha(tt).view(-1, 1, 1, 1, 1).float(), SCHEDULE.sigma(tt).view(-1, 1, 1, 1, 1).float()

    def base_generator(z_key, tt):
        a, s = coeffs(tt)
        return (z_key - a[:, :, 0] * x0[:, :, key]) / s[:, :, 0]

    def residual_generator(z, tt, i):
        a, s = coeffs(tt)
        return (z - a * x0) / (s * (1 - lambdas).clamp(min=1e-12).sqrt().float())

    noise = partial(videofusion_noise, lam=lam, frame_dim=2)
    x_T = noise(x0.shape, generator=g)
    denoiser = videofusion_denoiser(base_generator, residual_generator, SCHEDULE, lam)
    out = ddpm_sample(denoiser, x_T, SCHEDULE, ddim_timesteps(1000, 20), generator=g, noise_fn=noise)
    assert torch.allclose(out, x0, atol=1e-4)


def test_videofusion_loss_stops_base_gradient_on_non_key_frames():
    """Eq. 14: the base generator is trained only by the key-frame term."""
    torch.manual_seed(0)
    lam, f = 0.5, 4
    key = videofusion_key_frame(f)
    base_net = torch.nn.Conv2d(3, 3, 1)
    residual_net = torch.nn.Conv3d(3, 3, 1)
    x0, g = _video(f=f)
    x0 = x0.float()
    eps = videofusion_noise(x0.shape, lam=lam, generator=g)
    t = torch.tensor([100, 700])
    sigma = SCHEDULE.sigma(t)
    z_t = q_sample(x0, eps, SCHEDULE.alpha(t), sigma)

    def base_generator(z_key, tt):
        return base_net(z_key)

    def residual_generator(z, tt, i):
        return residual_net(z)

    loss = videofusion_loss(base_generator, residual_generator, z_t, t, eps, sigma, lam)
    assert loss.shape == (2,)
    loss.sum().backward()
    grad_full = base_net.weight.grad.clone()
    assert residual_net.weight.grad is not None and residual_net.weight.grad.abs().sum() > 0

    # Reference: only the key frame's ‖ε_key − b̂‖², which is 1/F of the per-sample mean over frames.
    base_net.zero_grad()
    key_term = (base_net(z_t[:, :, key]) - eps[:, :, key]).pow(2).flatten(1).mean(1) / f
    key_term.sum().backward()
    assert torch.allclose(grad_full, base_net.weight.grad, atol=1e-6)

    # Manual forward of Eq. 14 gives the same value.
    with torch.no_grad():
        b_hat = base_net(z_t[:, :, key])
        z_res = remove_base_noise(z_t, b_hat, sigma, lam)
        eps_hat = combine_base_residual(b_hat, residual_net(z_res), lam)
        manual = (eps_hat - eps).pow(2).flatten(1).mean(1)
    assert torch.allclose(loss.detach(), manual, atol=1e-6)


def test_residual_generator_uses_the_frame_index_to_tell_frames_apart():
    """VideoFusion §3.3: z_ψ(z^i, t, i) — identical inputs on two frames, different residuals via i."""
    lam, f = 0.5, 4
    key = videofusion_key_frame(f)
    z_t = torch.zeros(1, 2, f, 3, 3)  # every frame identical: only i can make the residuals differ

    def base_generator(z_key, tt):
        return torch.zeros_like(z_key)

    def residual_generator(z, tt, i):
        return z + i.view(1, 1, -1, 1, 1).to(z.dtype)  # a per-frame offset from the index alone

    eps, _ = videofusion_eps(base_generator, residual_generator, z_t, torch.tensor([10]), torch.tensor([0.5]), lam)
    others = [i for i in range(f) if i != key]
    expected = [math.sqrt(1 - lam) * i for i in others]
    assert [eps[0, 0, i, 0, 0].item() for i in others] == pytest.approx(expected)
