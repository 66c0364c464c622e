"""CoDi's video layers: temporal attention, token-shift feed-forward and latent shift (CoDi §3.3).

``SpatioTemporalAttention`` follows every ResBlock of the image UNet. It is the identity on 4-D
image input, so images and videos share one network; on ``b c f h w`` video it runs
(1) self-attention over the frames at each spatial position, with learned position and frame-rate
embeddings and a continuous relative position bias, (2) a GEGLU feed-forward whose hidden channels
are half shifted forward one frame, (3) the latent shift of ``ResBlockFrameShift``. Every branch's
output projection starts at zero, so adding these layers to a trained image UNet changes nothing
until they train. Parameter names follow CoDi's ``modules_video.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .blocks import GroupNorm32, ResBlock, TimestepBlock, norm_over_dim1, per_frame, zero_

MAX_FRAMES = 30          # learned temporal position / frame-rate embeddings
DEFAULT_FRAMERATE = 4    # CoDi always passes the default
SHIFT_CHUNKS = 8         # latent shift: chunk i of the channels moves i frames


def frame_axis_layer_norm(x: Tensor, g: Tensor) -> Tensor:
    """CoDi's temporal ``LayerNorm`` on (b·h·w, f, c) tokens: it normalises over axis 1, the FRAMES.

    Reproduced as released (a channel LayerNorm was presumably meant); ``g`` scales the channels.
    """
    return norm_over_dim1(x, g)


def token_shift(x: Tensor) -> Tensor:
    """Second half of the channels of ``b c f h w`` moved one frame forward (frame 0 gets zeros)."""
    keep, shift = x.chunk(2, dim=1)
    return torch.cat([keep, F.pad(shift, (0, 0, 0, 0, 1, -1))], dim=1)


def latent_shift(h: Tensor, chunks: int = SHIFT_CHUNKS) -> Tensor:
    """Split the channels of ``b c f h w`` into ``chunks``; chunk i moves i frames forward, zero-filled."""
    parts = []
    for i, part in enumerate(h.chunk(chunks, dim=1)):
        frames = part.shape[2]
        parts.append(F.pad(part, (0, 0, 0, 0, min(i, frames), -min(i, frames))) if i else part)
    return torch.cat(parts, dim=1)


def log_relative_positions(frames: int, device=None) -> Tensor:
    """sign(i − j) · log(1 + |i − j|) for every frame pair: (f, f, 1)."""
    pos = torch.arange(frames, device=device, dtype=torch.float32)
    rel = pos[:, None] - pos[None, :]
    return (torch.sign(rel) * torch.log1p(rel.abs()))[..., None]


class FrameAxisLayerNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.g = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return frame_axis_layer_norm(x, self.g)


class ChanLayerNorm(nn.Module):
    """LayerNorm over the channel axis of ``b c f h w``."""

    def __init__(self, dim: int):
        super().__init__()
        self.g = nn.Parameter(torch.ones(dim, 1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return norm_over_dim1(x, self.g)


class ContinuousPositionBias(nn.Module):
    """MLP of the log relative frame distance → one attention bias per head (Swin-v2 style)."""

    def __init__(self, dim: int, heads: int, layers: int = 2):
        super().__init__()
        self.net = nn.ModuleList([nn.Sequential(nn.Linear(1, dim), nn.SiLU())])
        self.net.extend(nn.Sequential(nn.Linear(dim, dim), nn.SiLU()) for _ in range(layers - 1))
        self.net.append(nn.Linear(dim, heads))

    def forward(self, frames: int) -> Tensor:
        weight = self.net[-1].weight
        h = log_relative_positions(frames, weight.device).to(weight.dtype)
        for layer in self.net:
            h = layer(h)
        return rearrange(h, "i j h -> h i j")


class TemporalAttention(nn.Module):
    """Self-attention over the f frames of each (b·h·w) token sequence, zero-init output."""

    def __init__(self, dim: int, dim_head: int, heads: int):
        super().__init__()
        inner = dim_head * heads
        self.heads = heads
        self.norm = FrameAxisLayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = zero_(nn.Linear(inner, dim, bias=False))
        self.pos_embeds = nn.Parameter(torch.randn(1, MAX_FRAMES, dim))
        self.frame_rate_embeds = nn.Parameter(torch.randn(1, MAX_FRAMES, dim))

    def forward(self, x: Tensor, bias: Tensor, framerate: int = DEFAULT_FRAMERATE) -> Tensor:
        frames = x.shape[1]
        if frames > MAX_FRAMES:
            raise ValueError(f"temporal attention supports at most {MAX_FRAMES} frames, got {frames}")
        x = x + self.pos_embeds[:, :frames] + self.frame_rate_embeds[:, framerate - 1:framerate]
        x = self.norm(x)
        q = self.to_q(x)
        k, v = self.to_kv(x).chunk(2, dim=-1)
        q, k, v = (rearrange(t, "n f (h d) -> n h f d", h=self.heads) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))  # softmax(qkᵀ/√d + B) v
        return self.to_out(rearrange(out, "n h f d -> n f (h d)"))


class GEGLU3d(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        x, gate = x.chunk(2, dim=1)
        return x * F.gelu(gate)


class TemporalFeedForward(nn.Module):
    """1×1×1 GEGLU feed-forward (inner 8/3·dim) with token shift between in and out projections."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        inner = int(dim * mult * 2 / 3)
        self.proj_in = nn.Sequential(nn.Conv3d(dim, inner * 2, 1, bias=False), GEGLU3d())
        self.proj_out = nn.Sequential(ChanLayerNorm(inner), zero_(nn.Conv3d(inner, dim, 1, bias=False)))

    def forward(self, x: Tensor) -> Tensor:
        return self.proj_out(token_shift(self.proj_in(x)))


class ResBlockFrameShift(nn.Module):
    """x + latent_shift(zero-init conv3×3(SiLU(GroupNorm(x)))) — the per-frame conv sees neighbours' channels."""

    def __init__(self, dim: int):
        super().__init__()
        self.out_layers = nn.Sequential(GroupNorm32(dim), nn.SiLU(), zero_(nn.Conv2d(dim, dim, 3, padding=1)))

    def forward(self, x: Tensor) -> Tensor:
        return x + latent_shift(per_frame(self.out_layers, x))


class SpatioTemporalAttention(nn.Module):
    """Temporal attention, token-shift feed-forward and latent shift on video; identity on images."""

    def __init__(self, dim: int, dim_head: int, heads: int = 8):
        super().__init__()
        self.frameshiftblock = ResBlockFrameShift(dim)
        self.temporal_attn = TemporalAttention(dim, dim_head, heads)
        self.temporal_rel_pos_bias = ContinuousPositionBias(dim // 2, heads)
        self.ff = TemporalFeedForward(dim)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 5:
            return x
        b, c, f, h, w = x.shape
        tokens = rearrange(x, "b c f h w -> (b h w) f c")
        tokens = self.temporal_attn(tokens, self.temporal_rel_pos_bias(f)) + tokens
        x = rearrange(tokens, "(b h w) f c -> b c f h w", b=b, h=h, w=w)
        x = self.ff(x) + x
        return self.frameshiftblock(x)


class VideoResBlock(nn.ModuleList, TimestepBlock):
    """CoDi's ``[ResBlock, SpatioTemporalAttention]`` pair (state-dict keys ``.0.*`` and ``.1.*``)."""

    def __init__(self, resblock: ResBlock, temporal: SpatioTemporalAttention):
        super().__init__([resblock, temporal])

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        return self[1](self[0](x, emb))


def res_block(channels: int, emb_dim: int, out_channels: int, video: bool, heads: int = 8,
              head_ratio: int = 4) -> nn.Module:
    """A ResBlock, followed by video layers (dim_head = channels // head_ratio) when ``video``."""
    block = ResBlock(channels, emb_dim, out_channels)
    if not video:
        return block
    return VideoResBlock(block, SpatioTemporalAttention(out_channels, out_channels // head_ratio, heads))
