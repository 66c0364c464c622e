"""CoDi's temporal attention in the CLIP vision tower (its video prompt encoder), as released.

References are written here from i-Code-V3's ``clip_modules/modules_video.py`` (SpatioTemporalAttention:
make-a-video Attention with a norm whose statistics run over dim 1, continuous position bias MLP,
GEGLU feed-forward with a channel norm) and ``modeling_clip.py`` (the block runs between a vision layer's
self-attention residual and its MLP, over ``(b l) f c``; last hidden states averaged over frames; a
1-frame video goes the image path), with einsum and explicit reshapes, never through codiray's module."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from models.codecs import Codecs
from models.codecs_config import only
from models.codecs_convert import ConversionError, convert_codi_codecs, load_into
from models.encoders.clip import clip_preprocess
from models.encoders.clip_temporal import TemporalBlock


def ref_norm(x, g):
    mean, var = x.mean(1, keepdim=True), x.var(1, unbiased=False, keepdim=True)
    return (x - mean) * var.clamp(min=1e-5).rsqrt() * g


def ref_block(s: dict, x: torch.Tensor, heads: int) -> torch.Tensor:
    """One released ``temporal_self_attn`` on ``x (n, f, c)``, from its state dict ``s`` (release names)."""
    n, f, c = x.shape
    d = c // heads
    i = torch.arange(f)
    rel = (i[:, None] - i[None, :]).float()
    rel = (torch.sign(rel) * torch.log(rel.abs() + 1))[..., None]
    h = F.silu(rel @ s["temporal_rel_pos_bias.net.0.0.weight"].T + s["temporal_rel_pos_bias.net.0.0.bias"])
    h = F.silu(h @ s["temporal_rel_pos_bias.net.1.0.weight"].T + s["temporal_rel_pos_bias.net.1.0.bias"])
    bias = torch.einsum("ijh->hij", h @ s["temporal_rel_pos_bias.net.2.weight"].T + s["temporal_rel_pos_bias.net.2.bias"])
    xn = ref_norm(x, s["temporal_attn.norm.g"])
    q = xn @ s["temporal_attn.to_q.weight"].T
    k, v = (xn @ s["temporal_attn.to_kv.weight"].T).chunk(2, dim=-1)
    q, k, v = (t.reshape(n, f, heads, d).permute(0, 2, 1, 3) for t in (q, k, v))
    attn = (torch.einsum("bhid,bhjd->bhij", q * d ** -0.5, k) + bias).softmax(-1)
    out = torch.einsum("bhij,bhjd->bhid", attn, v).permute(0, 2, 1, 3).reshape(n, f, c)
    x = out @ s["temporal_attn.to_out.weight"].T + x
    y = torch.einsum("oc,ncf->nof", s["ff.proj_in.0.weight"][..., 0], x.transpose(1, 2))
    a, gate = y.chunk(2, dim=1)
    y = ref_norm(a * F.gelu(gate), s["ff.proj_out.0.g"])
    y = torch.einsum("oc,ncf->nof", s["ff.proj_out.1.weight"][..., 0], y)
    return y.transpose(1, 2) + x


def ref_video_condition(clip_model, blocks: list[dict], video: torch.Tensor, heads: int) -> torch.Tensor:
    """The released FrozenCLIP.encode_vision on a (b, f, h, w, 3) video with f > 1."""
    b, f = video.shape[:2]
    vm = clip_model.vision_model
    pixels = clip_preprocess(video.flatten(0, 1), clip_model.config.vision_config.image_size)
    h = vm.pre_layrnorm(vm.embeddings(pixels))                                   # (b f) l c
    for layer, s in zip(vm.encoder.layers, blocks):
        h = h + layer.self_attn(hidden_states=layer.layer_norm1(h))[0]
        l, c = h.shape[1:]
        t = h.reshape(b, f, l, c).permute(0, 2, 1, 3).reshape(b * l, f, c)          # '(b f) l c -> (b l) f c'
        h = ref_block(s, t, heads).reshape(b, l, f, c).permute(0, 2, 1, 3)          # '(b l) f c -> b f l c'
        h = h + layer.mlp(layer.layer_norm2(h))
    cls = vm.post_layernorm(h.mean(1)[:, 0])
    z = clip_model.visual_projection(cls)
    return (z / z.norm(dim=-1, keepdim=True)).unsqueeze(1)


def randomize(module, scale=0.3, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return module


@pytest.fixture
def clip_cfg(debug_cfg):
    return dataclasses.replace(debug_cfg.clip, temporal=True)


def video(frames, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (2, frames, 32, 32, 3), dtype=torch.uint8, generator=g)


def test_temporal_block_is_the_released_formula():
    block = randomize(TemporalBlock(16, 2))
    x = torch.randn(5, 4, 16)
    s = {k: v.detach() for k, v in block.state_dict().items()}
    with torch.no_grad():
        assert torch.allclose(block(x), ref_block(s, x, heads=2), atol=1e-5)


def test_temporal_layers_start_as_identity_and_one_frame_is_the_image(clip_cfg):
    codecs = Codecs(only(clip=clip_cfg))
    plain = Codecs(only(clip=dataclasses.replace(clip_cfg, temporal=False)))
    plain.clip.model.load_state_dict(codecs.clip.model.state_dict())
    assert len(codecs.clip.temporal) == clip_cfg.vision_layers and plain.clip.temporal is None
    v = video(3)
    with torch.no_grad():
        assert torch.allclose(codecs.condition("video", v), plain.condition("video", v), atol=1e-6)
        randomize(codecs.clip.temporal)
        # the release encodes a 1-frame video as an image: whatever the temporal weights, it is the image prompt
        assert torch.equal(codecs.condition("video", v[:, :1]), codecs.condition("image", v[:, 0]))


def test_nonzero_temporal_layers_change_multiframe_prompts_as_released(clip_cfg):
    codecs = Codecs(only(clip=clip_cfg))
    plain = Codecs(only(clip=dataclasses.replace(clip_cfg, temporal=False)))
    plain.clip.model.load_state_dict(codecs.clip.model.state_dict())
    randomize(codecs.clip.temporal)
    v = video(4)
    blocks = [{k: t.detach() for k, t in b.state_dict().items()} for b in codecs.clip.temporal]
    with torch.no_grad():
        ours = codecs.condition("video", v)
        assert (ours - plain.condition("video", v)).abs().max() > 1e-2
        ref = ref_video_condition(codecs.clip.model, blocks, v, clip_cfg.vision_heads)
    assert torch.allclose(ours, ref, atol=1e-5)


def released_layout(codecs: Codecs, seed=2) -> dict[str, torch.Tensor]:
    """The CLIP part of a CoDi checkpoint: CLIPModel keys + temporal_self_attn inside each vision layer,
    including the two embeddings the released forward never reads."""
    g = torch.Generator().manual_seed(seed)
    out = {"clip.model." + k: v.clone() for k, v in codecs.clip.model.state_dict().items()}
    for i, block in enumerate(codecs.clip.temporal):
        prefix = f"clip.model.vision_model.encoder.layers.{i}.temporal_self_attn."
        out.update({prefix + k: v.clone() for k, v in block.state_dict().items()})
        d = codecs.cfg.clip.vision_hidden_size
        out[prefix + "temporal_attn.pos_embeds"] = torch.randn(1, 30, d, generator=g)
        out[prefix + "temporal_attn.frame_rate_embeds"] = torch.randn(1, 30, d, generator=g)
    return out


def test_converter_loads_codi_temporal_layers(clip_cfg, debug_cfg):
    source = Codecs(only(clip=clip_cfg))
    randomize(source.clip.temporal)
    ckpt = released_layout(source)
    conversion, _ = convert_codi_codecs(ckpt, debug_cfg)       # base has temporal=False: the keys decide
    assert conversion.config.present() == ["clip"] and conversion.config.clip.temporal
    assert sorted(conversion.ignored) == sorted(k for k in ckpt if k.endswith(("pos_embeds", "frame_rate_embeds")))
    codecs = Codecs(conversion.config)
    load_into(codecs, conversion)
    v = video(3)
    with torch.no_grad():
        assert torch.equal(codecs.condition("video", v), source.condition("video", v))
    bad = {k: v for k, v in ckpt.items() if "layers.0.temporal_self_attn.ff." not in k}
    with pytest.raises(ConversionError, match=r"clip\.temporal\.0\.ff"):
        convert_codi_codecs(bad, debug_cfg)
    bad = {**ckpt, "clip.model.vision_model.encoder.layers.0.temporal_self_attn.to_q.weight": torch.zeros(2, 2)}
    with pytest.raises(ConversionError, match=r"temporal_self_attn\.to_q\.weight"):
        convert_codi_codecs(bad, debug_cfg)
