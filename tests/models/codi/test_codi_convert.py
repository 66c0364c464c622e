"""`codiray convert codi`: CoDi's released key layout → CoDi folders, every tensor placed or listed."""

from __future__ import annotations

import pytest
import torch
from codi_helpers import randomize, tiny_audio, tiny_image, tiny_text

from codiray.cli import main
from models.codi import CoDi, CoDiConfig
from models.codi.convert import to_codi_state_dict

T = torch.tensor([5, 800])


@pytest.fixture(scope="module")
def original():
    return randomize(CoDi(CoDiConfig(image=tiny_image(), audio=tiny_audio(), text=tiny_text())), seed=11).eval()


@pytest.fixture(scope="module")
def released_files(original, tmp_path_factory):
    """Our model saved the way CoDi ships it: one .pth state dict per diffuser, CoDi's key names."""
    root = tmp_path_factory.mktemp("codi")
    state = to_codi_state_dict(original)
    paths = []
    for name in ("image", "audio", "text"):
        path = root / f"CoDi_{name}_diffuser.pth"
        torch.save({k: v for k, v in state.items() if f".unet_{name}." in k}, path)
        paths.append(path)
    return paths


def _inputs():
    gen = torch.Generator().manual_seed(0)
    latents = {"video": torch.randn(2, 4, 3, 4, 4, generator=gen), "audio": torch.randn(2, 8, 8, 4, generator=gen),
               "text": torch.randn(2, 16, generator=gen)}
    return latents, torch.randn(2, 5, 32, generator=gen)


def _convert(paths, out, *extra) -> int:
    args = ["convert", "codi"]
    for path in paths:
        args += ["--checkpoint", str(path)]
    return main(args + ["--out", str(out), "--num-heads", "4", *extra])


def test_codi_layout_names(released_files):
    keys = set(torch.load(released_files[0], weights_only=True))
    # The names CoDi's openai_unet_2d (video architecture) registers, as read from its code.
    for key in ("model.diffusion_model.unet_image.input_blocks.1.0.0.in_layers.2.weight",
                "model.diffusion_model.unet_image.input_blocks.1.0.1.temporal_attn.to_kv.weight",
                "model.diffusion_model.unet_image.input_blocks.1.0.1.temporal_rel_pos_bias.net.2.weight",
                "model.diffusion_model.unet_image.input_blocks.1.0.1.ff.proj_out.0.g",
                "model.diffusion_model.unet_image.input_blocks.1.0.1.frameshiftblock.out_layers.2.weight",
                "model.diffusion_model.unet_image.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
                "model.diffusion_model.unet_image.input_block_connecters_in.1.0.proj_out.weight",
                "model.diffusion_model.unet_image.output_block_connecters_in.0.0.norm.weight",
                "model.diffusion_model.unet_image.connecters_out.0.0.weight",
                "model.diffusion_model.unet_image.connecters_out.2.0.op.weight",
                "model.diffusion_model.unet_image.middle_block.2.0.emb_layers.1.weight",
                "model.diffusion_model.unet_image.out.2.weight"):
        assert key in keys, key


def test_convert_codi_round_trip_identical_outputs(original, released_files, tmp_path, capsys):
    assert _convert(released_files, tmp_path / "out") == 0
    converted = CoDi.from_pretrained(tmp_path / "out")
    assert converted.config.specs() == original.config.specs()   # every size read back from shapes
    latents, ctx = _inputs()
    with torch.no_grad():
        for request, mode in (({"video": latents["video"]}, "paper"), (latents, "paper"), (latents, "released")):
            a, b = original(request, T, ctx, mode), converted(request, T, ctx, mode)
            for name in request:
                assert torch.equal(a[name], b[name]), (sorted(request), mode, name)
    assert "image: " in capsys.readouterr().out


def test_convert_codi_fp16_files_load(original, released_files, tmp_path):
    half = tmp_path / "half.pth"
    state = {}
    for path in released_files:
        state.update(torch.load(path, weights_only=True))
    torch.save({k: v.half() for k, v in state.items()}, half)
    assert _convert([half], tmp_path / "out") == 0
    converted = CoDi.from_pretrained(tmp_path / "out")
    assert next(converted.parameters()).dtype == torch.float32
    for key, value in converted.state_dict().items():
        unet, _, rest = key[len("unets."):].partition(".")
        assert torch.equal(value, state[f"model.diffusion_model.unet_{unet}.{rest}"].half().float()), key


def test_convert_codi_lists_tensors_it_cannot_place(released_files, tmp_path, capsys):
    state = torch.load(released_files[1], weights_only=True)
    bad = tmp_path / "bad.pth"
    torch.save(dict(state, **{"model.diffusion_model.unet_audio.input_blocks.1.0.extra_gate.weight": torch.ones(3),
                              "model.diffusion_model.unet_audio.middle_block.0.emb_layers.1.bias": torch.ones(5)}), bad)
    assert _convert([bad], tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "cannot place 2 tensor(s)" in err
    assert "unets.audio.input_blocks.1.0.extra_gate.weight" in err
    assert "unets.audio.middle_block.0.emb_layers.1.bias (5,) (expected (128,))" in err
    assert not (tmp_path / "out").exists()

    stray = tmp_path / "stray.pth"
    torch.save(dict(state, **{"cond_stage_model.proj": torch.ones(2)}), stray)
    assert _convert([stray], tmp_path / "out") == 2
    assert "cond_stage_model.proj" in capsys.readouterr().err

    missing = tmp_path / "missing.pth"
    torch.save({k: v for k, v in state.items() if "middle_block.1.proj_in" not in k}, missing)
    assert _convert([missing], tmp_path / "out") == 2
    assert "no tensor for 2 parameter(s): unets.audio.middle_block.1.proj_in" in capsys.readouterr().err


def test_convert_codi_same_unet_twice_is_refused(released_files, tmp_path, capsys):
    assert _convert([released_files[0], released_files[0]], tmp_path / "out") == 2
    assert "the image UNet is also in" in capsys.readouterr().err
