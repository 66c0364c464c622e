"""Classifier-free guidance conventions, oscillating weights, static clipping and dynamic thresholding."""

import math

import pytest
import torch

from common.config import from_dict
from common.errors import ConfigError
from models.diffusion import (DynamicThreshold, Guidance, SamplingConfig, classifier_free_guidance,
                              constant_guidance_weights, dynamic_threshold, guide, guided_denoiser,
                              imagen_weight_from_scale,
                              oscillating_guidance_weights, resolve_clip, scale_from_imagen_weight,
                              static_clip, threshold)


class CountingModel:
    """model(z, t, context) = z·(1 + mean(context)) + t; records every call's batch size."""

    def __init__(self):
        self.batches = []

    def __call__(self, z, t, context):
        self.batches.append(z.shape[0])
        ctx = context["text"] if isinstance(context, dict) else context
        return z * (1 + ctx.mean(dim=(1, 2)).view(-1, 1, 1, 1)) + t.view(-1, 1, 1, 1).float()


def _inputs(b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(b, 4, 8, 8, generator=g)
    t = torch.tensor([5, 500, 999][:b])
    cond = torch.randn(b, 7, 16, generator=g)
    uncond = torch.zeros(b, 7, 16)
    return z, t, cond, uncond


def test_guide_is_imagen_eq5_and_scale_converts_once():
    c, u = torch.randn(2, 3), torch.randn(2, 3)
    assert torch.allclose(guide(c, u, 0.0), c)  # w = 0 is the conditional model
    assert torch.allclose(guide(c, u, 6.0), 7.0 * c - 6.0 * u)
    w = torch.tensor([0.0, 3.0])  # per-sample weights
    assert torch.allclose(guide(c, u, w)[1], 4.0 * c[1] - 3.0 * u[1]) and torch.allclose(guide(c, u, w)[0], c[0])
    assert imagen_weight_from_scale(7.5) == 6.5 and scale_from_imagen_weight(6.5) == 7.5
    # CoDi's s·c + (1 − s)·u with s = 7.5 is Imagen's w = 6.5, through the Guidance object only.
    (w_75,) = Guidance(7.5, "scale").imagen_weights(1)
    assert torch.allclose(guide(c, u, w_75), 7.5 * c - 6.5 * u)
    assert Guidance(7.5, "imagen").imagen_weights(2) == [7.5, 7.5]


def test_guidance_convention_is_required_and_checked():
    with pytest.raises(TypeError):
        Guidance(3.0)  # a bare number has no convention
    with pytest.raises(ValueError):
        Guidance(3.0, "karras")
    with pytest.raises(ConfigError, match="guidance.convention"):
        from_dict(SamplingConfig, {"guidance": {"weight": 7.5}}, source="sample.yaml")
    cfg = from_dict(SamplingConfig, {"guidance": {"weight": 15, "low": 1, "convention": "imagen"}})
    assert cfg.guidance.imagen_weights(4) == [15.0, 1.0, 15.0, 1.0]
    assert SamplingConfig().guidance == Guidance(3.0, "scale")  # CoDi-style s = 3 (w = 2) by default


def test_imagen_oscillation_in_scale_convention_keeps_low_steps_guided():
    # Imagen's (15, 1) are w's. Written as scales they are (16, 2); read as scales unconverted, every
    # low step would be s = 1, i.e. unguided.
    imagen = Guidance(15.0, "imagen", low=1.0).imagen_weights(8)
    assert imagen == Guidance(16.0, "scale", low=2.0).imagen_weights(8)
    assert min(imagen) == 1.0
    assert min(Guidance(15.0, "scale", low=1.0).imagen_weights(8)) == 0.0  # the trap, now explicit


def test_cfg_runs_one_batched_forward_and_w0_is_conditional():
    model = CountingModel()
    z, t, cond, uncond = _inputs()
    out = classifier_free_guidance(model, z, t, cond, uncond, 0.0)
    assert model.batches == [6]  # one forward on [cond; uncond]
    assert torch.allclose(out, model(z, t, cond))
    w = 4.0
    guided = classifier_free_guidance(model, z, t, cond, uncond, w)
    assert torch.allclose(guided, (1 + w) * model(z, t, cond) - w * model(z, t, uncond), atol=1e-5)


def test_cfg_broadcasts_a_single_uncond_and_nested_contexts():
    model = CountingModel()
    z, t, cond, _ = _inputs()
    one_uncond = torch.full((1, 7, 16), 0.25)
    out = classifier_free_guidance(model, z, t, cond, one_uncond, 1.5)
    expected = 2.5 * model(z, t, cond) - 1.5 * model(z, t, one_uncond.expand(3, -1, -1))
    assert torch.allclose(out, expected, atol=1e-5)
    out_dict = classifier_free_guidance(model, z, t, {"text": cond}, {"text": one_uncond}, 1.5)
    assert torch.allclose(out_dict, expected, atol=1e-5)
    scalar_t = classifier_free_guidance(model, z, torch.tensor(7), cond, one_uncond, 1.0)
    assert scalar_t.shape == z.shape


def test_guided_denoiser_uses_per_step_weight_else_default():
    model = CountingModel()
    z, t, cond, uncond = _inputs()
    denoise = guided_denoiser(model, cond, uncond, w=3.0)
    assert torch.allclose(denoise(z, t), classifier_free_guidance(model, z, t, cond, uncond, 3.0))
    assert torch.allclose(denoise(z, t, 0.0), model(z, t, cond))
    with pytest.raises(ValueError):
        guided_denoiser(model, cond, uncond)(z, t)


def test_oscillating_guidance_starts_high_then_alternates():
    weights = oscillating_guidance_weights(10, high=15.0, low=1.0, num_constant_steps=3)
    assert weights == [15, 15, 15, 1, 15, 1, 15, 1, 15, 1]
    # Default: the first ⌈N/4⌉ steps are held high ("a constant high guidance weight for a certain
    # number of initial sampling steps", Imagen Video §2.6.2) — never a low first step.
    assert oscillating_guidance_weights(8) == [15, 15, 1, 15, 1, 15, 1, 15]
    assert oscillating_guidance_weights(4)[0] == 15 and oscillating_guidance_weights(1) == [15]
    for n in (1, 2, 5, 50, 256):
        assert oscillating_guidance_weights(n)[0] == 15.0
        assert Guidance(15.0, "imagen", low=1.0).imagen_weights(n)[0] == 15.0
    assert oscillating_guidance_weights(3, 15.0, 1.0, 3) == [15, 15, 15]
    assert constant_guidance_weights(3, 6.0) == [6.0, 6.0, 6.0]
    for k in (0, 4):
        with pytest.raises(ValueError):
            oscillating_guidance_weights(3, num_constant_steps=k)
    with pytest.raises(ValueError):
        Guidance(15.0, "imagen", num_constant_steps=2)  # constant steps without oscillation


def test_static_clip_and_threshold_one_agree():
    x = torch.randn(4, 3, 8, 8) * 3
    assert torch.equal(static_clip(x), x.clamp(-1, 1))
    assert torch.equal(threshold(x, 1.0), static_clip(x))


def test_dynamic_threshold_equals_static_clip_when_s_is_one():
    # ≥ 99.5 % of |x| below 1 ⇒ percentile ≤ 1 ⇒ s = max(·, 1) = 1 ⇒ plain clipping.
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=g) * 1.8 - 0.9
    x[:, 0, 0, :3] = torch.tensor([1.5, -2.0, 3.0])  # 3 of 3072 values outside [−1, 1]
    assert torch.equal(dynamic_threshold(x, 0.995), static_clip(x))


@pytest.mark.parametrize("p", [0.9, 0.995, 1.0])
def test_dynamic_threshold_matches_brute_force_and_stays_in_range(p):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 2, 16, 16, generator=g) * torch.tensor([0.3, 2.0, 6.0]).view(3, 1, 1, 1)
    out = dynamic_threshold(x, p)
    assert float(out.abs().max()) <= 1.0
    for i in range(3):
        flat = x[i].abs().flatten().sort().values
        s = max(flat[math.ceil(p * flat.numel()) - 1].item(), 1.0)  # nearest-rank percentile
        assert torch.allclose(out[i], x[i].clamp(-s, s) / s)
    assert torch.equal(DynamicThreshold(p)(x), out)


def test_resolve_clip():
    assert resolve_clip(None) is None
    assert resolve_clip("static") is static_clip
    spec = DynamicThreshold(0.99)
    assert resolve_clip(spec) is spec
    with pytest.raises(ValueError):
        resolve_clip("dynamic")
