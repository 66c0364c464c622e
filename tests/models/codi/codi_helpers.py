"""Tiny CoDi specs and seeded random weights shared by the CoDi tests."""

from __future__ import annotations

import torch
from torch import nn

from models.codi import UNetSpec


def randomize(module: nn.Module, seed: int = 0, std: float = 0.05) -> nn.Module:
    """Seeded random values for EVERY parameter (zero-init branches included), so tests see all paths."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return module


def tiny_image(video: bool = True, connectors: bool = True) -> UNetSpec:
    return UNetSpec(in_channels=4, out_channels=4, model_channels=64, channel_mult=[1, 2], num_res_blocks=[1, 1],
                    attention_levels=[True, False], num_heads=4, context_dim=32, video=video,
                    connectors=connectors, connector_mult=[1, 2], connector_blocks=[1, 1],
                    connector_levels=[True, True], connector_dim=64)


def tiny_audio() -> UNetSpec:
    return UNetSpec(in_channels=8, out_channels=8, model_channels=64, channel_mult=[1, 2], num_res_blocks=[1, 1],
                    attention_levels=[True, False], num_heads=4, context_dim=32, connector_mult=[1, 2],
                    connector_blocks=[1, 1], connector_levels=[True, False], connector_dim=64, scale_factor=0.9228)


def tiny_text() -> UNetSpec:
    return UNetSpec(kind="text", in_channels=16, out_channels=16, model_channels=32, channel_mult=[1, 2],
                    num_res_blocks=[1, 1], attention_levels=[True, True], num_heads=4, context_dim=32,
                    second_dim=[4, 4], connector_mult=[1, 2], connector_blocks=[1, 1], connector_second_dim=[4, 4],
                    connector_levels=[True, True], connector_dim=64, scale_factor=4.3108)
