"""`codiray convert sd`: SD 1.x UNets (diffusers folder, LDM single file) give diffusers' exact ε."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
from safetensors.torch import save_file

from codiray.cli import main
from models.codi import CoDi, CoDiConfig
from models.codi.convert import LDM_PREFIX, load_into_larger

from codi_helpers import randomize

# Three levels, two with cross-attention, two layers per block: exercises every index formula.
TINY_SD = dict(sample_size=16, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 64, 64),
               down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
               up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
               cross_attention_dim=32, attention_head_dim=4, norm_num_groups=32)


@pytest.fixture(scope="module")
def sd_unet():
    return randomize(UNet2DConditionModel(**TINY_SD), seed=1).eval()


def _inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 4, 16, 16, generator=gen), torch.tensor([10, 900]),
            torch.randn(2, 7, 32, generator=gen))


def _max_diff(model: CoDi, unet: UNet2DConditionModel) -> float:
    z, t, ctx = _inputs()
    with torch.no_grad():
        ours = model({"image": z}, t, ctx)["image"]
        theirs = unet(z, t, encoder_hidden_states=ctx).sample
    return (ours - theirs).abs().max().item()


def test_convert_sd_diffusers_folder_matches_diffusers(sd_unet, tmp_path, capsys):
    sd_unet.save_pretrained(tmp_path / "unet", safe_serialization=True)
    assert main(["convert", "sd", "--unet", str(tmp_path / "unet"), "--out", str(tmp_path / "codi")]) == 0
    model = CoDi.from_pretrained(tmp_path / "codi")
    spec = model.unets["image"].spec
    assert (spec.channel_mult, spec.num_res_blocks, spec.attention_levels) == ([1, 2, 2], [2, 2, 2], [True, True, False])
    assert not spec.video and not spec.connectors and spec.num_heads == 4
    assert _max_diff(model, sd_unet) <= 1e-4
    # Grown into CoDi's video architecture, the new layers start as the identity: the image ε is
    # still diffusers', and a still video (every frame the same) gets that ε on every frame.
    grown = CoDi(CoDiConfig(image=replace(spec, video=True))).eval()
    fresh = load_into_larger(grown, model.state_dict())
    assert fresh and all(".1.temporal_" in k or ".1.ff." in k or ".1.frameshiftblock." in k for k in fresh)
    assert _max_diff(grown, sd_unet) <= 1e-4
    z, t, ctx = _inputs()
    with torch.no_grad():
        still = grown({"video": z[:, :, None].expand(-1, -1, 3, -1, -1)}, t, ctx)["video"]
        reference = sd_unet(z, t, encoder_hidden_states=ctx).sample
    assert (still - reference[:, :, None]).abs().max().item() <= 1e-4


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_convert_sd_single_file_matches_diffusers(sd_unet, tmp_path, suffix):
    # An original-layout file: our LDM names under model.diffusion_model., beside other SD parts.
    from models.codi.convert_sd import diffusers_unet_to_ldm, read_diffusers_folder
    sd_unet.save_pretrained(tmp_path / "unet", safe_serialization=True)
    state, config, source = read_diffusers_folder(tmp_path / "unet")
    ldm = {LDM_PREFIX + k: v for k, v in diffusers_unet_to_ldm(state, config, source).items()}
    # Independent oracle: diffusers' own LDM→diffusers converter maps our LDM names back exactly.
    back = convert_ldm_unet_checkpoint(ldm, dict(sd_unet.config))
    reference = sd_unet.state_dict()
    assert set(back) == set(reference)
    assert all(torch.equal(back[k], reference[k]) for k in reference)
    full = dict(ldm, **{"first_stage_model.decoder.conv_in.weight": torch.zeros(3)})
    path = tmp_path / f"sd{suffix}"
    if suffix == ".safetensors":
        save_file(full, str(path))
    else:
        torch.save({"state_dict": full, "global_step": torch.tensor(1)}, path)
    assert main(["convert", "sd", "--unet", str(path), "--out", str(tmp_path / "codi"), "--num-heads", "4"]) == 0
    assert _max_diff(CoDi.from_pretrained(tmp_path / "codi"), sd_unet) <= 1e-4


def test_convert_sd_refuses_unplaceable_tensor(sd_unet, tmp_path, capsys):
    sd_unet.save_pretrained(tmp_path / "unet", safe_serialization=True)
    from safetensors.torch import load_file
    weights = tmp_path / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    state["down_blocks.0.extra_adapter.weight"] = torch.zeros(2)
    save_file(state, str(weights))
    assert main(["convert", "sd", "--unet", str(tmp_path / "unet"), "--out", str(tmp_path / "codi")]) == 2
    err = capsys.readouterr().err
    assert "cannot place 1 tensor(s): down_blocks.0.extra_adapter.weight" in err
    assert not (tmp_path / "codi").exists()


class Payload:  # pickled code: a weights-only load must refuse it
    pass


def test_convert_sd_ckpt_with_pickled_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.ckpt"
    torch.save({"model.diffusion_model.x": Payload()}, path)
    assert main(["convert", "sd", "--unet", str(path), "--out", str(tmp_path / "codi")]) == 2
    assert "cannot read tensors" in capsys.readouterr().err


def test_stable_diffusion_size_on_meta():
    with torch.device("meta"):
        model = CoDi(CoDiConfig.stable_diffusion())
    assert sum(p.numel() for p in model.parameters()) == 859_520_964
