"""``UNetSpec`` refuses sizes the layers cannot be built with, at config time (one ValueError naming the
size), not in a Ray worker minutes into a schedule."""

from __future__ import annotations

import pytest
import torch

from models.codi import CoDi, CoDiConfig
from models.codi.config import UNetSpec


def spec(channels: int, connectors: bool = True) -> UNetSpec:
    return UNetSpec(in_channels=8, out_channels=8, model_channels=channels, channel_mult=[1, 2], num_res_blocks=[1, 1],
                    attention_levels=[False, True], num_heads=4, context_dim=32, connectors=connectors,
                    connector_mult=[1, 2], connector_blocks=[1, 1], connector_levels=[True, True], connector_dim=64)


def test_environment_encoder_width_must_fit_its_group_norm():
    with pytest.raises(ValueError, match=r"model_channels // 2 = 16 .* must divide by the 32 groups"):
        spec(32)
    torch.manual_seed(0)
    CoDi(CoDiConfig(audio=spec(64)))            # V's first width 32: builds
    CoDi(CoDiConfig(audio=spec(32, connectors=False)))   # no V: 32 channels are fine
