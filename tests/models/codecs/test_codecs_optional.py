"""Optional pieces: a ``Codecs`` holds exactly the pieces its config names (``None`` = absent); using an
absent one is one error naming the piece and the modality; save/load and the converters keep absence
(a checkpoint's missing pieces are absent, never random stand-ins); `convert sd --vae` carries only
SD's image VAE and encodes/decodes exactly as diffusers' ``AutoencoderKL`` does."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file

from codiray.cli import main
from common.errors import UsageError
from models.codecs import Codecs
from models.codecs_config import only
from models.codecs_convert import convert_codi_codecs, load_into
from models.codi import CoDi
from test_codecs_convert import codi_layout, ldm_encode_mean, ldm_vae_state


def test_absent_pieces_are_not_built_and_using_one_names_it(debug_cfg, tmp_path):
    codecs = Codecs(only(image=debug_cfg.image, clip=debug_cfg.clip))
    assert {k.split(".")[0] for k in codecs.state_dict()} == {"image", "clip"}
    assert codecs.audio is None and codecs.text is None and codecs.clap is None
    img = torch.randint(0, 256, (1, 16, 16, 3), dtype=torch.uint8)
    with torch.no_grad():
        z = codecs.encode("image", img)
        cond = codecs.condition("video", img[:, None])
    assert z.shape == (1, 4, 8, 8) and cond.shape == (1, 1, 768)
    with pytest.raises(UsageError, match=r"cannot encode 'audio'.*audio VAE \+ vocoder.*audio: null"):
        codecs.encode("audio", torch.zeros(1, 800))
    with pytest.raises(UsageError, match=r"cannot decode 'text'.*Optimus"):
        codecs.decode("text", torch.zeros(1, 16))
    with pytest.raises(UsageError, match=r"cannot condition 'audio'.*CLAP"):
        codecs.condition("audio", torch.zeros(1, 800))
    with pytest.raises(UsageError, match=r"cannot null 'audio'.*CLAP"):
        codecs.null("audio", 1)
    # absence survives save/from_pretrained: null in config.json, no tensors, same outputs
    codecs.save_pretrained(tmp_path / "c")
    saved = json.loads((tmp_path / "c" / "config.json").read_text())
    assert saved["audio"] is None and saved["text"] is None and saved["clap"] is None
    again = Codecs.from_pretrained(tmp_path / "c")
    assert again.cfg.present() == ["image", "clip"] and set(again.state_dict()) == set(codecs.state_dict())
    with torch.no_grad():
        assert torch.equal(again.encode("image", img), z)
        assert torch.equal(again.condition("video", img[:, None]), cond)
    # an only-image folder refuses a weights file that carries another piece's tensors
    full = Codecs(debug_cfg)
    save_file({k: v.contiguous() for k, v in full.state_dict().items() if k.startswith(("image.", "clip.", "clap."))},
              str(tmp_path / "c" / "model.safetensors"))
    with pytest.raises(Exception, match="unexpected"):
        Codecs.from_pretrained(tmp_path / "c")


def test_conversion_marks_pieces_the_checkpoint_lacks_as_absent(debug_cfg, tmp_path):
    source = Codecs(debug_cfg)
    ldm = ldm_vae_state(ch=32, ch_mult=(1, 2), blocks=1, seed=3)
    ckpt = {**{"autokl." + k: v for k, v in ldm.items()},
            **{k: v for k, v in codi_layout(source).items() if k.startswith("clip.model.")}}
    conversion, rest = convert_codi_codecs(ckpt, debug_cfg)       # base names every piece
    assert rest == {} and conversion.config.present() == ["image", "clip"]
    codecs = Codecs(conversion.config)
    load_into(codecs, conversion)
    assert set(codecs.state_dict()) == set(conversion.state) | {
        k for k in codecs.state_dict() if k.endswith("position_ids")}
    img = torch.randint(0, 256, (1, 16, 16, 3), dtype=torch.uint8)
    with torch.no_grad():
        ref = ldm_encode_mean(ldm, img.permute(0, 3, 1, 2).float() / 127.5 - 1, 2, 1) * debug_cfg.image.scale
        assert torch.allclose(codecs.encode("image", img), ref, atol=1e-4)
        assert torch.equal(codecs.condition("image", img), source.condition("image", img))
    with pytest.raises(UsageError, match="Optimus"):
        codecs.encode("text", ["a dog"])


# ---- `codiray convert sd --vae` ------------------------------------------------------------------------

TINY_UNET = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=4,
                 norm_num_groups=32)
TINY_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64), layers_per_block=1,
                down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                norm_num_groups=32)


@pytest.fixture
def sd_folders(tmp_path):
    torch.manual_seed(0)
    UNet2DConditionModel(**TINY_UNET).save_pretrained(tmp_path / "unet", safe_serialization=True)
    vae = AutoencoderKL(**TINY_VAE)
    with torch.no_grad():                       # off the default init, so every tensor matters
        for p in vae.parameters():
            p.add_(0.05 * torch.randn_like(p))
    vae.save_pretrained(tmp_path / "vae", safe_serialization=True)
    return tmp_path


def test_convert_sd_with_diffusers_vae_encodes_and_decodes_as_diffusers(sd_folders, capsys):
    t = sd_folders
    assert main(["convert", "sd", "--unet", str(t / "unet"), "--vae", str(t / "vae"), "--out", str(t / "codi")]) == 0
    model = CoDi.from_pretrained(t / "codi")
    assert model.codecs.cfg.present() == ["image"]
    assert not (t / "codi" / "codecs" / "tokenizers").exists()
    vae = AutoencoderKL.from_pretrained(str(t / "vae")).eval()
    img = torch.randint(0, 256, (2, 16, 16, 3), dtype=torch.uint8)
    x = img.permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        z = model.encode("image", img)
        assert torch.allclose(z, vae.encode(x).latent_dist.mean * 0.18215, atol=1e-5)
        video = model.encode("video", img[None])                       # (1, 4, 2 frames, 2, 2)
        assert torch.allclose(video[0].transpose(0, 1), z, atol=1e-5)
        out = model.decode("image", z)
        theirs = ((vae.decode(z / 0.18215).sample.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    assert out.dtype == torch.uint8 and (out.int() - theirs.permute(0, 2, 3, 1).int()).abs().max() <= 1
    with pytest.raises(UsageError, match="CLIP"):
        model.condition("text", ["a dog"])


def test_convert_sd_with_ldm_vae_file_matches_the_ldm_reference(sd_folders):
    t = sd_folders
    ldm = ldm_vae_state(ch=32, ch_mult=(1, 2), blocks=1, seed=5)
    save_file({"first_stage_model." + k: v for k, v in ldm.items()}, str(t / "sd.safetensors"))
    assert main(["convert", "sd", "--unet", str(t / "unet"), "--vae", str(t / "sd.safetensors"),
                 "--out", str(t / "codi")]) == 0
    model = CoDi.from_pretrained(t / "codi")
    img = torch.randint(0, 256, (1, 16, 16, 3), dtype=torch.uint8)
    with torch.no_grad():
        ref = ldm_encode_mean(ldm, img.permute(0, 3, 1, 2).float() / 127.5 - 1, 2, 1) * 0.18215
        assert torch.allclose(model.encode("image", img), ref, atol=1e-4)
