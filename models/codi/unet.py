"""CoDi's 2-D latent diffuser (``openai_unet_2d``): image/video (4 ch, 320) and audio (8 ch, 192).

The module tree is LDM's ``openaimodel`` (``time_embed``, ``input_blocks``, ``middle_block``,
``output_blocks``, ``out``) — Stable Diffusion 1.x's, so SD weights load by name — plus CoDi's
additions under CoDi's names: video layers inside the ResBlocks (``input_blocks.N.0.1``), the
environment encoder V (``connecters_out``) and the cross-modal attention sublayers
(``input_block_connecters_in``, ``output_block_connecters_in``).

``LatentUNet`` holds the forward pass shared with the text UNet: the timestep embedding, the
environment encoder V(z_t) and the UNet pass that, given the co-generated modalities' V outputs,
cross-attends to them after every block that has a connector (CoDi Eq. 3).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from models.unet import timestep_embedding

from .blocks import Block, Downsample, GroupNorm32, SpatialTransformer, Upsample, per_frame, zero_
from .config import UNetSpec
from .video import res_block


def l2_normalize(v: Tensor) -> Tensor:
    """V's output projected onto the unit sphere (CoDi aligns modalities there)."""
    return v / v.norm(dim=-1, keepdim=True)


class LatentUNet(nn.Module):
    """Forward pass shared by CoDi's UNets; subclasses build the blocks under LDM/CoDi names."""

    spec: UNetSpec
    gradient_checkpointing: bool = False

    # -- hooks for the text UNet (its latent is a vector) --
    def to_feature_map(self, x: Tensor) -> Tensor:
        return x

    def from_feature_map(self, h: Tensor) -> Tensor:
        return h

    def _run(self, block: nn.Module, h: Tensor, *args) -> Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, h, *args, use_reentrant=False)
        return block(h, *args)

    def embed_time(self, t: Tensor, dtype: torch.dtype) -> Tensor:
        """MLP of the cos-then-sin sinusoidal embedding of t (width model_channels → 4·model_channels)."""
        return self.time_embed(timestep_embedding(t, self.spec.model_channels).to(dtype))

    def has_connectors(self) -> bool:
        return hasattr(self, "connecters_out")

    def environment(self, x: Tensor, emb: Tensor, context: Tensor) -> Tensor:
        """V(z_t): the environment encoder, mean-pooled over space (and frames), L2-normalised → (b, 1, D)."""
        if not self.has_connectors():
            raise ValueError("this UNet has no environment encoder / cross-modal connectors")
        h = self.to_feature_map(x)
        for block in self.connecters_out:
            h = self._run(block, h, emb, context)
        return l2_normalize(h.flatten(2).mean(-1))[:, None, :]

    def forward(self, x: Tensor, emb: Tensor, context: Tensor, env: Optional[Tensor] = None) -> Tensor:
        """ε for latent ``x`` given the time embedding, the text-side ``context`` and, in joint
        generation, ``env`` (b, k, D): the environment-encoder outputs this modality attends to."""
        if env is not None and not self.has_connectors():
            raise ValueError("joint generation needs the environment encoders and connectors")
        h, skips = self.to_feature_map(x), []
        for i, block in enumerate(self.input_blocks):
            h = self._run(block, h, emb, context)
            if env is not None and self.input_block_connecters_in[i] is not None:
                h = self._run(self.input_block_connecters_in[i], h, None, env)
            skips.append(h)
        h = self._run(self.middle_block, h, emb, context)
        for i, block in enumerate(self.output_blocks):
            h = self._run(block, torch.cat([h, skips.pop()], dim=1), emb, context)
            if env is not None and self.output_block_connecters_in[i] is not None:
                h = self._run(self.output_block_connecters_in[i], h, None, env)
        return self.from_feature_map(per_frame(self.out, h))


class UNet2D(LatentUNet):
    """Image/video or audio diffuser; video layers with ``spec.video``, V and connectors with ``spec.connectors``."""

    def __init__(self, spec: UNetSpec):
        super().__init__()
        self.spec = spec
        C, emb_dim, heads = spec.model_channels, spec.model_channels * 4, spec.num_heads

        def resblock(cin: int, cout: int) -> nn.Module:
            return res_block(cin, emb_dim, cout, spec.video, spec.video_heads, spec.video_head_ratio)

        def transformer(ch: int, context_dim: int) -> SpatialTransformer:
            return SpatialTransformer(ch, heads, ch // heads, context_dim)

        def connector(ch: int, level: int) -> Optional[Block]:
            wanted = spec.connectors and spec.connector_levels[level]
            return Block(transformer(ch, spec.connector_dim)) if wanted else None

        self.time_embed = nn.Sequential(nn.Linear(C, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if spec.connectors:
            self.connecters_out = self._environment_encoder(spec, resblock)

        ch, levels = C, len(spec.channel_mult)
        input_blocks, skip_channels, connectors_in = [Block(nn.Conv2d(spec.in_channels, C, 3, padding=1))], [C], [None]
        for level, mult in enumerate(spec.channel_mult):
            for _ in range(spec.num_res_blocks[level]):
                layers = [resblock(ch, mult * C)]
                ch = mult * C
                if spec.attention_levels[level]:
                    layers.append(transformer(ch, spec.context_dim))
                input_blocks.append(Block(*layers))
                skip_channels.append(ch)
                connectors_in.append(connector(ch, level))
            if level != levels - 1:
                input_blocks.append(Block(Downsample(ch)))
                skip_channels.append(ch)
                connectors_in.append(None)
        self.input_blocks = nn.ModuleList(input_blocks)

        self.middle_block = Block(resblock(ch, ch), transformer(ch, spec.context_dim), resblock(ch, ch))

        output_blocks, connectors_out = [], []
        for level, mult in reversed(list(enumerate(spec.channel_mult))):
            for i in range(spec.num_res_blocks[level] + 1):
                layers = [resblock(ch + skip_channels.pop(), mult * C)]
                ch = mult * C
                if spec.attention_levels[level]:
                    layers.append(transformer(ch, spec.context_dim))
                connectors_out.append(connector(ch, level))
                if level and i == spec.num_res_blocks[level]:
                    layers.append(Upsample(ch))
                output_blocks.append(Block(*layers))
        self.output_blocks = nn.ModuleList(output_blocks)
        if spec.connectors:
            self.input_block_connecters_in = nn.ModuleList(connectors_in)
            self.output_block_connecters_in = nn.ModuleList(connectors_out)
        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), zero_(nn.Conv2d(C, spec.out_channels, 3, padding=1)))

    @staticmethod
    def _environment_encoder(spec: UNetSpec, resblock) -> nn.ModuleList:
        """V: conv to C/2, ResBlocks (video ones on the image UNet) with stride-2 steps, GroupNorm, SiLU, conv to D."""
        C, ch = spec.model_channels, spec.model_channels // 2
        blocks = [Block(nn.Conv2d(spec.in_channels, ch, 3, padding=1))]
        for level, mult in enumerate(spec.connector_mult):
            for _ in range(spec.connector_blocks[level]):
                blocks.append(Block(resblock(ch, mult * C)))
                ch = mult * C
            if level != len(spec.connector_mult) - 1:
                blocks.append(Block(Downsample(ch)))
        blocks.append(Block(GroupNorm32(ch), nn.SiLU(), nn.Conv2d(ch, spec.connector_dim, 3, padding=1)))
        return nn.ModuleList(blocks)
