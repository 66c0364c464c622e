"""ε / x₀ / v conversions round-trip exactly; losses and min-SNR weighting agree across targets."""

import itertools

import pytest
import torch

from models.diffusion import (PREDICTIONS, CosineSchedule, DiscreteSchedule, convert_prediction,
                              diffusion_loss, eps_from_v, eps_from_x0, expand_like, from_x0_eps,
                              min_snr_weight, q_sample, scaled_linear_betas, to_x0_eps, v_from_x0_eps,
                              x0_from_eps, x0_from_v)

SCHEDULE = DiscreteSchedule(scaled_linear_betas(1000, 0.00085, 0.012))


def _batch(shape=(6, 3, 4, 5, 5), dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(shape, generator=g, dtype=dtype)
    eps = torch.randn(shape, generator=g, dtype=dtype)
    t = torch.tensor([0, 10, 250, 500, 900, 999])[: shape[0]]
    alpha, sigma = SCHEDULE.alpha(t), SCHEDULE.sigma(t)
    return x0, eps, alpha, sigma, q_sample(x0, eps, alpha, sigma)


def test_expand_like_broadcasts_per_sample_coefficients():
    x = torch.zeros(3, 2, 4, 5, 6, dtype=torch.float32)
    c = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    out = expand_like(c, x)
    assert out.shape == (3, 1, 1, 1, 1) and out.dtype == torch.float32
    assert expand_like(2.0, x).shape == () and expand_like(c, torch.zeros(3)).shape == (3,)


def test_q_sample_is_alpha_x_plus_sigma_eps_on_any_layout():
    for shape in [(6, 4, 8, 8), (6, 3, 4, 5, 5), (6, 1, 80, 16), (6, 77, 32)]:
        x0, eps, alpha, sigma, z = _batch(shape)
        for i in range(shape[0]):
            assert torch.allclose(z[i], alpha[i] * x0[i] + sigma[i] * eps[i], atol=1e-14)


def test_v_definition():
    x0, eps, alpha, sigma, _ = _batch()
    v = v_from_x0_eps(x0, eps, alpha, sigma)
    assert torch.allclose(v[2], alpha[2] * eps[2] - sigma[2] * x0[2], atol=1e-14)


@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-10), (torch.float32, 2e-4)])
def test_conversions_round_trip(dtype, atol):
    # float32: 1/α amplifies rounding by ≤ 1/α_999 ≈ 15, so 2e-4 is ~100× float32 epsilon of |z| ≤ ~5.
    x0, eps, alpha, sigma, z = _batch(dtype=dtype)
    v = v_from_x0_eps(x0, eps, alpha, sigma)
    assert torch.allclose(x0_from_eps(z, eps, alpha, sigma), x0, atol=atol)
    assert torch.allclose(eps_from_x0(z, x0, alpha, sigma), eps, atol=atol)
    assert torch.allclose(x0_from_v(z, v, alpha, sigma), x0, atol=atol)
    assert torch.allclose(eps_from_v(z, v, alpha, sigma), eps, atol=atol)
    outputs = {"eps": eps, "x0": x0, "v": v}
    for source, target in itertools.product(PREDICTIONS, PREDICTIONS):
        assert torch.allclose(convert_prediction(outputs[source], z, alpha, sigma, source, target),
                              outputs[target], atol=atol)
        x0_hat, eps_hat = to_x0_eps(outputs[source], z, alpha, sigma, source)
        assert torch.allclose(x0_hat, x0, atol=atol) and torch.allclose(eps_hat, eps, atol=atol)


def test_conversions_on_continuous_schedule():
    sched = CosineSchedule()
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(5, 3, 8, 8, generator=g, dtype=torch.float64)
    eps = torch.randn(5, 3, 8, 8, generator=g, dtype=torch.float64)
    t = torch.tensor([0.01, 0.2, 0.5, 0.8, 0.95], dtype=torch.float64)
    alpha, sigma = sched.alpha(t), sched.sigma(t)
    z = q_sample(x0, eps, alpha, sigma)
    v = from_x0_eps(x0, eps, alpha, sigma, "v")
    assert torch.allclose(x0_from_v(z, v, alpha, sigma), x0, atol=1e-10)
    assert torch.allclose(eps_from_v(z, v, alpha, sigma), eps, atol=1e-10)


def test_unknown_prediction_raises():
    x0, eps, alpha, sigma, z = _batch()
    with pytest.raises(ValueError):
        to_x0_eps(x0, z, alpha, sigma, "score")


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_diffusion_loss_is_per_sample_mse_to_target(prediction):
    x0, eps, alpha, sigma, z = _batch()
    target = from_x0_eps(x0, eps, alpha, sigma, prediction)
    assert torch.equal(diffusion_loss(target, x0, eps, alpha, sigma, prediction), torch.zeros(6, dtype=torch.float32))
    out = target + 0.5
    loss = diffusion_loss(out, x0, eps, alpha, sigma, prediction)
    assert loss.shape == (6,)
    assert torch.allclose(loss, torch.full((6,), 0.25), atol=1e-6)


@pytest.mark.parametrize("gamma", [0.5, 5.0, 1e9])
def test_min_snr_weighting_is_the_same_objective_for_every_target(gamma):
    # Hang et al. (2023): every target should reduce to min(SNR, γ)·‖x̂ − x‖².
    x0, eps, alpha, sigma, z = _batch()
    g = torch.Generator().manual_seed(3)
    x0_hat = x0 + 0.1 * torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    eps_hat = eps_from_x0(z, x0_hat, alpha, sigma)
    snr = alpha**2 / sigma**2
    reference = torch.clamp(snr, max=gamma) * (x0_hat - x0).pow(2).flatten(1).mean(1)
    for prediction in PREDICTIONS:
        out = from_x0_eps(x0_hat, eps_hat, alpha, sigma, prediction)
        loss = diffusion_loss(out, x0, eps, alpha, sigma, prediction, min_snr_gamma=gamma)
        assert torch.allclose(loss.double(), reference, rtol=1e-5), prediction


def test_min_snr_weight_values():
    alpha, sigma = torch.tensor([0.6, 0.98]), torch.tensor([0.8, (1 - 0.98**2) ** 0.5])
    snr = alpha**2 / sigma**2  # 0.5625 and ≈ 24.25
    assert torch.allclose(min_snr_weight(alpha, sigma, "x0", 5.0), torch.tensor([0.5625, 5.0]), atol=1e-5)
    assert torch.allclose(min_snr_weight(alpha, sigma, "eps", 5.0), torch.tensor([1.0, 5.0 / snr[1]]), atol=1e-5)
    expected_v = torch.stack([snr[0] / (snr[0] + 1), 5.0 / (snr[1] + 1)])
    assert torch.allclose(min_snr_weight(alpha, sigma, "v", 5.0), expected_v, atol=1e-5)
