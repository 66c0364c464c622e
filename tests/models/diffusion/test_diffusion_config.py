"""DiffusionConfig: loader-friendly annotations, schedule building, and one noise prior for train and sample."""

import dataclasses
import typing

import pytest
import torch

from models.diffusion import (CosineSchedule, DiffusionConfig, DiscreteSchedule, build_schedule, ddim_sample,
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
    cosine = build_schedule(DiffusionConfig(schedule="cosine", cosine_logsnr_min=-15.0, cosine_logsnr_max=15.0))
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
