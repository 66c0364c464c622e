"""A diffusion UNet with text cross-attention (the Stable-Diffusion/CoDi image-diffuser layout).

ResBlocks take the timestep embedding; SpatialTransformers do self-attention over pixels and
cross-attention to the prompt encoder's token states (CoDi Eq. 1 conditions ε_θ(z_t, t, C(y)) this
way). Later issues add the cross-modal "latent alignment" sublayers (CoDi Eq. 3) beside the
cross-attention, so attention blocks take their context as an argument and keep no state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


@dataclass
class UNetConfig:
    """Shape of the UNet. ``attention_levels`` are indices into ``channel_mult``."""

    in_channels: int = 3
    out_channels: int = 3
    base_channels: int = 64
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 2])
    num_res_blocks: int = 1
    attention_levels: list[int] = field(default_factory=lambda: [1, 2])
    num_heads: int = 4
    context_dim: int = 64
    dropout: float = 0.0

    def __post_init__(self):
        if any(level >= len(self.channel_mult) for level in self.attention_levels):
            raise ValueError("attention_levels must index into channel_mult")


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, as in DDPM / Transformer.

    Built for t on the scale of discrete indices (0..~1000): map a continuous t ∈ [0, 1] with
    ``models.diffusion.config.conditioning_time`` first, or the embedding barely changes with t.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ResBlock(nn.Module):
    """Conv block conditioned on the timestep embedding by scale and shift after the norm (ADM's AdaGN).

    An additive per-channel embedding *before* a GroupNorm whose groups hold one channel (this
    UNet's narrow widths: 16 or 32 channels → 16 or 32 groups) is removed by the norm's mean
    subtraction, so the network would never see t; h = norm(h)·(1 + s) + b keeps it whatever the
    group size (Dhariwal & Nichol 2021, "use_scale_shift_norm").
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = group_norm(in_ch), nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2, self.conv2 = group_norm(out_ch), nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        nn.init.zeros_(self.conv2.weight)  # each block starts as identity: stable early training
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = rearrange(self.emb(F.silu(emb)), "b (two c) -> two b c 1 1", two=2)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head attention; self-attention when ``context`` is None, else cross-attention."""

    def __init__(self, dim: int, context_dim: int | None, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim or dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim or dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        q, k, v = (rearrange(p(s), "b n (h d) -> b h n d", h=self.num_heads)
                   for p, s in ((self.to_q, x), (self.to_k, context), (self.to_v, context)))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, context_dim: int, num_heads: int):
        super().__init__()
        self.norm1, self.self_attn = nn.LayerNorm(dim), Attention(dim, None, num_heads)
        self.norm2, self.cross_attn = nn.LayerNorm(dim), Attention(dim, context_dim, num_heads)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.norm1(x))
        x = x + self.cross_attn(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Pixels as tokens: norm, 1×1 in, transformer block with cross-attention, 1×1 out (residual)."""

    def __init__(self, channels: int, context_dim: int, num_heads: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.block = TransformerBlock(channels, context_dim, num_heads)
        self.proj_out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        tokens = rearrange(self.proj_in(self.norm(x)), "b c h w -> b (h w) c")
        tokens = self.block(tokens, context)
        return x + self.proj_out(rearrange(tokens, "b (h w) c -> b c h w", h=h, w=w))


class UNet(nn.Module):
    """ε_θ(z_t, t, context): predicts the configured target (ε, x₀ or v) for image-shaped inputs."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        ch = cfg.base_channels
        emb_dim = 4 * ch
        self.time_embed = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)

        self.down = nn.ModuleList()
        skip_channels, current = [ch], ch
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                self.down.append(self._stage(current, ch * mult, level, emb_dim))
                current = ch * mult
                skip_channels.append(current)
            if level < len(cfg.channel_mult) - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(current, current, 3, stride=2, padding=1)]))
                skip_channels.append(current)

        self.mid = nn.ModuleList([ResBlock(current, current, emb_dim, cfg.dropout),
                                  SpatialTransformer(current, cfg.context_dim, cfg.num_heads),
                                  ResBlock(current, current, emb_dim, cfg.dropout)])

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                stage = self._stage(current + skip_channels.pop(), ch * mult, level, emb_dim)
                current = ch * mult
                if level > 0 and i == cfg.num_res_blocks:
                    stage.append(nn.Upsample(scale_factor=2, mode="nearest"))
                    stage.append(nn.Conv2d(current, current, 3, padding=1))
                self.up.append(stage)

        self.out = nn.Sequential(group_norm(current), nn.SiLU(), nn.Conv2d(current, cfg.out_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def _stage(self, in_ch: int, out_ch: int, level: int, emb_dim: int) -> nn.ModuleList:
        layers = [ResBlock(in_ch, out_ch, emb_dim, self.cfg.dropout)]
        if level in self.cfg.attention_levels:
            layers.append(SpatialTransformer(out_ch, self.cfg.context_dim, self.cfg.num_heads))
        return nn.ModuleList(layers)

    @staticmethod
    def _run(stage: nn.ModuleList, h: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        for layer in stage:
            if isinstance(layer, ResBlock):
                h = layer(h, emb)
            elif isinstance(layer, SpatialTransformer):
                h = layer(h, context)
            else:
                h = layer(h)
        return h

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(t, self.cfg.base_channels).to(z_t.dtype))
        h = self.conv_in(z_t)
        skips = [h]
        for stage in self.down:
            h = self._run(stage, h, emb, context)
            skips.append(h)
        h = self._run(self.mid, h, emb, context)
        for stage in self.up:
            h = self._run(stage, torch.cat([h, skips.pop()], dim=1), emb, context)
        return self.out(h)
