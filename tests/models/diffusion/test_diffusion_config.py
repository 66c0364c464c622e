"""DiffusionConfig: loader-friendly annotations, schedule building, and one noise prior for train and sample."""

import dataclasses
import math
import typing

import pytest
import torch

from common.config import from_dict
from common.errors import ConfigError
from models.diffusion import (SamplingConfig, resolve_x0_clip, DynamicThreshold, CosineSchedule, DiffusionConfig, DiscreteSchedule, build_schedule, ddim_sample,
                              ddim_timesteps, iid_noise, noise_fn, pyoco_mixed_noise, pyoco_progressive_noise,
                              sample_noise, scaled_linear_betas, videofusion_noise)

ALLOWED = (int, float, str, bool)


def _allowed(tp):
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return True
    if origin is typing.Union:
        return all(a is type(None) or _allowed(a) for a in typing.get_args(tp))
    if origin is list:
        return _allowed(typing.get_args(tp)[0])
    return tp in ALLOWED or dataclasses.is_dataclass(tp)


def test_annotations_resolve_to_loader_types_and_defaults_are_codi():
    hints = typing.get_type_hints(DiffusionConfig)
    assert all(_allowed(tp) for tp in hints.values()), hints
    cfg = DiffusionConfig()
    assert (cfg.schedule, cfg.num_timesteps, cfg.beta_start, cfg.beta_end, cfg.prediction) == (
        "scaled_linear", 1000, 0.00085, 0.012, "eps")


@pytest.mark.parametrize("bad", [dict(num_timesteps=0), dict(beta_start=0.02), dict(min_snr_gamma=0.0),
                                 dict(noise_prior_alpha=-1.0), dict(noise_prior_lambda=1.5), dict(frame_dim=5)])
def test_invalid_values_raise_value_error(bad):
    with pytest.raises(ValueError):
        DiffusionConfig(**bad)


def test_build_schedule():
    sched = build_schedule(DiffusionConfig())
    assert isinstance(sched, DiscreteSchedule) and sched.num_timesteps == 1000
    assert torch.equal(sched.betas, scaled_linear_betas(1000, 0.00085, 0.012))
    linear = build_schedule(DiffusionConfig(schedule="linear", num_timesteps=10))
    assert torch.allclose(linear.betas, torch.linspace(0.00085, 0.012, 10, dtype=torch.float64))
    cosine = build_schedule(DiffusionConfig(schedule="cosine", prediction="v", cosine_logsnr_min=-15.0,
                                            cosine_logsnr_max=15.0))
    assert isinstance(cosine, CosineSchedule) and cosine.log_snr(1.0).item() == pytest.approx(-15.0)


@pytest.mark.parametrize("prior,fn,kwargs", [
    ("pyoco_mixed", pyoco_mixed_noise, dict(alpha=2.0)),
    ("pyoco_progressive", pyoco_progressive_noise, dict(alpha=2.0)),
    ("videofusion", videofusion_noise, dict(lam=0.25)),
])
def test_sample_noise_uses_the_configured_prior_for_videos_only(prior, fn, kwargs):
    cfg = DiffusionConfig(noise_prior=prior, noise_prior_alpha=2.0, noise_prior_lambda=0.25)
    video = (2, 4, 6, 8, 8)
    got = sample_noise(cfg, video, generator=torch.Generator().manual_seed(0))
    assert torch.equal(got, fn(video, frame_dim=2, generator=torch.Generator().manual_seed(0), **kwargs))
    for shape in [(2, 4, 8, 8), (2, 1, 80, 64), (2, 77, 32)]:  # image / mel / text latents stay i.i.d.
        assert torch.equal(sample_noise(cfg, shape, generator=torch.Generator().manual_seed(0)),
                           iid_noise(shape, generator=torch.Generator().manual_seed(0)))


def test_sample_noise_respects_dtype_and_feeds_the_sampler():
    cfg = DiffusionConfig(noise_prior="videofusion")
    x = sample_noise(cfg, (1, 2, 4, 4, 4), dtype=torch.float64)
    assert x.dtype == torch.float64
    out = ddim_sample(lambda z, t: torch.zeros_like(z), x, build_schedule(cfg), ddim_timesteps(1000, 4), eta=1.0,
                      generator=torch.Generator().manual_seed(0), noise_fn=noise_fn(cfg))
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_cosine_with_eps_is_a_clear_config_error():
    """Imagen Video §2.4: at t = 1, α = √sigmoid(−20) ≈ 4.5e-5, so ε-prediction's x̂ = (z − σε̂)/α explodes."""
    alpha_1 = build_schedule(DiffusionConfig(schedule="cosine", prediction="v")).alpha(1.0).item()
    assert alpha_1 == pytest.approx(4.54e-5, rel=1e-2)
    with pytest.raises(ValueError, match="cosine.*eps.*prediction 'v'"):
        DiffusionConfig(schedule="cosine")
    with pytest.raises(ConfigError, match="model.yaml: key 'diffusion'.*use prediction 'v'"):
        from_dict(DiffusionConfig, {"schedule": "cosine", "prediction": "eps"}, source="model.yaml", prefix="diffusion")
    for prediction in ("v", "x0"):
        DiffusionConfig(schedule="cosine", prediction=prediction)
    DiffusionConfig(schedule="scaled_linear", prediction="eps")  # ᾱ_T ≈ 0.0047 on CoDi's schedule: fine


def _frame_corr(noise, i, j):
    a, b = noise[:, :, i].flatten(), noise[:, :, j].flatten()
    return torch.corrcoef(torch.stack([a, b]))[0, 1].item()


@pytest.mark.parametrize("prior", ["pyoco_mixed", "pyoco_progressive", "videofusion"])
def test_joint_image_video_noise_keeps_appended_images_independent(prior):
    """Imagen Video §2.3: images concatenated on the frame axis are not frames of the video."""
    cfg = DiffusionConfig(noise_prior=prior, noise_prior_alpha=2.0, noise_prior_lambda=0.5)
    frames, images = 4, 3
    noise = sample_noise(cfg, (64, 4, frames + images, 16, 16), generator=torch.Generator().manual_seed(0),
                         video_frames=frames)
    n = 64 * 4 * 16 * 16
    band = 5 / math.sqrt(n)  # 5 SE of a correlation near 0
    assert _frame_corr(noise, 0, 1) > 0.3  # the video's frames share noise (≥ 0.5 for all three priors)
    for img in range(frames, frames + images):
        assert noise[:, :, img].var().item() == pytest.approx(1.0, abs=0.03)
        for other in range(frames + images):
            if other != img:
                assert abs(_frame_corr(noise, img, other)) < band, (img, other)
    # The video part is exactly the prior over the video's frames (same generator stream).
    video_only = sample_noise(cfg, (64, 4, frames, 16, 16), generator=torch.Generator().manual_seed(0))
    assert torch.equal(noise[:, :, :frames], video_only)
    with pytest.raises(ValueError):
        sample_noise(cfg, (1, 1, 3, 2, 2), video_frames=4)


def test_sampling_config_clip_is_off_for_latent_models():
    pixel, latent = DiffusionConfig(), DiffusionConfig(data_space="latent")
    assert resolve_x0_clip(pixel, "auto") == "static"
    assert resolve_x0_clip(latent, "auto") is None
    assert resolve_x0_clip(pixel, "none") is None
    assert isinstance(resolve_x0_clip(pixel, "dynamic"), DynamicThreshold)
    for clip in ("static", "dynamic"):
        with pytest.raises(ValueError, match="latent"):
            resolve_x0_clip(latent, clip)
    cfg = SamplingConfig()
    assert (cfg.steps, cfg.eta, cfg.spacing, cfg.clip_x0) == (50, 1.0, "trailing", "auto")
