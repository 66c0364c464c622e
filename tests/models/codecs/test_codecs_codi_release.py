"""A whole CoDi-layout release (UNets + autoencoders + prompt encoders + LDM's DDPM tables) through
`codiray convert codi`: one folder whose `CoDi.from_pretrained` model diffuses AND encodes, decodes and
conditions as the source did; the DDPM tables are checked against closed forms written here from
LDM's definitions, not loaded."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import yaml

from codiray.cli import main
from common.config import to_dict
from common.errors import UsageError
from models.codecs import Codecs
from models.codi import CoDi, CoDiConfig, UNetSpec
from models.codi.convert import to_codi_state_dict
from test_codecs_convert import DIL, codi_layout, hifigan_state, ldm_vae_state


def ldm_ddpm_tables(n=1000, start=0.00085, end=0.012) -> dict[str, np.ndarray]:
    """LDM ``register_schedule`` for beta_schedule="linear" (√β linearly spaced, squared), in float64."""
    betas = np.linspace(start**0.5, end**0.5, n, dtype=np.float64) ** 2
    a = np.cumprod(1 - betas)
    prev = np.append(1.0, a[:-1])
    var = betas * (1 - prev) / (1 - a)
    return {"betas": betas, "alphas_cumprod": a, "alphas_cumprod_prev": prev, "sqrt_alphas_cumprod": np.sqrt(a),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1 - a), "log_one_minus_alphas_cumprod": np.log(1 - a),
            "sqrt_recip_alphas_cumprod": np.sqrt(1 / a), "sqrt_recipm1_alphas_cumprod": np.sqrt(1 / a - 1),
            "posterior_variance": var, "posterior_log_variance_clipped": np.log(np.maximum(var, 1e-20)),
            "posterior_mean_coef1": betas * np.sqrt(prev) / (1 - a),
            "posterior_mean_coef2": (1 - prev) * np.sqrt(1 - betas) / (1 - a)}


def tiny_audio_unet(context_dim: int) -> UNetSpec:
    return UNetSpec(in_channels=8, out_channels=8, model_channels=64, channel_mult=[1, 2], num_res_blocks=[1, 1],
                    attention_levels=[True, False], num_heads=4, context_dim=context_dim, connectors=False,
                    scale_factor=0.9228)


@pytest.fixture
def release(tmp_path, debug_cfg):
    """A tiny CoDi release in CoDi's key layout, the source models, and the codecs config YAML."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(debug_cfg, audio=dataclasses.replace(
        debug_cfg.audio, vocoder=dataclasses.replace(debug_cfg.audio.vocoder, resblock_dilation_sizes=DIL)))
    source_codecs = Codecs(cfg)
    unet = CoDi(CoDiConfig(audio=tiny_audio_unet(context_dim=768)))
    with torch.no_grad():
        for p in unet.parameters():
            p.normal_(0, 0.05)
    ldm = ldm_vae_state(ch=32, ch_mult=(1, 2), blocks=1, seed=3)
    audio_ldm = ldm_vae_state(ch=32, ch_mult=(1, 2), blocks=1, in_ch=1, z=8, seed=4)
    tables = {k: torch.tensor(v, dtype=torch.float32) for k, v in ldm_ddpm_tables().items()}
    ckpt = {**to_codi_state_dict(unet), **codi_layout(source_codecs), **tables,
            **{"autokl." + k: v for k, v in ldm.items()}, **{"audioldm." + k: v for k, v in audio_ldm.items()},
            **{"audioldm.vocoder." + k: v for k, v in hifigan_state().items()}}
    path = tmp_path / "CoDi_release.pth"
    torch.save(ckpt, path)
    yaml_path = tmp_path / "codecs.yaml"
    yaml_path.write_text(yaml.safe_dump(to_dict(cfg)))
    return {"path": path, "ckpt": ckpt, "unet": unet, "codecs": source_codecs, "yaml": yaml_path}


def test_a_whole_release_converts_into_one_folder_that_diffuses_and_codes(release, tmp_path, capsys):
    out = tmp_path / "codi"
    assert main(["convert", "codi", "--checkpoint", str(release["path"]), "--codecs-config", str(release["yaml"]),
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "checked, not loaded" in printed and "warning" not in printed, printed
    model = CoDi.from_pretrained(out)
    assert (out / "codecs" / "model.safetensors").is_file() and model.codecs is not None
    src = release["codecs"]
    with torch.no_grad():
        texts = ["a red dog", "the big boat"]
        assert torch.equal(model.encode("text", texts), src.encode("text", texts))
        assert model.decode("text", src.encode("text", texts)) == src.decode("text", src.encode("text", texts))
        wav = torch.randn(2, 8000)
        context = model.condition("audio", wav)
        assert torch.equal(context, src.condition("audio", wav))
        assert torch.allclose(context.norm(dim=-1), torch.ones(2, 1), atol=1e-5)
        z = model.encode("audio", wav)
        t = torch.tensor([10, 500])
        ref = release["unet"]({"audio": z}, t, context)["audio"]
        assert torch.allclose(model({"audio": z}, t, context)["audio"], ref, atol=1e-5)


def test_ddpm_tables_of_another_schedule_are_reported_not_loaded(release, tmp_path, capsys):
    ckpt = dict(release["ckpt"])
    for name, value in ldm_ddpm_tables(start=0.0001, end=0.02).items():   # DDPM's own linear range
        ckpt[name] = torch.tensor(value, dtype=torch.float32)
    torch.save(ckpt, release["path"])
    assert main(["convert", "codi", "--checkpoint", str(release["path"]), "--codecs-config", str(release["yaml"]),
                 "--out", str(tmp_path / "codi")]) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert any(line.startswith("warning: betas: differs") for line in warnings), warnings
    assert len(warnings) == 12     # every one of LDM's tables is derived from β, so each one differs


def test_a_model_without_codecs_says_so(release):
    with pytest.raises(UsageError, match="no autoencoders/prompt encoders"):
        release["unet"].condition("text", ["a red dog"])
