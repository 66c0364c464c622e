"""The LDM ``openaimodel`` building blocks of CoDi's UNets (Stable Diffusion 1.x's module tree).

Module and parameter names follow LDM/CoDi exactly (``in_layers.0``, ``emb_layers.1``,
``transformer_blocks.0.attn1.to_q`` …) so released state dicts load without renaming. Every block
accepts images ``b c h w`` and videos ``b c f h w``: spatial layers fold frames into the batch and
repeat the timestep embedding and the context per frame.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


class GroupNorm32(nn.GroupNorm):
    """LDM's ``normalization``: 32 groups, computed in float32 and cast back (stable in fp16/bf16)."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__(32, channels, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        # .contiguous(): after rearrange/cat the activations can be channels-last-strided, and PyTorch
        # 2.11's CPU GroupNorm backward for that layout segfaults when x needs a gradient but the weight
        # does not — a frozen UNet block behind a trainable connector (latent alignment).
        weight, bias = self.weight.float(), self.bias.float()
        return F.group_norm(x.float().contiguous(), self.num_groups, weight, bias, self.eps).type(x.dtype)


def zero_(module: nn.Module) -> nn.Module:
    """Zero a module's parameters: a new residual branch starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def norm_eps(x: Tensor) -> float:
    """make-a-video's floor on the variance: 1e-5 in float32, 1e-3 in any other dtype (as released)."""
    return 1e-5 if x.dtype == torch.float32 else 1e-3


def norm_over_dim1(x: Tensor, gain: Tensor) -> Tensor:
    """(x − μ₁) / √max(σ²₁, ε) · g, the statistics over dim 1 with the biased variance, ε = ``norm_eps(x)``:
    make-a-video's norms, which CoDi's video layers and video CLIP use (over frames or over channels).

    σ² is taken as the mean of the centred squares, its definition, not by ``Tensor.var``: on a CPU, var over
    a non-last dim took 8.1 ms forward for a (1024, 8, 64) tensor where this takes 0.6, 13.2 vs 5.9 ms with
    the backward (one thread), equally close to a float64 reference (1.1e-6); it was a fifth of the demo's
    joint video+audio sampling time."""
    centred = x - x.mean(dim=1, keepdim=True)
    return centred * centred.square().mean(dim=1, keepdim=True).clamp(min=norm_eps(x)).rsqrt() * gain


def per_frame(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """Apply a 2-D layer to each frame of a ``b c f h w`` video (images pass straight through)."""
    if x.ndim != 5:
        return fn(x)
    frames = x.shape[2]
    out = fn(rearrange(x, "b c f h w -> (b f) c h w"))
    return rearrange(out, "(b f) c h w -> b c f h w", f=frames)


def repeat_per_frame(x: Tensor, frames: int) -> Tensor:
    """(b, ...) → (b·f, ...), each sample repeated for its frames (the ``(b f)`` fold order)."""
    return x.repeat_interleave(frames, dim=0)


class ResBlock(nn.Module):
    """GroupNorm–SiLU–conv, + timestep embedding, GroupNorm–SiLU–(dropout)–zero-init conv, + skip."""

    def __init__(self, channels: int, emb_dim: int, out_channels: Optional[int] = None, dropout: float = 0.0):
        super().__init__()
        out_channels = out_channels or channels
        self.in_layers = nn.Sequential(GroupNorm32(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_channels))
        self.out_layers = nn.Sequential(GroupNorm32(out_channels), nn.SiLU(), nn.Dropout(dropout),
                                        zero_(nn.Conv2d(out_channels, out_channels, 3, padding=1)))
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        if x.ndim == 5:
            return per_frame(lambda frames: self._forward(frames, repeat_per_frame(emb, x.shape[2])), x)
        return self._forward(x, emb)

    def _forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.in_layers(x) + self.emb_layers(emb).type(x.dtype)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class Downsample(nn.Module):
    """Stride-2 3×3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return per_frame(self.op, x)


class Upsample(nn.Module):
    """Nearest-neighbour ×2, then a 3×3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return per_frame(lambda h: self.conv(F.interpolate(h, scale_factor=2.0, mode="nearest")), x)


class CrossAttention(nn.Module):
    """Multi-head attention of queries ``x`` (b, n, d) over ``context`` (b, m, d_c) (self-attention if None)."""

    def __init__(self, query_dim: int, heads: int, dim_head: int, context_dim: Optional[int] = None):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(0.0))

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> Tensor:
        context = x if context is None else context
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads)
                   for t in (self.to_q(x), self.to_k(context), self.to_v(context)))
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q kᵀ / √d) v
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: Tensor) -> Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU feed-forward, inner width 4·dim (keys ``net.0.proj``, ``net.2``)."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention to the context, GEGLU feed-forward; each residual."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int):
        super().__init__()
        self.attn1 = CrossAttention(dim, heads, dim_head)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, heads, dim_head, context_dim)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """GroupNorm, 1×1 conv in, transformer over the h·w tokens, zero-init 1×1 conv out, + input.

    Serves both the text cross-attention (``context_dim`` 768) and CoDi's cross-modal attention
    sublayers (``context_dim`` 1280, attending to environment-encoder outputs, CoDi Eq. 3).
    """

    def __init__(self, channels: int, heads: int, dim_head: int, context_dim: int, depth: int = 1):
        super().__init__()
        inner = heads * dim_head
        self.norm = GroupNorm32(channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(inner, heads, dim_head, context_dim) for _ in range(depth)])
        self.proj_out = zero_(nn.Conv2d(inner, channels, 1))

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        if x.ndim == 5:
            return per_frame(lambda frames: self._forward(frames, repeat_per_frame(context, x.shape[2])), x)
        return self._forward(x, context)

    def _forward(self, x: Tensor, context: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        tokens = rearrange(self.proj_in(self.norm(x)), "b c h w -> b (h w) c")
        for block in self.transformer_blocks:
            tokens = block(tokens, context)
        return self.proj_out(rearrange(tokens, "b (h w) c -> b c h w", h=h, w=w)) + x


class TimestepBlock(nn.Module):
    """Marker: a layer whose forward takes ``(x, emb)``."""


class Block(nn.Sequential):
    """LDM's ``TimestepEmbedSequential``: hands ``emb`` to timestep layers and ``context`` to transformers."""

    def forward(self, x: Tensor, emb: Optional[Tensor] = None, context: Optional[Tensor] = None) -> Tensor:
        for layer in self:
            if isinstance(layer, (ResBlock, TimestepBlock)):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            elif isinstance(layer, (Downsample, Upsample)):
                x = layer(x)
            else:
                x = per_frame(layer, x)
        return x
