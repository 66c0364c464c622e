"""The Codecs API: every modality round-trips encode -> decode with the right shapes and dtypes; per-piece
trainable flags; save_pretrained/from_pretrained; the libraries' own from_pretrained(local dir) paths."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from common.errors import ConfigError
from models.codecs import Codecs


@pytest.fixture
def codecs(debug_cfg):
    return Codecs(debug_cfg)


def test_every_modality_round_trips_with_its_layout(codecs):
    img = torch.randint(0, 256, (2, 16, 24, 3), dtype=torch.uint8)
    z = codecs.encode("image", img)
    assert z.shape == (2, 4, 8, 12) and z.dtype == torch.float32
    out = codecs.decode("image", z)
    assert out.shape == img.shape and out.dtype == torch.uint8

    video = torch.randint(0, 256, (2, 3, 16, 16, 3), dtype=torch.uint8)
    z = codecs.encode("video", video)
    assert z.shape == (2, 4, 3, 8, 8)
    # frame by frame: frame 1 of the video latent is the image latent of frame 1
    assert torch.allclose(z[:, :, 1], codecs.encode("image", video[:, 1]), atol=1e-5)
    out = codecs.decode("video", z)
    assert out.shape == video.shape and out.dtype == torch.uint8

    frames = codecs.cfg.audio.frames
    wav = torch.randn(2, 3000)
    z = codecs.encode("audio", wav)
    assert z.shape == (2, 8, frames // 2, 32)            # debug VAE downsamples by 2 (released: by 4)
    out = codecs.decode("audio", z)
    assert out.shape == (2, frames * 160) and out.dtype == torch.float32

    z = codecs.encode("text", ["a red dog", "a big boat on the lake"])
    assert z.shape == (2, codecs.cfg.text.latent_size)
    texts = codecs.decode("text", z)
    assert isinstance(texts, list) and len(texts) == 2 and all(isinstance(t, str) for t in texts)


def test_audio_encode_normalises_mean_and_peak(codecs):
    """AudioLDM's normalisation makes the latent invariant to gain and DC offset."""
    wav = torch.randn(1, 4000)
    assert torch.allclose(codecs.encode("audio", wav), codecs.encode("audio", 3.0 * wav + 0.2), atol=1e-4)


def test_vocoder_gives_hop_samples_per_frame(codecs):
    for frames in (7, 32):
        mel = torch.randn(2, frames, 64)
        assert codecs.audio.vocode(mel).shape == (2, frames * 160)


def test_bad_inputs_are_clear_errors(codecs):
    with pytest.raises(ValueError, match="uint8"):
        codecs.encode("image", torch.zeros(1, 16, 16, 3))
    with pytest.raises(ValueError, match="multiples of 2"):
        codecs.encode("image", torch.zeros(1, 15, 16, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="waveform"):
        codecs.encode("audio", torch.zeros(1, 2, 100))
    with pytest.raises(ValueError, match="unknown modality"):
        codecs.encode("smell", None)


def test_trainable_flags_freeze_whole_pieces(debug_cfg):
    cfg = dataclasses.replace(debug_cfg, image=dataclasses.replace(debug_cfg.image, trainable=True),
                              text=dataclasses.replace(debug_cfg.text, trainable=True))
    codecs = Codecs(cfg).train()
    assert all(p.requires_grad for p in codecs.image.parameters())
    assert all(p.requires_grad for p in codecs.text.parameters())
    for frozen in (codecs.audio.vae, codecs.audio.vocoder, codecs.clip, codecs.clap):
        assert not any(p.requires_grad for p in frozen.parameters())
        assert not frozen.training                  # frozen pieces stay in eval mode (no dropout)
    assert codecs.text.training and codecs.image.training
    # a training step moves only the trainable pieces
    before = {k: v.clone() for k, v in codecs.state_dict().items()}
    opt = torch.optim.SGD([p for p in codecs.parameters() if p.requires_grad], lr=0.1)
    img = torch.randint(0, 256, (1, 16, 16, 3), dtype=torch.uint8)
    loss = codecs.encode("image", img).square().mean() + codecs.encode("text", ["a dog"]).square().mean()
    loss.backward()
    opt.step()
    after = codecs.state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"image", "text"}


def test_save_and_from_pretrained_round_trip(codecs, tmp_path):
    img = torch.randint(0, 256, (1, 16, 16, 3), dtype=torch.uint8)
    wav = torch.randn(1, 3000)
    codecs.save_pretrained(tmp_path / "codecs")
    assert {p.name for p in (tmp_path / "codecs").iterdir()} == {"config.json", "model.safetensors", "tokenizers"}
    again = Codecs.from_pretrained(tmp_path / "codecs")
    assert torch.equal(again.encode("image", img), codecs.encode("image", img))
    assert torch.equal(again.decode("audio", codecs.encode("audio", wav)), codecs.decode("audio", codecs.encode("audio", wav)))
    assert torch.equal(again.condition("text", ["a dog"]), codecs.condition("text", ["a dog"]))
    z = codecs.encode("text", ["a dog"])
    assert torch.equal(again.encode("text", ["a dog"]), z) and again.decode("text", z) == codecs.decode("text", z)
    (tmp_path / "codecs" / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match="model.safetensors"):
        Codecs.from_pretrained(tmp_path / "codecs")
    with pytest.raises(ConfigError, match="config.json"):
        Codecs.from_pretrained(tmp_path / "nowhere")


def test_library_from_pretrained_dirs_are_used(codecs, debug_cfg, tmp_path):
    """Pieces saved by diffusers/transformers' own save_pretrained load through their from_pretrained."""
    dirs = {}
    for name, module in (("vae", codecs.image.vae), ("audio_vae", codecs.audio.vae),
                         ("vocoder", codecs.audio.vocoder), ("clip", codecs.clip.model), ("clap", codecs.clap.model)):
        dirs[name] = str(tmp_path / name)
        module.save_pretrained(dirs[name])
    cfg = dataclasses.replace(
        debug_cfg,
        image=dataclasses.replace(debug_cfg.image, pretrained=dirs["vae"], block_out_channels=(4, 4, 4, 4)),
        audio=dataclasses.replace(debug_cfg.audio,
                                  vae=dataclasses.replace(debug_cfg.audio.vae, pretrained=dirs["audio_vae"]),
                                  vocoder=dataclasses.replace(debug_cfg.audio.vocoder, pretrained=dirs["vocoder"])),
        clip=dataclasses.replace(debug_cfg.clip, pretrained=dirs["clip"], vision_layers=7),
        clap=dataclasses.replace(debug_cfg.clap, pretrained=dirs["clap"]))
    torch.manual_seed(123)                     # a different init: equality below means the weights were loaded
    loaded = Codecs(cfg)
    assert loaded.cfg.image.block_out_channels == codecs.cfg.image.block_out_channels   # sizes synced back
    assert loaded.cfg.clip.vision_layers == codecs.cfg.clip.vision_layers
    img = torch.randint(0, 256, (1, 16, 16, 3), dtype=torch.uint8)
    wav = torch.randn(1, 3000)
    assert torch.equal(loaded.encode("image", img), codecs.encode("image", img))
    assert torch.allclose(loaded.condition("image", img), codecs.condition("image", img), atol=1e-6)
    assert torch.allclose(loaded.condition("audio", wav), codecs.condition("audio", wav), atol=1e-6)
    z = codecs.encode("audio", wav)
    assert torch.allclose(loaded.decode("audio", z), codecs.decode("audio", z), atol=1e-6)
    # and a Codecs built that way saves to a self-contained directory
    loaded.save_pretrained(tmp_path / "all")
    assert torch.equal(Codecs.from_pretrained(tmp_path / "all").encode("image", img), codecs.encode("image", img))
