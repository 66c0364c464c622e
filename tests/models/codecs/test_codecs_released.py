"""The released() config builds CoDi's sizes (checked on weightless meta tensors: no memory, no download)."""

from __future__ import annotations

import torch

from models.autoencoders.kl import kl_encode
from models.codecs import Codecs
from models.codecs_config import released


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_released_sizes_and_latent_shapes():
    with torch.device("meta"):
        codecs = Codecs(released())
        # AudioLDM mel VAE: 1024 frames × 64 mels -> 8 × 256 × 16
        z = kl_encode(codecs.audio.vae, torch.empty(1, 1, 1024, 64), 0.9228)
        # SD kl-f8: 512² image -> 4 × 64²
        zi = kl_encode(codecs.image.vae, torch.empty(1, 3, 512, 512), 0.18215)
    assert tuple(z.shape) == (1, 8, 256, 16)
    assert tuple(zi.shape) == (1, 4, 64, 64)
    # BERT-base-cased with pooler: 22,665,216 embedding + 12 × 7,087,872 layer + 590,592 pooler parameters
    assert count(codecs.text.encoder.bert) == 108_310_272
    # GPT-2 small (124,439,808 with 50257 tokens) + 3 special-token rows; memory and embedding maps
    assert count(codecs.text.decoder.gpt2) == 124_439_808 + 3 * 768
    assert codecs.text.decoder.linear.weight.shape == (768 * 12, 768)
    assert codecs.text.decoder.linear_emb.weight.shape == (768, 768)
    assert codecs.text.encoder.linear.weight.shape == (1536, 768)
    # SD's VAE
    assert count(codecs.image.vae) == 83_653_863
    # CLIP ViT-L/14 towers, CLAP projection to 768
    assert codecs.clip.model.visual_projection.weight.shape == (768, 1024)
    assert codecs.clip.model.text_projection.weight.shape == (768, 768)
    assert codecs.clap.model.audio_projection.linear2.weight.shape == (768, 768)
    assert codecs.clap.model.config.hidden_size == 2048
    # HiFi-GAN 16 kHz: 160 samples per frame
    hop = 1
    for r in codecs.audio.vocoder.config.upsample_rates:
        hop *= r
    assert hop == 160 and codecs.audio.vocoder.conv_pre.weight.shape == (1024, 64, 7)
