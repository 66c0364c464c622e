"""Sampling through the cascade (Imagen Video §2.5, §2.1), with closed-form oracles: a denoiser returning the
exact v of a point mass x* makes DDIM (η = 0) return x*; a super-resolution stage whose denoiser returns the v
of its own conditioning reproduces the noise-augmented, repeated (TSR) or bilinearly upsampled (SSR) video it
was given; shapes, seeds, and the chain through exports saved and loaded from their folders."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from models.diffusion.cascade import NoiseAugmentationConfig
from models.diffusion.schedules import CosineSchedule
from training.cascade_sampling import cascade_denoiser, sample_cascade, sample_stage
from training.tasks.cascade import (CascadeConfig, CascadeDenoiser, CascadeObjective, cascade_spec, load_cascade,
                                    save_cascade)

from objectives_helpers import randomize, tiny_image

SCHEDULE = CosineSchedule()


def exact_v(x_star):
    """v = α ε̂ − σ x with ε̂ = (z − α x)/σ: the exact v-denoiser when the data is the point x (a tensor, or a
    function of the conditioning c)."""
    def denoise(z, t, cond, log_snr):
        x = x_star(cond) if callable(x_star) else x_star
        a = SCHEDULE.alpha(t.double()).view(-1, 1, 1, 1, 1)
        s = SCHEDULE.sigma(t.double()).view(-1, 1, 1, 1, 1)
        eps = (z.double() - a * x.double()) / s
        return (a * eps - s * x.double()).float()
    return denoise


def objective(kind: str, factor: int = 2, log_snr: float = 3.0) -> CascadeObjective:
    return CascadeObjective(kind, factor=factor, augmentation=NoiseAugmentationConfig(sampling_log_snr=log_snr))


@pytest.mark.parametrize("steps", [1, 4, 16])
def test_ddim_returns_the_point_mass_for_its_exact_v(steps):
    x_star = torch.rand(2, 3, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 1.8 - 0.9
    out = sample_stage(exact_v(x_star), objective("base"), x_star.shape, steps, torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, x_star, atol=1e-5, rtol=0)


def test_super_resolution_stages_see_the_previous_video_repeated_and_upsampled():
    """Base → TSR ×2 → SSR ×2 with every SR denoiser returning the v of its conditioning as x: the TSR output is
    the base's video with each frame twice, the SSR output that bilinearly upsampled (λ' = 30: σ' ≈ 3e-7)."""
    x_star = torch.rand(2, 3, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 1.8 - 0.9
    seen = []

    def own_condition(z, t, cond, log_snr):
        seen.append(log_snr)
        return exact_v(lambda c: c)(z, t, cond, log_snr)

    stages = [(exact_v(x_star), objective("base")), (own_condition, objective("tsr", 2, 30.0)),
              (own_condition, objective("ssr", 2, 30.0))]
    base, tsr, ssr = sample_cascade(stages, x_star.shape, [2, 3, 3], torch.Generator().manual_seed(0))
    assert base.shape == (2, 3, 3, 4, 4) and tsr.shape == (2, 3, 6, 4, 4) and ssr.shape == (2, 3, 6, 8, 8)
    torch.testing.assert_close(base, x_star, atol=1e-5, rtol=0)
    torch.testing.assert_close(tsr, x_star.repeat_interleave(2, dim=2), atol=1e-5, rtol=0)
    frames = x_star.repeat_interleave(2, dim=2).transpose(1, 2).flatten(0, 1)       # (b·f, c, h, w)
    up = F.interpolate(frames, size=(8, 8), mode="bilinear", align_corners=False).unflatten(0, (2, 6)).transpose(1, 2)
    torch.testing.assert_close(ssr, up, atol=1e-5, rtol=0)
    assert all(torch.equal(lam, torch.full((2,), 30.0, dtype=torch.float64)) for lam in seen)   # the fixed λ'


def test_the_conditioning_is_augmented_at_the_fixed_sampling_level():
    """At λ' = 3 the TSR output (its conditioning, by the oracle) is α' · repeat(x) + σ' · repeat(ε'): what is
    left after removing α' · repeat(x) is σ' times noise that repeats on each pair of frames."""
    x_star = torch.zeros(4, 3, 4, 8, 8)
    x_star[:, 0] = 0.5
    stages = [(exact_v(x_star), objective("base")), (exact_v(lambda c: c), objective("tsr", 2, 3.0))]
    _, tsr = sample_cascade(stages, x_star.shape, [2, 2], torch.Generator().manual_seed(0), clip_x0=None)
    alpha, sigma = torch.sigmoid(torch.tensor(3.0)).sqrt(), torch.sigmoid(torch.tensor(-3.0)).sqrt()
    eps = (tsr - alpha * x_star.repeat_interleave(2, dim=2)) / sigma
    torch.testing.assert_close(eps[:, :, 0::2], eps[:, :, 1::2])
    assert abs(eps.std().item() - 1.0) < 0.05 and abs(eps.mean().item()) < 0.05


def test_same_seed_same_video_other_seed_other_video():
    def run(seed):
        stages = [(exact_v(torch.zeros(1, 3, 2, 4, 4)), objective("base")),
                  (exact_v(lambda c: c), objective("ssr", 2, 3.0))]
        return sample_cascade(stages, (1, 3, 2, 4, 4), [2, 2], torch.Generator().manual_seed(seed), clip_x0=None)[-1]
    assert torch.equal(run(0), run(0))
    assert not torch.allclose(run(0), run(1))


def test_a_cascade_starts_with_one_base():
    stage = (exact_v(torch.zeros(1, 3, 2, 4, 4)), objective("ssr"))
    with pytest.raises(ValueError, match="one base"):
        sample_cascade([stage], (1, 3, 2, 4, 4), [2], torch.Generator())


def test_loaded_exports_sample_a_video_through_the_chain(tmp_path):
    """Base, TSR and SSR exports written with their configs, loaded back by folder, sample 2 frames of 8 px →
    4 frames → 4 frames of 16 px; the same seed gives the same video."""
    specs = {}
    for i, kind in enumerate(("base", "tsr", "ssr")):
        config = CascadeConfig(cascade_spec(tiny_image(connectors=False), kind), objective(kind))
        model = randomize(CascadeDenoiser(config.unet), seed=i, std=0.02)
        save_cascade(tmp_path / kind, model.state_dict(), config)
        specs[kind] = model.state_dict()
    loaded = {kind: load_cascade(str(tmp_path / kind)) for kind in ("base", "tsr", "ssr")}
    for kind, (model, config) in loaded.items():
        assert config.objective.kind == kind
        assert all(torch.equal(v, specs[kind][k]) for k, v in model.state_dict().items())
    context = torch.randn(1, 1, 768, generator=torch.Generator().manual_seed(0))
    stages = [(cascade_denoiser(m, c.objective, context), c.objective) for m, c in loaded.values()]
    first = sample_cascade(stages, (1, 3, 2, 8, 8), [2, 2, 2], torch.Generator().manual_seed(3))
    again = sample_cascade(stages, (1, 3, 2, 8, 8), [2, 2, 2], torch.Generator().manual_seed(3))
    assert [tuple(v.shape) for v in first] == [(1, 3, 2, 8, 8), (1, 3, 4, 8, 8), (1, 3, 4, 16, 16)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert all(bool(v.isfinite().all()) and v.abs().max() <= 1.0 for v in first)   # static clipping of x̂


def test_an_export_without_its_config_or_with_other_weights_is_one_line_naming_the_file(tmp_path):
    from common.errors import UsageError

    config = CascadeConfig(cascade_spec(tiny_image(connectors=False), "ssr"), objective("ssr"))
    save_cascade(tmp_path / "ssr", CascadeDenoiser(config.unet).state_dict(), config)
    (tmp_path / "bare").mkdir()
    (tmp_path / "ssr" / "model.safetensors").rename(tmp_path / "bare" / "model.safetensors")
    with pytest.raises(UsageError, match=r"bare/cascade_config\.json: not found"):
        load_cascade(str(tmp_path / "bare"))
    base = CascadeConfig(cascade_spec(tiny_image(connectors=False), "base"), objective("base"))
    save_cascade(tmp_path / "mixed", CascadeDenoiser(config.unet).state_dict(), base)   # SSR weights, base config
    with pytest.raises(UsageError, match=r"mixed/model\.safetensors: does not fit cascade_config\.json") as err:
        load_cascade(str(tmp_path / "mixed"))
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="input channels"):
        dataclasses.replace(base, objective=objective("ssr"))


def test_guidance_is_imagen_eq5_on_v_in_one_batched_forward():
    """A stage whose v̂ is known in closed form from (z, context, c, λ'): the guided denoiser returns
    (1 + w)·v̂(z, text) − w·v̂(z, ∅) per row, in one forward on [text; null] with the low-res video c and λ'
    the same in both halves; w = 0 is the plain conditional forward (no null needed)."""
    calls = []

    def model(z, time, context, cond, log_snr):          # v̂ = z·mean(context) + cond + λ', all per row
        calls.append(z.shape[0])
        assert cond.shape[0] == log_snr.shape[0] == z.shape[0] == context.shape[0]
        return z * context.mean(dim=(1, 2)).view(-1, 1, 1, 1, 1) + cond + log_snr.float().view(-1, 1, 1, 1, 1)

    gen = torch.Generator().manual_seed(0)
    z, cond = torch.randn(3, 2, 2, 4, 4, generator=gen), torch.randn(3, 2, 2, 4, 4, generator=gen)
    log_snr = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    context, null = torch.randn(3, 1, 8, generator=gen) + 2.0, torch.randn(1, 1, 8, generator=gen)
    t = torch.full((3,), 0.5)
    v = lambda ctx: z * ctx.mean(dim=(1, 2)).view(-1, 1, 1, 1, 1) + cond + log_snr.view(-1, 1, 1, 1, 1).float()
    for w in (0.0, 1.0, 7.5):
        calls.clear()
        out = cascade_denoiser(model, objective("ssr"), context, null, w)(z, t, cond, log_snr)
        want = (1 + w) * v(context) - w * v(null.expand(3, -1, -1))
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
        assert calls == ([3] if w == 0 else [6])
    plain = cascade_denoiser(model, objective("ssr"), context)(z, t, cond, log_snr)
    torch.testing.assert_close(plain, v(context), rtol=1e-5, atol=1e-5)
    # guidance moves the sample away from the unconditional one: with the point-mass stage below, a guided
    # base lands at (1 + w)·x(text) − w·x(∅)
    x_text, x_null = torch.full((1, 3, 2, 4, 4), 0.5), torch.full((1, 3, 2, 4, 4), -0.25)

    def point_by_prompt(z, time, ctx, cond, log_snr):
        x = torch.where(ctx.mean(dim=(1, 2)).view(-1, 1, 1, 1, 1) > 0, x_text, x_null)
        return exact_v(lambda _: x)(z, time / 1000.0, cond, log_snr)

    text, empty = torch.ones(1, 1, 8), -torch.ones(1, 1, 8)
    guided = sample_stage(cascade_denoiser(point_by_prompt, objective("base"), text, empty, 2.0), objective("base"),
                          x_text.shape, 8, torch.Generator().manual_seed(1), clip_x0=None)
    torch.testing.assert_close(guided, 3.0 * x_text - 2.0 * x_null, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="null"):
        cascade_denoiser(model, objective("base"), context, None, 1.0)
    with pytest.raises(ValueError, match=">= 0"):
        cascade_denoiser(model, objective("base"), context, null, -1.0)
