"""Noise conditioning augmentation (Imagen Video §2.5): random λ' in training, a fixed log-SNR λ' at sampling."""

import math

import pytest
import torch

from common.config import from_dict
from common.errors import ConfigError
from models.diffusion import (CosineSchedule, NoiseAugmentationConfig, log_snr_from_sigma, noise_augment,
                              sampling_noise_augmentation, sigma_from_log_snr, training_noise_augmentation)


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


@pytest.mark.parametrize("log_snr,sigma", [(3.0, 0.2178), (5.0, 0.0818), (0.0, math.sqrt(0.5))])
def test_log_snr_and_sigma_conversions(log_snr, sigma):
    # σ'² = 1/(1 + e^λ'): λ' = 3 → σ' ≈ 0.22, λ' = 5 → σ' ≈ 0.08 (a linear SNR of 3 would be σ' = 0.5).
    assert sigma_from_log_snr(log_snr) == pytest.approx(1 / math.sqrt(1 + math.exp(log_snr)), rel=1e-12)
    assert sigma_from_log_snr(log_snr) == pytest.approx(sigma, abs=1e-4)
    assert log_snr_from_sigma(sigma_from_log_snr(log_snr)) == pytest.approx(log_snr, abs=1e-9)
    assert log_snr_from_sigma(sigma) == pytest.approx(math.log((1 - sigma**2) / sigma**2), rel=1e-12)
    with pytest.raises(ValueError):
        log_snr_from_sigma(1.0)


def test_sampling_augmentation_default_is_the_papers_log_snr_3():
    n = 400_000
    cond = torch.zeros(1, n)
    out, log_snr = sampling_noise_augmentation(cond, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(log_snr, torch.full((1,), 3.0, dtype=torch.float64))
    # c = 0 ⇒ c' = σ' ε with σ'² = sigmoid(−3) = 0.0474 (not the 0.25 of a linear SNR of 3); 5 SE band.
    var = 1 / (1 + math.exp(3.0))
    assert out.var().item() == pytest.approx(var, abs=5 * var * math.sqrt(2 / n))
    cond, g = _cond()
    out1, _ = sampling_noise_augmentation(cond, 5.0, generator=torch.Generator().manual_seed(1))
    out2, _ = sampling_noise_augmentation(cond, log_snr=5.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out1, out2)
    # c ~ U(−1, 1) keeps most of its structure at λ' = 5: corr(c, c') = α'·sd(c)/√(α'² var(c) + σ'²) ≈ 0.990
    a2, var_c = 1 / (1 + math.exp(-5.0)), 1 / 3
    corr = torch.corrcoef(torch.stack([cond.flatten(), out1.flatten()]))[0, 1].item()
    assert corr == pytest.approx(math.sqrt(a2 * var_c / (a2 * var_c + 1 - a2)), abs=3e-3)


def test_augmentation_config_names_its_unit_and_converts_sigma():
    assert NoiseAugmentationConfig().sampling_level() == 3.0  # the paper's reading by default
    by_sigma = NoiseAugmentationConfig(sampling_log_snr=None, sampling_sigma=0.2178)
    assert by_sigma.sampling_level() == pytest.approx(3.0, abs=2e-3)
    for bad in (dict(sampling_sigma=0.2), dict(sampling_log_snr=None), dict(sampling_log_snr=None, sampling_sigma=1.5),
                dict(train_max_t=0.0)):
        with pytest.raises(ValueError):
            NoiseAugmentationConfig(**bad)
    with pytest.raises(ConfigError, match="sampling_log_snr and sampling_sigma"):
        from_dict(NoiseAugmentationConfig, {"sampling_sigma": 0.1}, source="stage.yaml")
