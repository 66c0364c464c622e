"""Cascade conditioning (Imagen Video §2.5): closed forms of the SSR/TSR constructors, the augmented
conditioning carries the low-res signal exactly, λ' round-trips to t', SSR/TSR v-losses fall, and a stage's
export is a folder that ``load_cascade`` rebuilds."""

from __future__ import annotations

import pytest
import torch

from models.diffusion.schedules import CosineSchedule
from training.objectives import downsample_video, skip_frames, ssr_condition, tsr_condition
from training.tasks.cascade import (CascadeConfig, CascadeObjective, CascadeTask, cosine_time_from_log_snr, load_cascade,
                                    video_to_unit)
from training.tasks.ldm import ConditionConfig

from objectives_helpers import adam_steps, debug_codecs, randomize, tiny_image, webvid_batch, write_tokenizers


@pytest.fixture(scope="module")
def codecs(tmp_path_factory):
    return debug_codecs(write_tokenizers(tmp_path_factory.mktemp("tokenizers")))



def test_upsample_of_downsample_of_constant_is_the_constant():
    video = torch.full((2, 3, 4, 16, 16), 0.37)
    video[1] = -0.5
    for mode in ("bilinear", "nearest"):
        out = ssr_condition(downsample_video(video, 4), (16, 16), mode)
        assert out.shape == video.shape
        torch.testing.assert_close(out, video)


def test_ssr_nearest_is_pixel_repetition_and_tsr_repeats_or_blanks_frames():
    low = torch.randn(2, 3, 3, 4, 5)
    near = ssr_condition(low, (8, 10), "nearest")
    torch.testing.assert_close(near, low.repeat_interleave(2, dim=3).repeat_interleave(2, dim=4))
    video = torch.randn(2, 3, 8, 4, 4)
    rep = tsr_condition(skip_frames(video, 2), 2, "repeat")
    blank = tsr_condition(skip_frames(video, 2), 2, "blank")
    assert rep.shape == blank.shape == video.shape
    for j in range(8):
        torch.testing.assert_close(rep[:, :, j], video[:, :, 2 * (j // 2)])
        torch.testing.assert_close(blank[:, :, j], video[:, :, j] if j % 2 == 0 else torch.zeros_like(video[:, :, j]))


def test_log_snr_inverts_to_cosine_time():
    schedule = CosineSchedule()
    t = torch.tensor([0.05, 0.3, 0.5, 0.9], dtype=torch.float64)
    torch.testing.assert_close(cosine_time_from_log_snr(schedule.log_snr(t), schedule), t)


@pytest.mark.parametrize("kind", ["ssr", "tsr"])
def test_conditioning_carries_the_low_res_signal(codecs, kind):
    task = CascadeTask(CascadeObjective(kind, factor=2, ssr_mode="nearest"), tiny_image(), lambda: codecs)
    batch = webvid_batch(n=3, frames=4, size=16)
    inputs = task.batch_inputs(batch, codecs, torch.Generator().manual_seed(0), torch.device("cpu"))
    x0 = video_to_unit(torch.from_numpy(batch["frames"]))
    assert inputs["z_t"].shape == inputs["cond"].shape == x0.shape == (3, 3, 4, 16, 16)
    # closed form: c = resize(α' low + σ' ε'), α'² = sigmoid(λ'), with low made from x0 by hand
    lam = inputs["aug_log_snr"].double()
    a, s = torch.sigmoid(lam).sqrt().float().view(-1, 1, 1, 1, 1), torch.sigmoid(-lam).sqrt().float().view(-1, 1, 1, 1, 1)
    if kind == "ssr":
        low = torch.nn.functional.interpolate(x0.transpose(1, 2).flatten(0, 1), size=(8, 8), mode="bilinear",
                                              antialias=True, align_corners=False).unflatten(0, (3, 4)).transpose(1, 2)
        want = (a * low + s * inputs["aug_noise"]).repeat_interleave(2, 3).repeat_interleave(2, 4)
    else:
        low = x0[:, :, ::2]
        want = (a * low + s * inputs["aug_noise"]).repeat_interleave(2, 2)
    torch.testing.assert_close(inputs["low"], low, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(inputs["cond"], want, atol=1e-5, rtol=1e-5)
    assert (lam.max() - lam.min()) > 1.0     # a random level per example, not one fixed level


@pytest.mark.parametrize("kind", ["ssr", "tsr"])
def test_v_loss_matches_closed_form_and_falls(codecs, kind):
    torch.manual_seed(0)
    task = CascadeTask(CascadeObjective(kind, factor=2, condition=ConditionConfig({"text": 1.0}, 0.1)),
                       tiny_image(), lambda: codecs)
    model = task.build_trainable()
    assert model.unet.spec.in_channels == 6 and model.unet.spec.out_channels == 3
    inputs = task.batch_inputs(webvid_batch(n=2, frames=4, size=8), codecs, torch.Generator().manual_seed(1),
                               torch.device("cpu"))
    with torch.no_grad():   # v = α ε − σ x (Imagen Video §2.4), by hand
        out = model(inputs["z_t"], 1000 * inputs["t"].float(), inputs["context"], inputs["cond"], inputs["aug_log_snr"])
        a, s = inputs["alpha"].view(-1, 1, 1, 1, 1), inputs["sigma"].view(-1, 1, 1, 1, 1)
        v = a * inputs["eps"] - s * inputs["x0"]
        assert task.loss(model, inputs).item() == pytest.approx((out - v).pow(2).mean().item(), rel=1e-5)
    losses = adam_steps(task, model, inputs, steps=12, lr=3e-3)
    assert losses[-1] < 0.7 * losses[0], losses
    assert model.aug_embed[2].weight.abs().sum() > 0     # λ' is an input that the network learns to use


def test_a_stage_export_is_a_folder_load_cascade_rebuilds(codecs, tmp_path):
    """What the loop writes (``save_pretrained`` of ``export_state``, model or EMA weights) loads back by folder
    alone: the same weights in a ``CascadeDenoiser`` of the stage's UNet, and the stage's objective."""
    task = CascadeTask(CascadeObjective("tsr", factor=4, tsr_mode="blank"), tiny_image(), lambda: codecs)
    model = randomize(task.build_trainable(), seed=1, std=0.02)
    task.save_pretrained(tmp_path, task.export_state(model.state_dict()), "ema.safetensors")
    loaded, config = load_cascade(str(tmp_path), "ema.safetensors")
    assert config == CascadeConfig(task.spec, task.objective) and config.sampling_steps == 0
    assert (config.objective.factor, config.objective.tsr_mode, config.unet.in_channels) == (4, "blank", 6)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
