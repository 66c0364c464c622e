"""The text-to-image diffuser and its training step, without Ray: shapes, learning, save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.text_to_image import TextToImageDiffuser
from training.recipes import text_to_image_demo_debug
from training.step import drop_captions, images_to_x0, text_to_image_loss, x0_to_images


@pytest.fixture(scope="module")
def model_cfg():
    return text_to_image_demo_debug().model


def test_unet_output_matches_input_shape_and_depends_on_text(model_cfg):
    torch.manual_seed(0)
    model = TextToImageDiffuser(model_cfg)
    # The UNet's output conv starts at zero (stable start); perturb it so outputs are informative.
    torch.nn.init.normal_(model.unet.out[-1].weight, std=0.1)
    for module in model.unet.modules():
        if hasattr(module, "proj_out"):
            torch.nn.init.normal_(module.proj_out.weight, std=0.1)
    z = torch.randn(2, 3, model_cfg.image_size, model_cfg.image_size)
    t = torch.tensor([10, 900])
    a = model(z, t, model.encode_text(["a red circle on the left"] * 2))
    b = model(z, t, model.encode_text(["a blue square on the right"] * 2))
    assert a.shape == z.shape
    assert not torch.allclose(a, b), "cross-attention must make the output depend on the caption"


def test_text_encoder_is_frozen_and_distinguishes_captions(model_cfg):
    model = TextToImageDiffuser(model_cfg)
    assert not any(p.requires_grad for p in model.text_encoder.parameters())
    states = model.encode_text(["a red circle", "a blue square", "a red circle"])
    assert states.shape == (3, model_cfg.text_encoder.context_length, model_cfg.text_encoder.width)
    assert torch.equal(states[0], states[2]) and not torch.allclose(states[0], states[1])


@pytest.mark.timeout(300)  # 40 CPU steps: ~20 s alone, measured 87 s on 2 busy cores
def test_training_loss_decreases_on_a_fixed_batch(model_cfg):
    torch.manual_seed(0)
    model = TextToImageDiffuser(model_cfg)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, model_cfg.image_size, model_cfg.image_size, 3), dtype=np.uint8)
    captions = ["a red circle on the left"] * 8
    losses = []
    for _ in range(40):
        # the same noise and timesteps every step: only the weights change
        loss = text_to_image_loss(model, images, captions, torch.Generator().manual_seed(7))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_caption_dropout_rate_and_pixel_round_trip():
    captions = drop_captions(["x"] * 4000, 0.1, torch.Generator().manual_seed(0))
    assert 0.08 < captions.count("") / 4000 < 0.12
    images = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    x0 = images_to_x0(images)
    assert x0.shape == (2, 3, 5, 7) and x0.min() >= -1 and x0.max() <= 1
    assert np.array_equal(x0_to_images(x0), images)


def test_save_and_load_pretrained_gives_identical_outputs(tmp_path, model_cfg):
    torch.manual_seed(1)
    model = TextToImageDiffuser(model_cfg)
    torch.nn.init.normal_(model.unet.out[-1].weight, std=0.1)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "model_config.json").is_file()
    loaded = TextToImageDiffuser.from_pretrained(tmp_path)
    z, t = torch.randn(1, 3, model_cfg.image_size, model_cfg.image_size), torch.tensor([500])
    context = model.encode_text(["a green triangle"])
    assert torch.equal(model(z, t, context), loaded(z, t, loaded.encode_text(["a green triangle"])))
    assert loaded.cfg == model_cfg


def test_bf16_model_trains_with_fp32_loss(model_cfg):
    """precision=bf16 engines hold bf16 weights: inputs are cast to them, the loss stays fp32."""
    model = TextToImageDiffuser(model_cfg).to(torch.bfloat16)
    images = np.zeros((2, model_cfg.image_size, model_cfg.image_size, 3), dtype=np.uint8)
    loss = text_to_image_loss(model, images, ["a red circle", ""], torch.Generator().manual_seed(0))
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert model.unet.conv_in.weight.grad is not None and model.unet.conv_in.weight.grad.dtype == torch.bfloat16


def test_corrupt_or_mismatched_weights_are_one_clear_error(tmp_path, model_cfg):
    from common.errors import UsageError

    TextToImageDiffuser(model_cfg).save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UsageError, match="model.safetensors: cannot load weights"):
        TextToImageDiffuser.from_pretrained(tmp_path)
    with pytest.raises(UsageError, match="nowhere: no model.safetensors"):
        TextToImageDiffuser.from_pretrained(tmp_path / "nowhere")
