"""CoDi's diffusers: video layers, latent shift, joint generation modes, sizes, bf16, checkpointing."""

from __future__ import annotations

import copy

import pytest
import torch
from codi_helpers import randomize, tiny_audio, tiny_image, tiny_text
from einops import rearrange

from models.codi import CoDi, CoDiConfig, audio_unet, image_unet, text_unet
from models.codi.convert import infer_unet_spec, load_into_larger
import models.codi.blocks as blocks_module
from models.codi.video import frame_axis_layer_norm, latent_shift, token_shift


def _ctx(b=2, seed=0):
    return torch.randn(b, 5, 32, generator=torch.Generator().manual_seed(seed))


def _latent(shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


T = torch.tensor([3, 700])


def _grown(specs_small: dict, specs_large: dict, seed=0):
    """A randomised ("trained") small model and the large model grown from it (new layers at init)."""
    small = randomize(CoDi(CoDiConfig(**specs_small)), seed=seed).eval()
    large = CoDi(CoDiConfig(**specs_large)).eval()
    fresh = load_into_larger(large, small.state_dict())
    return small, large, fresh


def test_video_model_at_init_equals_image_model_frame_by_frame():
    image, video, fresh = _grown({"image": tiny_image(video=False, connectors=False)},
                                 {"image": tiny_image(video=True, connectors=False)})
    assert fresh and all(".1.temporal_attn." in k or ".1.ff." in k or ".1.frameshiftblock." in k
                         or ".1.temporal_rel_pos_bias." in k for k in fresh)
    z = _latent((2, 4, 5, 4, 4), 1)  # b c f h w
    with torch.no_grad():
        eps_video = video({"video": z}, T, _ctx())["video"]
        frames = rearrange(z, "b c f h w -> (b f) c h w")
        eps_frames = image({"image": frames}, T.repeat_interleave(5), _ctx().repeat_interleave(5, 0))["image"]
    assert eps_video.shape == z.shape
    torch.testing.assert_close(eps_video, rearrange(eps_frames, "(b f) c h w -> b c f h w", f=5), atol=1e-5, rtol=0)
    # ...and trained video layers do mix frames: perturbing frame 0 then changes later frames.
    randomize(video, seed=3)
    z2 = z.clone()
    z2[:, :, 0] += 1.0
    with torch.no_grad():
        a, b = video({"video": z}, T, _ctx())["video"], video({"video": z2}, T, _ctx())["video"]
    assert (a[:, :, 2:] - b[:, :, 2:]).abs().max() > 1e-3


def test_latent_shift_moves_chunk_i_by_i_frames():
    x = _latent((2, 16, 6, 3, 3), 2)   # 8 chunks of 2 channels
    out = latent_shift(x)
    for i in range(8):
        chunk = slice(2 * i, 2 * i + 2)
        for f in range(6):
            expected = x[:, chunk, f - i] if f >= i else torch.zeros_like(x[:, chunk, 0])
            assert torch.equal(out[:, chunk, f], expected), (i, f)


def test_token_shift_moves_second_half_one_frame():
    x = _latent((1, 4, 3, 2, 2), 3)
    out = token_shift(x)
    assert torch.equal(out[:, :2], x[:, :2])
    assert torch.equal(out[:, 2:, 1:], x[:, 2:, :-1]) and not out[:, 2:, 0].any()


def test_temporal_layer_norm_normalises_over_frames():
    x = _latent((6, 5, 8), 4) * 3 + 2        # (b·h·w, f, c)
    y = frame_axis_layer_norm(x, torch.ones(8))
    torch.testing.assert_close(y.mean(dim=1), torch.zeros(6, 8), atol=1e-5, rtol=0)   # per channel, over frames
    torch.testing.assert_close(y.var(dim=1, unbiased=False), torch.ones(6, 8), atol=1e-3, rtol=0)
    assert y.mean(dim=2).abs().max() > 1e-2                                            # not over channels


def _joint_model(seed=0):
    return randomize(CoDi(CoDiConfig(image=tiny_image(), audio=tiny_audio(), text=tiny_text())), seed=seed).eval()


@pytest.fixture(scope="module")
def joint_model():
    return _joint_model()


def test_joint_paper_mode_attends_to_the_other_modality_released_mode_to_its_own(joint_model):
    model = joint_model
    video, audio = _latent((2, 4, 3, 4, 4), 5), _latent((2, 8, 8, 4), 6)
    other_audio = _latent((2, 8, 8, 4), 7)
    with torch.no_grad():
        for mode, changes in (("paper", True), ("released", False)):
            a = model({"video": video, "audio": audio}, T, _ctx(), joint_context=mode)
            b = model({"video": video, "audio": other_audio}, T, _ctx(), joint_context=mode)
            delta = (a["video"] - b["video"]).abs().max().item()
            assert (delta > 1e-5) if changes else (delta == 0.0), (mode, delta)
            assert a["audio"].shape == audio.shape
        # Joint differs from the UNet alone once the connectors are trained (not a no-op path).
        alone = model({"video": video}, T, _ctx())["video"]
        assert (alone - a["video"]).abs().max() > 1e-3


def test_three_way_joint_generation_shapes_and_paper_context(joint_model):
    model = joint_model
    latents = {"image": _latent((2, 4, 4, 4), 1), "audio": _latent((2, 8, 8, 4), 2), "text": _latent((2, 16), 3)}
    with torch.no_grad():
        out = model(latents, T, _ctx())
        changed = model(dict(latents, text=_latent((2, 16), 4)), T, _ctx())
    assert {k: v.shape for k, v in out.items()} == {k: v.shape for k, v in latents.items()}
    assert (out["image"] - changed["image"]).abs().max() > 1e-5   # image attends to text's V (averaged with audio's)


def test_fresh_connectors_leave_each_unet_unchanged():
    small = {"image": tiny_image(video=False, connectors=False),
             "audio": tiny_audio().__class__(**{**tiny_audio().__dict__, "connectors": False})}
    _, joint, fresh = _grown(small, {"image": tiny_image(video=False), "audio": tiny_audio()})
    assert any("connecters_out" in k for k in fresh) and any("connecters_in" in k for k in fresh)
    image, audio = _latent((2, 4, 4, 4), 8), _latent((2, 8, 8, 4), 9)
    with torch.no_grad():
        both = joint({"image": image, "audio": audio}, T, _ctx())
        torch.testing.assert_close(both["image"], joint({"image": image}, T, _ctx())["image"], atol=1e-6, rtol=0)
        torch.testing.assert_close(both["audio"], joint({"audio": audio}, T, _ctx())["audio"], atol=1e-6, rtol=0)


def test_missing_unet_is_a_clear_error():
    model = CoDi(CoDiConfig(image=tiny_image(video=False)))
    with pytest.raises(ValueError, match="no audio UNet"):
        model({"audio": _latent((2, 8, 8, 4), 0)}, T, _ctx())
    with pytest.raises(ValueError, match="no video layers"):
        model({"video": _latent((2, 4, 2, 4, 4), 0)}, T, _ctx())


def test_released_sizes_on_meta():
    with torch.device("meta"):
        model = CoDi(CoDiConfig.released())
        bare = CoDi(CoDiConfig(image=image_unet(video=False, connectors=False)))
    count = lambda module: sum(p.numel() for p in module.parameters())
    image = model.unets["image"]
    extras = sum(count(getattr(image, n)) for n in ("connecters_out", "input_block_connecters_in",
                                                     "output_block_connecters_in"))
    assert (count(image), extras) == (1_772_784_247, 350_756_396)
    assert count(model.unets["audio"]) == 431_309_032
    assert count(model.unets["text"]) == 2_048_385_408
    assert count(bare) == 859_520_964
    # The converter reads the released sizes back from the tensor shapes alone.
    for name, spec in (("image", image_unet()), ("audio", audio_unet()), ("text", text_unet())):
        assert infer_unet_spec(model.unets[name].state_dict(), 8, spec.scale_factor) == spec, name


def test_bf16_forward_tracks_fp32(joint_model, monkeypatch):
    model = copy.deepcopy(joint_model)
    latents = {"video": _latent((2, 4, 3, 4, 4), 1), "audio": _latent((2, 8, 8, 4), 2), "text": _latent((2, 16), 3)}
    with torch.no_grad():
        ref = model(latents, T, _ctx())
        model = model.to(torch.bfloat16)
        low_latents = {k: v.bfloat16() for k, v in latents.items()}
        low = model(low_latents, T, _ctx().bfloat16())
        # CoDi's video LayerNorms switch eps from 1e-5 (fp32) to 1e-3 (other dtypes), a model change of
        # its own; with eps pinned, video tracks fp32 like the rest.
        monkeypatch.setattr(blocks_module, "norm_eps", lambda x: 1e-5)
        pinned = model(low_latents, T, _ctx().bfloat16())
    rel = lambda out, name: ((out[name].float() - ref[name]).norm() / ref[name].norm()).item()
    for name in latents:
        assert low[name].dtype == torch.bfloat16 and torch.isfinite(low[name]).all()
        assert rel(pinned, name) < 0.02, name
    assert rel(low, "audio") < 0.02 and rel(low, "text") < 0.02


def test_gradient_checkpointing_gives_the_same_gradients(joint_model):
    latents = {"video": _latent((1, 4, 2, 4, 4), 1), "audio": _latent((1, 8, 8, 4), 2), "text": _latent((1, 16), 3)}
    grads = []
    for checkpointing in (False, True):
        model = copy.deepcopy(joint_model)
        model.set_gradient_checkpointing(checkpointing)
        out = model(latents, T[:1], _ctx(1))
        sum((v ** 2).mean() for v in out.values()).backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 100
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], atol=1e-6, rtol=1e-5, msg=k)


def test_codi_diffuses_latents_so_x0_is_never_clipped():
    from models.diffusion.config import SamplingConfig, resolve_x0_clip

    from models.codi import CoDiConfig

    cfg = CoDiConfig.released()
    assert cfg.diffusion.data_space == "latent"
    assert resolve_x0_clip(cfg.diffusion, SamplingConfig().clip_x0) is None
