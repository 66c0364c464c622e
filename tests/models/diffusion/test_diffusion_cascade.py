"""Noise conditioning augmentation (Imagen Video §2.5): random λ' in training, fixed SNR at sampling."""

import math

import pytest
import torch

from models.diffusion import CosineSchedule, noise_augment, sampling_noise_augmentation, training_noise_augmentation


def _cond(shape=(5, 3, 4, 8, 8), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) * 2 - 1, g


def test_noise_augment_is_the_forward_process_at_log_snr():
    cond, g = _cond()
    noise = torch.randn(cond.shape, generator=g)
    log_snr = torch.tensor([-3.0, 0.0, 1.0, 3.0, 8.0], dtype=torch.float64)
    out = noise_augment(cond, log_snr, noise)
    for i, lam in enumerate(log_snr.tolist()):
        a2 = 1 / (1 + math.exp(-lam))  # α'² = sigmoid(λ'), σ'² = 1 − α'²
        assert math.log(a2 / (1 - a2)) == pytest.approx(lam, abs=1e-12)
        assert torch.allclose(out[i], math.sqrt(a2) * cond[i] + math.sqrt(1 - a2) * noise[i], atol=1e-6)


def test_training_augmentation_draws_random_log_snr_per_sample():
    cond, g = _cond()
    noise = torch.randn(cond.shape, generator=g)
    out, log_snr = training_noise_augmentation(cond, generator=g, noise=noise)
    sched = CosineSchedule()
    assert log_snr.shape == (5,) and len(set(log_snr.tolist())) == 5
    assert bool(((log_snr >= sched.logsnr_min) & (log_snr <= sched.logsnr_max)).all())
    assert torch.allclose(out, noise_augment(cond, log_snr, noise))
    _, capped = training_noise_augmentation(cond, max_t=0.3, generator=g)
    assert bool((capped >= sched.log_snr(0.3)).all())  # t' ≤ 0.3 ⇒ λ' ≥ λ(0.3)


def test_sampling_augmentation_uses_one_fixed_snr():
    n = 400_000
    cond = torch.zeros(1, n)
    out, log_snr = sampling_noise_augmentation(cond, snr=3.0, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(log_snr, torch.full((1,), math.log(3.0), dtype=torch.float64))
    # c = 0 ⇒ c' = σ' ε with σ'² = 1/(1 + SNR) = 0.25; SE of a variance ≈ var·√(2/n), 5 SE band.
    assert out.var().item() == pytest.approx(0.25, abs=5 * 0.25 * math.sqrt(2 / n))
    cond, g = _cond()
    out1, _ = sampling_noise_augmentation(cond, 5.0, generator=torch.Generator().manual_seed(1))
    out2, _ = sampling_noise_augmentation(cond, 5.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out1, out2)
    with pytest.raises(ValueError):
        sampling_noise_augmentation(cond, 0.0)
