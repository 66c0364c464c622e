"""CoDi's temporal attention inside the CLIP vision tower (its video prompt encoder).

As released (i-Code-V3 ``clip_modules/modeling_clip.py`` + ``modules_video.py``): every vision layer gets a
``temporal_self_attn`` block that runs between the layer's self-attention and its MLP, over the frame axis
of each token position (``(b f) l c -> (b l) f c``):

    x ← x + W_o · Attn(N(x) W_q, N(x) W_k, N(x) W_v; bias = MLP(sign(i-j)·log(|i-j|+1)))
    x ← x + W_2 · CN(GEGLU(W_1 x))                           (1×1 convs over channels)

``N`` is make-a-video's ``LayerNorm`` applied to ``(b·l, f, c)`` tensors: its statistics run over dim 1,
which here is the FRAME axis (not the channels), with a per-channel gain — reproduced as released. ``CN``
normalises over channels. ``W_o`` and ``W_2`` start at zero, so the block starts as the identity. The
layout of the parameters is the release's (``temporal_attn.{norm.g,to_q,to_kv,to_out}``,
``temporal_rel_pos_bias.net.*``, ``ff.proj_in.0``, ``ff.proj_out.{0.g,1}``); the release's
``temporal_attn.pos_embeds``/``frame_rate_embeds`` are only added when a frame rate is passed, which the
video prompt path never does, so they are not modelled. A video of one frame is encoded as an image
by the release (no temporal block runs), and so it is here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.codi.blocks import norm_over_dim1


def log_distance(frames: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """``(f, f, 1)`` signed log distances sign(i-j)·log(|i-j|+1) (continuous position bias, Swin v2)."""
    pos = torch.arange(frames, device=device, dtype=dtype)
    rel = (pos[:, None] - pos[None, :])[..., None]
    return torch.sign(rel) * torch.log(rel.abs() + 1)


class FrameNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.g = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return norm_over_dim1(x, self.g)


class ChannelNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.g = nn.Parameter(torch.ones(1, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:      # (n, c, f)
        return norm_over_dim1(x, self.g)


class PositionBias(nn.Module):
    """MLP from the log distance to one additive attention bias per head: ``(h, f, f)``."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.net = nn.ModuleList([nn.Sequential(nn.Linear(1, dim), nn.SiLU()),
                                  nn.Sequential(nn.Linear(dim, dim), nn.SiLU()), nn.Linear(dim, heads)])

    def forward(self, frames: int) -> torch.Tensor:
        h = log_distance(frames, self.net[2].weight.device, self.net[2].weight.dtype)
        for layer in self.net:
            h = layer(h)
        return h.permute(2, 0, 1)


class FrameAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = FrameNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(dim, 2 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)
        nn.init.zeros_(self.to_out.weight)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:   # (n, f, c), (h, f, f)
        n = self.norm(x)
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2)
                   for t in (self.to_q(n), *self.to_kv(n).chunk(2, dim=-1)))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        return self.to_out(out.transpose(1, 2).flatten(2))


class GEGLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = x.chunk(2, dim=1)
        return x * F.gelu(gate)


class FrameFeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        inner = int(dim * mult * 2 / 3)
        self.proj_in = nn.Sequential(nn.Conv1d(dim, 2 * inner, 1, bias=False), GEGLU())
        self.proj_out = nn.Sequential(ChannelNorm(inner), nn.Conv1d(inner, dim, 1, bias=False))
        nn.init.zeros_(self.proj_out[1].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:       # (n, c, f)
        return self.proj_out(self.proj_in(x))


class TemporalBlock(nn.Module):
    """One ``temporal_self_attn``: frame attention then a frame-wise feed-forward, both residual."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.temporal_attn = FrameAttention(dim, heads)
        self.temporal_rel_pos_bias = PositionBias(dim // 2, heads)
        self.ff = FrameFeedForward(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:       # (n, f, c)
        x = self.temporal_attn(x, self.temporal_rel_pos_bias(x.shape[1])) + x
        return self.ff(x.transpose(1, 2)).transpose(1, 2) + x


def vision_hidden_with_time(vision, blocks: nn.ModuleList, pixels: torch.Tensor, frames: int) -> torch.Tensor:
    """CLIP vision tower on ``(b·f, 3, s, s)`` frames with ``blocks[i]`` between layer i's self-attention and
    its MLP, over the frames of each token -> last hidden states ``(b, f, tokens, d)``."""
    h = vision.pre_layrnorm(vision.embeddings(pixels))
    for layer, block in zip(vision.encoder.layers, blocks):
        h = h + layer.self_attn(hidden_states=layer.layer_norm1(h))[0]
        n, tokens, d = h.shape
        per_token = h.unflatten(0, (n // frames, frames)).transpose(1, 2).flatten(0, 1)    # (b·l, f, d)
        h = block(per_token).unflatten(0, (n // frames, tokens)).transpose(1, 2).flatten(0, 1)
        h = h + layer.mlp(layer.layer_norm2(h))
    return h.unflatten(0, (n // frames, frames))
