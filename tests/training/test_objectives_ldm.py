"""Per-modality LDM objective (CoDi §3.3): loss falls on a fixed batch, dropout and condition sampling
realise their configured rates, dropped rows carry exactly the null condition."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.codi import CoDi, CoDiConfig
from models.diffusion.losses import mse_per_sample
from training.objectives import compose_condition, condition_keep_mask, sample_condition
from training.recipes_codi import tiny_image_unet
from training.tasks.ldm import ConditionConfig, LDMObjective, LDMTask, cross_attention_names

from objectives_helpers import (adam_steps, randomize, audiocaps_batch, debug_codecs, laion_batch, tiny_audio, tiny_codi,
                                tiny_image, tiny_text, webvid_batch, write_tokenizers)


@pytest.fixture(scope="module")
def tokenizer_dirs(tmp_path_factory):
    return write_tokenizers(tmp_path_factory.mktemp("tokenizers"))


@pytest.fixture(scope="module")
def codecs(tokenizer_dirs):
    return debug_codecs(tokenizer_dirs)



def test_dropout_rate_is_realised():
    gen = torch.Generator().manual_seed(0)
    n, p = 40000, 0.1
    keep = condition_keep_mask(n, p, gen)
    dropped = 1 - keep.float().mean().item()
    assert abs(dropped - p) < 4 * math.sqrt(p * (1 - p) / n)     # 4 standard errors
    assert condition_keep_mask(1000, 0.0, gen).all() and not condition_keep_mask(1000, 1.0, gen).any()


def test_condition_modality_distribution_follows_weights_among_available():
    gen = torch.Generator().manual_seed(1)
    n = 30000
    weights = [0.5, 0.3, 0.2]                       # text, image, audio
    available = torch.ones(n, 3, dtype=torch.bool)
    available[n // 2:, 2] = False                   # the second half has no audio
    choice = sample_condition(available, weights, gen)
    first, second = choice[: n // 2], choice[n // 2:]
    for idx, want in enumerate(weights):
        got = (first == idx).float().mean().item()
        assert abs(got - want) < 4 * math.sqrt(want * (1 - want) / (n // 2))
    assert not (second == 2).any()                  # never an absent modality
    # renormalised among text/image: 0.5/0.8 and 0.3/0.8
    assert abs((second == 0).float().mean().item() - 0.625) < 4 * math.sqrt(0.625 * 0.375 / (n // 2))
    with pytest.raises(ValueError, match="no available condition"):
        sample_condition(torch.zeros(2, 3, dtype=torch.bool), weights, gen)


def test_compose_condition_picks_chosen_or_null():
    cands = torch.arange(2 * 3 * 1 * 2, dtype=torch.float32).view(2, 3, 1, 2)
    null = -torch.ones(2, 3, 1, 2) * torch.tensor([1.0, 2.0]).view(2, 1, 1, 1)
    out = compose_condition(cands, torch.tensor([0, 1, 1]), torch.tensor([True, True, False]), null)
    assert torch.equal(out[0], cands[0, 0]) and torch.equal(out[1], cands[1, 1]) and torch.equal(out[2], null[1, 2])


def test_batch_inputs_context_is_chosen_condition_or_null(codecs):
    task = LDMTask(LDMObjective("video", ConditionConfig({"text": 1.0, "audio": 1.0}, drop_prob=0.3), "webvid"),
                   tiny_codi(image=tiny_image(video=True)), lambda: codecs)
    batch = webvid_batch(n=12, with_audio=[True, False] * 6)
    inputs = task.batch_inputs(batch, codecs, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert inputs["x0"].shape == (12, 4, 4, 8, 8) and inputs["context"].shape == (12, 1, 768)
    with torch.no_grad():
        text = codecs.condition("text", list(batch["caption"]))
        audio = codecs.condition("audio", torch.from_numpy(batch["audio"].astype(np.float32)))
        nulls = [codecs.null("text", 1)[0], codecs.null("audio", 1)[0]]
    for i in range(12):
        c = int(inputs["cond_choice"][i])
        if i % 2 == 1:
            assert c == 0                            # silent clip: audio is never the condition
        want = (text, audio)[c][i] if inputs["cond_keep"][i] else nulls[c]
        torch.testing.assert_close(inputs["context"][i], want)
    assert not inputs["cond_keep"].all() and inputs["cond_keep"].any()


@pytest.mark.parametrize("modality,unets,batch", [
    ("image", {"image": tiny_image()}, laion_batch(4)),
    ("audio", {"audio": tiny_audio()}, audiocaps_batch(4)),
    ("text", {"text": tiny_text()}, laion_batch(4)),
    ("video", {"image": tiny_image(video=True)}, webvid_batch(2, frames=2, size=8)),
])
def test_loss_falls_on_a_fixed_batch(codecs, modality, unets, batch):
    torch.manual_seed(0)
    task = LDMTask(LDMObjective(modality, ConditionConfig({"text": 1.0}, drop_prob=0.1)), tiny_codi(**unets),
                   lambda: codecs)
    model = task.build_trainable()
    inputs = task.batch_inputs(batch, codecs, torch.Generator().manual_seed(0), torch.device("cpu"))
    with torch.no_grad():   # the task's loss is the core's ε-MSE of one CoDi call (oracle: direct computation)
        eps_hat = model({modality: inputs["z_t"]}, inputs["t"].float(), inputs["context"])[modality]
        assert task.loss(model, inputs).item() == pytest.approx(mse_per_sample(eps_hat, inputs["eps"]).mean().item(),
                                                               rel=1e-5)
    losses = adam_steps(task, model, inputs, steps=20, lr=2e-3)
    assert losses[-1] < 0.6 * losses[0], losses


def test_min_snr_gamma_weights_each_sample_by_min_snr_over_snr(codecs):
    """With ``min_snr_gamma`` the LDM's per-sample ε-loss is the plain one times min(SNR, γ)/SNR (Hang et
    al. 2023), SNR = ᾱ/(1 − ᾱ) from diffusers' scaled-linear schedule (the oracle), on both sides of γ."""
    from diffusers import DDPMScheduler
    from models.diffusion.config import DiffusionConfig
    from training.objectives import diffusion_draw

    torch.manual_seed(0)
    plain = LDMTask(LDMObjective("image"), tiny_codi(image=tiny_image()), lambda: codecs)
    weighted = LDMTask(LDMObjective("image"), CoDiConfig(image=tiny_image(), diffusion=DiffusionConfig(
        data_space="latent", min_snr_gamma=5.0)), lambda: codecs)
    model = plain.build_trainable()
    inputs = plain.batch_inputs(laion_batch(4), codecs, torch.Generator().manual_seed(0), torch.device("cpu"))
    t = torch.tensor([5, 120, 400, 900])
    inputs = {**inputs, **diffusion_draw(inputs["x0"], plain.diffusion, plain.schedule,
                                         torch.Generator().manual_seed(1), t=t)}
    with torch.no_grad():
        ratio = (weighted.per_sample_loss(model, inputs, torch.float32)
                 / plain.per_sample_loss(model, inputs, torch.float32)).double()
    ac = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                       beta_schedule="scaled_linear").alphas_cumprod.double()[t]
    snr = ac / (1 - ac)
    assert snr[0] > 5 > snr[-1]
    assert torch.allclose(ratio, torch.clamp(snr, max=5.0) / snr, rtol=1e-4)
    assert ratio[-1].item() == pytest.approx(1.0) and ratio[0].item() < 0.05


def test_inputs_split_into_micro_batches(codecs):
    """Every input has the batch as its first dim and the loss is a per-example mean, so the engine may
    split a step's inputs into micro-batches (gradient accumulation) without changing the step."""
    torch.manual_seed(0)
    task = LDMTask(LDMObjective("image"), tiny_codi(image=tiny_image()), lambda: codecs)
    model = task.build_trainable()
    inputs = task.batch_inputs(laion_batch(4), codecs, torch.Generator().manual_seed(3), torch.device("cpu"))
    assert all(v.shape[0] == 4 for v in inputs.values())
    halves = [{k: v[i * 2:(i + 1) * 2] for k, v in inputs.items()} for i in range(2)]
    with torch.no_grad():
        whole = task.loss(model, inputs).item()
        split = sum(task.loss(model, h).item() for h in halves) / 2
    assert whole == pytest.approx(split, rel=1e-5)


def test_video_ldm_on_video_layers_trains_them_alone_and_keeps_image_generation(codecs):
    """``train: video_layers``: the loss falls, only the parameters a video UNet has beyond its spatial twin
    move, and the UNet's ε on an image latent (no frame axis: the image LDM it grew from) is unchanged."""
    torch.manual_seed(0)
    task = LDMTask(LDMObjective("video", ConditionConfig({"text": 1.0}, drop_prob=0.1), train="video_layers"),
                   tiny_codi(image=tiny_image(video=True)), lambda: codecs)
    model = randomize(task.build_trainable())     # a trained image LDM stands here (a fresh UNet outputs zeros)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(any(w in n for w in ("temporal_attn.", "temporal_rel_pos_bias.", ".ff.", "frameshiftblock."))
                             for n in trainable), sorted(trainable)[:4]
    image_latent, t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([500.0, 50.0])
    context = codecs.condition("text", ["a red dog runs", "a blue boat sails"]).float()
    with torch.no_grad():
        image_eps = model({"image": image_latent}, t, context)["image"]
    inputs = task.batch_inputs(webvid_batch(2, frames=2, size=8), codecs, torch.Generator().manual_seed(0),
                               torch.device("cpu"))
    losses = adam_steps(task, model, inputs, steps=20, lr=2e-3)
    assert losses[-1] < 0.9 * losses[0], losses                 # 0.96 -> 0.83 measured
    moved = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert moved and moved <= trainable, sorted(moved - trainable)[:4]
    with torch.no_grad():
        assert torch.equal(model({"image": image_latent}, t, context)["image"], image_eps)
    with pytest.raises(ValueError, match="video LDM"):
        LDMObjective("image", train="video_layers")


def test_video_ldm_with_cross_attention_trains_video_layers_and_attn2_alone(codecs):
    """``train: video_layers+cross_attention``: the video layers and every text cross-attention (``attn2``)
    move and nothing else does — self-attention, ResBlocks, the in/out convs keep the image LDM's weights."""
    torch.manual_seed(0)
    task = LDMTask(LDMObjective("video", ConditionConfig({"text": 1.0}, drop_prob=0.0),
                                train="video_layers+cross_attention"),
                   tiny_codi(image=tiny_image(video=True)), lambda: codecs)
    model = randomize(task.build_trainable())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    cross = {n for n in trainable if ".attn2." in n}
    assert cross and all(n.split(".attn2.")[1] in ("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight",
                                                   "to_out.0.bias") for n in cross), sorted(cross)
    assert not any(".attn1." in n or ".in_layers." in n for n in trainable)
    inputs = task.batch_inputs(webvid_batch(2, frames=2, size=8), codecs, torch.Generator().manual_seed(0),
                               torch.device("cpu"))
    losses = adam_steps(task, model, inputs, steps=20, lr=2e-3)
    assert losses[-1] < 0.9 * losses[0], losses
    moved = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert moved <= trainable and moved & cross and moved - cross, sorted(moved - trainable)[:4]
    connected = CoDi(CoDiConfig(image=tiny_image_unet(video=True)))      # the schedules' UNet, connectors on
    names = cross_attention_names(connected)
    assert names and not any("connecters" in n for n in names)
    assert any("connecters" in n and ".attn2." in n for n, _ in connected.named_parameters())
    with pytest.raises(ValueError, match=r"one of all, video_layers, video_layers\+cross_attention"):
        LDMObjective("video", train="cross_attention")


# a CPU without bf16 units (AVX2 only) emulates bf16: 5.5 s a training step of this tiny UNet, ~60 s in all
@pytest.mark.timeout(300)
@pytest.mark.parametrize("precision, want", [("bf16_autocast", torch.bfloat16), ("fp32", torch.float32)])
def test_precision_bf16_autocast_computes_in_bf16_and_keeps_fp32_weights(codecs, precision, want):
    """``precision=bf16_autocast`` (the demo's audio LDM): the UNet's convolutions run in bf16 under the loop's
    ``autocast`` context, the loss, weights and gradients stay fp32, the loss is the fp32 loss to bf16's
    precision (oracle: the same call without autocast), and it trains."""
    from training.config import TrainConfig
    from training.engine import autocast

    torch.manual_seed(0)
    task = LDMTask(LDMObjective("audio", ConditionConfig({"text": 1.0}, drop_prob=0.1)), tiny_codi(audio=tiny_audio()),
                   lambda: codecs)
    model = task.build_trainable()
    inputs = task.batch_inputs(audiocaps_batch(4), codecs, torch.Generator().manual_seed(0), torch.device("cpu"))
    seen = []
    for conv in (m for m in model.modules() if isinstance(m, torch.nn.Conv2d)):
        conv.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    cfg = TrainConfig(precision=precision)
    with torch.no_grad():
        reference = task.loss(model, inputs).item()
    seen.clear()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        with autocast(cfg, torch.device("cpu")):
            loss = task.loss(model, inputs)
        loss.backward()
    assert seen and set(seen) == {want}
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(reference, rel=3e-2)
    kernels = {e.key for e in prof.key_averages() if "scaled_dot_product" in e.key}
    if precision == "bf16_autocast":   # attention through the math kernel, forward and backward (engine.autocast)
        assert "aten::_scaled_dot_product_attention_math" in kernels, kernels
        assert not any("flash" in k for k in kernels), kernels
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters()
               if p.requires_grad and p.grad is not None)
    if precision == "bf16_autocast":
        opt, losses = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3), []
        for _ in range(10):          # measured: 1.01 -> 0.48 (below 0.6x from the 8th step)
            with autocast(cfg, torch.device("cpu")):
                step_loss = task.loss(model, inputs)
            opt.zero_grad()
            step_loss.backward()
            opt.step()
            losses.append(step_loss.item())
        assert losses[-1] < 0.6 * losses[0], losses
