"""Prompt encoders: unit (b, 1, 768) tokens for every modality; video of one frame = that image;
compose normalises the weights and mixes the nulls with the same weights (CoDi §3.2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.codecs import Codecs
from models.conditioning import compose, compose_with_null, normalized_weights


@pytest.fixture
def codecs(debug_cfg):
    return Codecs(debug_cfg)


def frames(n, h=40, w=48, seed=0) -> torch.Tensor:
    """Smooth colour gradients (a non-square frame exercises resize + centre crop)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    out = [np.stack([(x * a + y * b + c) % 256 for a, b, c in rng.uniform(0, 6, (3, 3))], -1) for _ in range(n)]
    return torch.from_numpy(np.stack(out).astype(np.uint8))


def test_every_condition_is_a_unit_768_token(codecs):
    sr = codecs.cfg.sample_rate
    t = torch.arange(sr) / sr
    audio = torch.stack([torch.sin(2 * torch.pi * 440 * t), 0.3 * torch.sin(2 * torch.pi * 1200 * t)])
    inputs = {"text": ["a red dog", "a blue boat in the sea"], "image": frames(2),
              "video": frames(6).view(2, 3, 40, 48, 3), "audio": audio}
    for modality, data in inputs.items():
        c = codecs.condition(modality, data)
        assert c.shape == (2, 1, 768), modality
        assert torch.allclose(c.norm(dim=-1), torch.ones(2, 1), atol=1e-5), modality
        assert not torch.allclose(c[0], c[1], atol=1e-4), modality        # different prompts differ
        null = codecs.null(modality, 3)
        assert null.shape == (3, 1, 768) and torch.allclose(null.norm(dim=-1), torch.ones(3, 1), atol=1e-5)


def test_one_frame_video_conditions_like_its_frame(codecs):
    images = frames(2, seed=3)
    assert torch.allclose(codecs.condition("video", images[:, None]), codecs.condition("image", images), atol=1e-6)
    # and a multi-frame video averages hidden states: it is not the first frame's embedding
    video = frames(4, seed=4).view(2, 2, 40, 48, 3)
    assert not torch.allclose(codecs.condition("video", video), codecs.condition("image", video[:, 0]), atol=1e-4)


def test_compose_normalises_weights_and_mixes_nulls_alike():
    a, b, c = (torch.randn(2, 1, 768) for _ in range(3))
    assert normalized_weights([2, 6]) == [0.25, 0.75]
    assert torch.allclose(compose([a, b], [2, 6]), 0.25 * a + 0.75 * b, atol=1e-6)
    assert torch.allclose(compose([a, b], [2, 6]), compose([a, b], [0.1, 0.3]), atol=1e-6)
    assert torch.allclose(compose([a, b, c]), (a + b + c) / 3, atol=1e-6)
    na, nb = torch.randn(2, 1, 768), torch.randn(2, 1, 768)
    ctx, null = compose_with_null([a, b], [na, nb], [1, 3])
    assert torch.allclose(ctx, 0.25 * a + 0.75 * b, atol=1e-6) and torch.allclose(null, 0.25 * na + 0.75 * nb, atol=1e-6)
    for bad in ([1, -1], [0, 0], []):
        with pytest.raises(ValueError):
            compose([a, b], bad)
    with pytest.raises(ValueError, match="shape"):
        compose([a, torch.randn(3, 1, 768)])


def test_clip_preprocessing_matches_the_clip_image_processor(tmp_path):
    """Our torch resize/crop/normalise agrees with transformers' CLIPImageProcessor (PIL) on a PNG file."""
    from PIL import Image
    from transformers import CLIPImageProcessor

    from models.encoders.clip import clip_preprocess

    y, x = np.mgrid[0:300, 0:400]
    img = np.stack([(np.sin(x / 17.0 + c) * 0.5 + 0.5) * 255 * (np.cos(y / 23.0) * 0.25 + 0.75) for c in range(3)], -1)
    Image.fromarray(img.astype(np.uint8)).save(tmp_path / "frame.png")
    pixels = np.asarray(Image.open(tmp_path / "frame.png").convert("RGB"))
    ref = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})(
        images=[pixels], return_tensors="pt")["pixel_values"]
    ours = clip_preprocess(torch.from_numpy(pixels.copy())[None], 224)
    assert ours.shape == ref.shape == (1, 3, 224, 224)
    # PIL resamples in uint8 (±0.5/255 before normalisation) with its own bicubic taps
    assert (ours - ref).abs().max() < 0.03 and (ours - ref).abs().mean() < 0.01
