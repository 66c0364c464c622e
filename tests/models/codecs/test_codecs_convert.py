"""Converters: LDM / HiFi-GAN / CoDi key layouts placed into Codecs give the outputs of the same weights
run in their original layout (functional references written here from the LDM and HiFi-GAN definitions);
unplaceable tensors are refused by name; derived constants are compared, not loaded."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from models.audio import AudioCodec
from models.autoencoders.kl import build_kl_vae, kl_decode, kl_encode
from models.codecs import Codecs
from models.codecs_config import AudioConfig, VocoderConfig
from models.codecs_convert import (ConversionError, convert_codi_codecs, image_vae_from_path, load_into,
                                   vocoder_from_hifigan)

# ---- an LDM KL autoencoder, functionally, over its original keys -----------------------------------------


def ldm_vae_state(ch=32, ch_mult=(1, 2), blocks=1, in_ch=3, z=4, seed=0) -> dict[str, torch.Tensor]:
    """Random tensors with exactly the keys and shapes of LDM's Encoder/Decoder + quant convs."""
    g = torch.Generator().manual_seed(seed)
    s: dict[str, torch.Tensor] = {}

    def conv(name, cin, cout, k):
        s[name + ".weight"] = torch.randn(cout, cin, k, k, generator=g) * (1.0 / (cin * k * k)) ** 0.5
        s[name + ".bias"] = torch.randn(cout, generator=g) * 0.05

    def norm(name, c):
        s[name + ".weight"] = 1 + 0.1 * torch.randn(c, generator=g)
        s[name + ".bias"] = 0.1 * torch.randn(c, generator=g)

    def resnet(name, cin, cout):
        norm(name + ".norm1", cin), conv(name + ".conv1", cin, cout, 3)
        norm(name + ".norm2", cout), conv(name + ".conv2", cout, cout, 3)
        if cin != cout:
            conv(name + ".nin_shortcut", cin, cout, 1)

    def attn(name, c):
        norm(name + ".norm", c)
        for p in ("q", "k", "v", "proj_out"):
            conv(f"{name}.{p}", c, c, 1)

    levels = len(ch_mult)
    conv("encoder.conv_in", in_ch, ch, 3)
    block_in = ch
    for i, m in enumerate(ch_mult):
        for j in range(blocks):
            resnet(f"encoder.down.{i}.block.{j}", block_in, ch * m)
            block_in = ch * m
        if i != levels - 1:
            conv(f"encoder.down.{i}.downsample.conv", block_in, block_in, 3)
    resnet("encoder.mid.block_1", block_in, block_in), attn("encoder.mid.attn_1", block_in)
    resnet("encoder.mid.block_2", block_in, block_in)
    norm("encoder.norm_out", block_in), conv("encoder.conv_out", block_in, 2 * z, 3)
    conv("quant_conv", 2 * z, 2 * z, 1), conv("post_quant_conv", z, z, 1)
    block_in = ch * ch_mult[-1]
    conv("decoder.conv_in", z, block_in, 3)
    resnet("decoder.mid.block_1", block_in, block_in), attn("decoder.mid.attn_1", block_in)
    resnet("decoder.mid.block_2", block_in, block_in)
    for i in reversed(range(levels)):
        for j in range(blocks + 1):
            resnet(f"decoder.up.{i}.block.{j}", block_in, ch * ch_mult[i])
            block_in = ch * ch_mult[i]
        if i != 0:
            conv(f"decoder.up.{i}.upsample.conv", block_in, block_in, 3)
    norm("decoder.norm_out", block_in), conv("decoder.conv_out", block_in, in_ch, 3)
    return s


def _gn(s, name, x):
    return F.group_norm(x, 32, s[name + ".weight"], s[name + ".bias"], eps=1e-6)


def _conv(s, name, x, stride=1, padding=None):
    w = s[name + ".weight"]
    return F.conv2d(x, w, s[name + ".bias"], stride=stride, padding=w.shape[-1] // 2 if padding is None else padding)


def _resnet(s, name, x):
    h = _conv(s, name + ".conv1", F.silu(_gn(s, name + ".norm1", x)))
    h = _conv(s, name + ".conv2", F.silu(_gn(s, name + ".norm2", h)))
    return (_conv(s, name + ".nin_shortcut", x) if name + ".nin_shortcut.weight" in s else x) + h


def _attn(s, name, x):
    b, c, hh, ww = x.shape
    h = _gn(s, name + ".norm", x)
    q, k, v = (_conv(s, f"{name}.{p}", h).reshape(b, c, hh * ww) for p in ("q", "k", "v"))
    w = torch.softmax(torch.einsum("bci,bcj->bij", q, k) * c ** -0.5, dim=2)
    out = torch.einsum("bcj,bij->bci", v, w).reshape(b, c, hh, ww)
    return x + _conv(s, name + ".proj_out", out)


def ldm_encode_mean(s, x, levels, blocks):
    h = _conv(s, "encoder.conv_in", x)
    for i in range(levels):
        for j in range(blocks):
            h = _resnet(s, f"encoder.down.{i}.block.{j}", h)
        if i != levels - 1:
            h = _conv(s, f"encoder.down.{i}.downsample.conv", F.pad(h, (0, 1, 0, 1)), stride=2, padding=0)
    h = _resnet(s, "encoder.mid.block_2", _attn(s, "encoder.mid.attn_1", _resnet(s, "encoder.mid.block_1", h)))
    h = _conv(s, "encoder.conv_out", F.silu(_gn(s, "encoder.norm_out", h)))
    moments = _conv(s, "quant_conv", h)
    return moments.chunk(2, dim=1)[0]


def ldm_decode(s, z, levels, blocks):
    h = _conv(s, "decoder.conv_in", _conv(s, "post_quant_conv", z))
    h = _resnet(s, "decoder.mid.block_2", _attn(s, "decoder.mid.attn_1", _resnet(s, "decoder.mid.block_1", h)))
    for i in reversed(range(levels)):
        for j in range(blocks + 1):
            h = _resnet(s, f"decoder.up.{i}.block.{j}", h)
        if i != 0:
            h = _conv(s, f"decoder.up.{i}.upsample.conv", F.interpolate(h, scale_factor=2.0, mode="nearest"))
    return _conv(s, "decoder.conv_out", F.silu(_gn(s, "decoder.norm_out", h)))


# ---- HiFi-GAN, functionally, over its original keys ------------------------------------------------------

RATES, UP_K, RES_K, DIL = (5, 4, 2, 2, 2), (16, 16, 8, 4, 4), (3, 7), ((1, 3, 5), (1, 3, 5))


def hifigan_state(c0=32, mels=64, seed=1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = {}

    def put(name, shape):
        fan = shape[1] * shape[2] if name.startswith(("conv", "res")) else shape[0] * shape[2]
        s[name + ".weight"] = torch.randn(*shape, generator=g) * (1.0 / fan) ** 0.5
        s[name + ".bias"] = torch.randn(shape[1] if name.startswith("ups") else shape[0], generator=g) * 0.05

    put("conv_pre", (c0, mels, 7))
    c = c0
    for i, (u, k) in enumerate(zip(RATES, UP_K)):
        put(f"ups.{i}", (c, c // 2, k))          # ConvTranspose1d weight: (in, out, k)
        c //= 2
        for j, (rk, dil) in enumerate(zip(RES_K, DIL)):
            for m in range(len(dil)):
                put(f"resblocks.{i * len(RES_K) + j}.convs1.{m}", (c, c, rk))
                put(f"resblocks.{i * len(RES_K) + j}.convs2.{m}", (c, c, rk))
    put("conv_post", (1, c, 7))
    return s


def hifigan_reference(s, mel):
    """HiFi-GAN generator (Kong et al. 2020, ResBlock1) on (b, mels, T) -> (b, T·160 + 32)."""
    def c1(name, x, dilation=1):
        w = s[name + ".weight"]
        return F.conv1d(x, w, s[name + ".bias"], dilation=dilation, padding=(w.shape[-1] * dilation - dilation) // 2)

    x = c1("conv_pre", mel)
    for i, (u, k) in enumerate(zip(RATES, UP_K)):
        x = F.conv_transpose1d(F.leaky_relu(x, 0.1), s[f"ups.{i}.weight"], s[f"ups.{i}.bias"], stride=u,
                               padding=(k - u) // 2)
        total = 0
        for j, dil in enumerate(DIL):
            y, r = x, f"resblocks.{i * len(RES_K) + j}"
            for m, d in enumerate(dil):
                t = c1(f"{r}.convs1.{m}", F.leaky_relu(y, 0.1), dilation=d)
                y = y + c1(f"{r}.convs2.{m}", F.leaky_relu(t, 0.1))
            total = total + y
        x = total / len(DIL)
    return torch.tanh(c1("conv_post", F.leaky_relu(x))).squeeze(1)


# ---- tests -----------------------------------------------------------------------------------------------

def test_image_vae_from_ldm_file_matches_the_ldm_reference(tmp_path):
    ldm = ldm_vae_state(ch=32, ch_mult=(1, 2), blocks=1)
    save_file({"first_stage_model." + k: v for k, v in ldm.items()}, str(tmp_path / "sd.safetensors"))
    cfg, state = image_vae_from_path(tmp_path / "sd.safetensors")
    assert cfg.block_out_channels == (32, 64) and cfg.layers_per_block == 1 and cfg.latent_channels == 4
    vae = build_kl_vae(cfg)
    vae.load_state_dict(state, strict=True)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        mean = kl_encode(vae, x, 1.0)
        ref = ldm_encode_mean(ldm, x, 2, 1)
        assert torch.allclose(mean, ref, atol=1e-4), (mean - ref).abs().max()
        z = torch.randn(2, 4, 8, 8)
        assert torch.allclose(kl_decode(vae, z, 1.0), ldm_decode(ldm, z, 2, 1), atol=1e-4)
    # a diffusers folder is accepted too
    vae.save_pretrained(tmp_path / "vae_dir")
    cfg2, state2 = image_vae_from_path(tmp_path / "vae_dir")
    assert cfg2.block_out_channels == (32, 64) and torch.equal(state2["decoder.conv_out.weight"],
                                                               state["decoder.conv_out.weight"])


def test_image_vae_refuses_tensors_it_cannot_place(tmp_path):
    ldm = ldm_vae_state(ch=32, ch_mult=(1, 2), blocks=1)
    ldm["encoder.mystery.weight"] = torch.zeros(3)
    save_file(ldm, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ConversionError, match="encoder.mystery.weight"):
        image_vae_from_path(tmp_path / "bad.safetensors")
    with pytest.raises(ConversionError, match="not found"):
        image_vae_from_path(tmp_path / "missing.ckpt")


def test_vocoder_from_hifigan_matches_the_reference():
    hifi = hifigan_state()
    defaults = VocoderConfig(resblock_dilation_sizes=DIL)
    cfg, state = vocoder_from_hifigan(hifi, "vocoder.", defaults)
    assert cfg.upsample_initial_channel == 32 and cfg.upsample_kernel_sizes == UP_K and cfg.resblock_kernel_sizes == RES_K
    codec = AudioCodec(AudioConfig(vocoder=cfg))
    codec.vocoder.load_state_dict(state, strict=False)
    mel = torch.randn(2, 12, 64)
    with torch.no_grad():
        ref = hifigan_reference(hifi, mel.transpose(1, 2))
        assert ref.shape == (2, 12 * 160 + 32)
        ours = codec.vocode(mel)
    assert ours.shape == (2, 12 * 160)
    assert torch.allclose(ours, ref[:, : 12 * 160], atol=1e-5)
    with pytest.raises(ConversionError, match="weight_g"):
        vocoder_from_hifigan({**hifi, "conv_pre.weight_g": torch.ones(1)}, "vocoder.", defaults)


def _stft_forward_basis(n=1024):
    """Windowed real/imaginary DFT rows, written from the definition (not from the code under test)."""
    k, t = np.arange(n // 2 + 1)[:, None], np.arange(n)[None]
    w = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)
    basis = np.vstack([np.cos(2 * np.pi * k * t / n), -np.sin(2 * np.pi * k * t / n)]) * w
    return torch.tensor(basis[:, None, :], dtype=torch.float32)


def codi_layout(codecs: Codecs) -> dict[str, torch.Tensor]:
    """A CoDi-layout checkpoint of ``codecs``' Optimus/CLIP/CLAP weights (renamed by hand, + derived buffers)."""
    out = {}
    for k, v in codecs.text.encoder.bert.state_dict().items():
        out["optimus.encoder." + k] = v.clone()
    out["optimus.encoder.linear.weight"] = codecs.text.encoder.linear.weight.detach().clone()
    n = codecs.text.decoder.gpt2.config.n_positions
    for k, v in codecs.text.decoder.gpt2.state_dict().items():
        out["optimus.decoder." + k] = v.clone()
    for i in range(codecs.text.decoder.gpt2.config.n_layer):
        out[f"optimus.decoder.transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(n, n)).view(1, 1, n, n)
        out[f"optimus.decoder.transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    out["optimus.decoder.transformer.linear.weight"] = codecs.text.decoder.linear.weight.detach().clone()
    out["optimus.decoder.transformer.linear_emb.weight"] = codecs.text.decoder.linear_emb.weight.detach().clone()
    out["optimus.encoder.embeddings.position_ids"] = torch.arange(codecs.cfg.text.bert.max_position_embeddings)[None]
    for k, v in codecs.clip.model.state_dict().items():
        out["clip.model." + k] = v.clone()
    out["clip.model.text_model.embeddings.position_ids"] = torch.arange(codecs.cfg.clip.max_position_embeddings)[None]
    for k, v in codecs.clap.model.state_dict().items():
        out["clap.model." + k] = v.clone()
    return out


def test_codi_checkpoint_is_placed_whole_and_reproduces_outputs(debug_cfg):
    source = Codecs(debug_cfg)
    ldm = ldm_vae_state(ch=32, ch_mult=(1, 2), blocks=1, seed=3)
    audio_ldm = ldm_vae_state(ch=32, ch_mult=(1, 2), blocks=1, in_ch=1, z=8, seed=4)
    hifi = hifigan_state()
    ckpt = {**{"autokl." + k: v for k, v in ldm.items()}, **{"audioldm." + k: v for k, v in audio_ldm.items()},
            **{"audioldm.vocoder." + k: v for k, v in hifi.items()}, **codi_layout(source),
            "audioldm.fn_STFT.mel_basis": torch.tensor(_np_mel(), dtype=torch.float32),
            "audioldm.fn_STFT.stft_fn.forward_basis": _stft_forward_basis(),
            "model.diffusion_model.x.weight": torch.zeros(1), "betas": torch.zeros(3)}
    base = dataclasses.replace(debug_cfg, audio=dataclasses.replace(
        debug_cfg.audio, vocoder=dataclasses.replace(debug_cfg.audio.vocoder, resblock_dilation_sizes=DIL)))
    conversion, rest = convert_codi_codecs(ckpt, base)
    assert set(rest) == {"model.diffusion_model.x.weight", "betas"}          # left to the caller
    assert conversion.mismatches == []
    assert {"audioldm.fn_STFT.mel_basis", "audioldm.fn_STFT.stft_fn.forward_basis",
            "optimus.decoder.transformer.h.0.attn.bias"} <= set(conversion.derived_ok)
    cfg = conversion.config
    assert cfg.image.block_out_channels == (32, 64) and cfg.audio.vae.latent_channels == 8
    assert cfg.clip == source.cfg.clip and cfg.clap == source.cfg.clap and cfg.text == source.cfg.text
    codecs = Codecs(cfg)
    load_into(codecs, conversion)
    with torch.no_grad():
        img = torch.randint(0, 256, (1, 16, 16, 3), dtype=torch.uint8)
        assert torch.allclose(codecs.encode("image", img),
                              ldm_encode_mean(ldm, img.permute(0, 3, 1, 2).float() / 127.5 - 1, 2, 1) * cfg.image.scale,
                              atol=1e-4)
        mel = codecs.audio.waveform_to_mel(torch.randn(1, 4000)).unsqueeze(1)
        assert torch.allclose(kl_encode(codecs.audio.vae, mel, 1.0), ldm_encode_mean(audio_ldm, mel, 2, 1), atol=1e-4)
        m = torch.randn(1, 5, 64)
        assert torch.allclose(codecs.audio.vocode(m), hifigan_reference(hifi, m.transpose(1, 2))[:, :800], atol=1e-5)
        texts = ["a red dog", "the big boat"]
        assert torch.equal(codecs.encode("text", texts), source.encode("text", texts))
        assert codecs.decode("text", source.encode("text", texts)) == source.decode("text", source.encode("text", texts))
        assert torch.equal(codecs.condition("image", img), source.condition("image", img))
        wav = torch.randn(1, 8000)
        assert torch.equal(codecs.condition("audio", wav), source.condition("audio", wav))


def _np_mel():
    from test_codecs_melspec import numpy_mel_basis
    return numpy_mel_basis()


def test_codi_conversion_refuses_strays_and_reports_mismatched_constants(debug_cfg):
    source = Codecs(debug_cfg)
    ckpt = codi_layout(source)
    with pytest.raises(ConversionError, match="optimus.encoder.extra.weight"):
        convert_codi_codecs({**ckpt, "optimus.encoder.extra.weight": torch.zeros(2)}, debug_cfg)
    with pytest.raises(ConversionError, match="optimus.sampler.w"):
        convert_codi_codecs({**ckpt, "optimus.sampler.w": torch.zeros(2)}, debug_cfg)
    with pytest.raises(ConversionError, match="audioldm.fn_STFT.window"):
        ldm = {"audioldm." + k: v for k, v in ldm_vae_state(in_ch=1, z=8).items()}
        hifi = {"audioldm.vocoder." + k: v for k, v in hifigan_state().items()}
        base = dataclasses.replace(debug_cfg, audio=dataclasses.replace(
            debug_cfg.audio, vocoder=dataclasses.replace(debug_cfg.audio.vocoder, resblock_dilation_sizes=DIL)))
        convert_codi_codecs({**ldm, **hifi, "audioldm.fn_STFT.window": torch.zeros(3)}, base)
    bad = dict(ckpt)
    bad["optimus.decoder.transformer.h.0.attn.bias"] = torch.ones_like(bad["optimus.decoder.transformer.h.0.attn.bias"])
    conversion, _ = convert_codi_codecs(bad, debug_cfg)
    assert len(conversion.mismatches) == 1 and "h.0.attn.bias" in conversion.mismatches[0]
    assert not any(k.endswith((".attn.bias", ".attn.masked_bias")) for k in conversion.state)  # compared only
