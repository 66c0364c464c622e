"""CoDi's text diffuser (``openai_unet_0dmd``): a UNet over the 768-d Optimus text latent.

The latent (b, 768) becomes a [768, 1, 1] map; ``Linear_MultiDim`` layers map it to C×s "pixels"
(``second_dim`` s = 4), ``FCBlock_MultiDim`` residual blocks mix all C·s values at once (a 1×1
convolution over the flattened C·s channels, with the timestep embedding added), and
SpatialTransformers attend over the s tokens. Linear layers take the place of down/upsampling.
Names follow CoDi so released weights load by key.
"""

from __future__ import annotations

import math
from typing import Optional

from torch import Tensor, nn

from .blocks import Block, GroupNorm32, SpatialTransformer, TimestepBlock, zero_
from .config import UNetSpec
from .unet import LatentUNet

Shape = list[int]   # [channels, second_dim, 1]


class LinearMultiDim(nn.Linear):
    """A Linear on the trailing ``in_shape`` dims of x, reshaped to ``out_shape`` (CoDi's ``Linear_MultiDim``)."""

    def __init__(self, in_shape: Shape, out_shape: Shape):
        super().__init__(math.prod(in_shape), math.prod(out_shape))
        self.in_shape, self.out_shape = list(in_shape), list(out_shape)

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-len(self.in_shape)]
        return super().forward(x.reshape(*lead, self.in_features)).view(*lead, *self.out_shape)


class FCBlock(TimestepBlock):
    """ResBlock on the flattened C·s channels with 1×1 convolutions (CoDi's ``FCBlock_MultiDim``)."""

    def __init__(self, in_shape: Shape, emb_dim: int, out_shape: Optional[Shape] = None):
        super().__init__()
        out_shape = list(out_shape or in_shape)
        cin, cout = math.prod(in_shape), math.prod(out_shape)
        self.out_shape = out_shape
        self.in_layers = nn.Sequential(GroupNorm32(cin), nn.SiLU(), nn.Conv2d(cin, cout, 1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, cout))
        self.out_layers = nn.Sequential(GroupNorm32(cout), nn.SiLU(), nn.Dropout(0.0), zero_(nn.Conv2d(cout, cout, 1)))
        self.skip_connection = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        b = x.shape[0]
        x = x.reshape(b, -1, 1, 1)
        h = self.in_layers(x) + self.emb_layers(emb).type(x.dtype)[:, :, None, None]
        return (self.skip_connection(x) + self.out_layers(h)).view(b, *self.out_shape)


class UNetText(LatentUNet):
    def __init__(self, spec: UNetSpec):
        super().__init__()
        self.spec = spec
        C, emb_dim, heads = spec.model_channels, spec.model_channels * 4, spec.num_heads

        def transformer(ch: int, context_dim: int) -> SpatialTransformer:
            return SpatialTransformer(ch, heads, ch // heads, context_dim)

        def connector(ch: int, level: int) -> Optional[Block]:
            wanted = spec.connectors and spec.connector_levels[level]
            return Block(transformer(ch, spec.connector_dim)) if wanted else None

        self.time_embed = nn.Sequential(nn.Linear(C, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if spec.connectors:
            self.connecters_out = self._environment_encoder(spec, emb_dim)

        latent: Shape = [spec.in_channels, 1, 1]
        cur: Shape = [C, spec.second_dim[0], 1]
        levels = len(spec.channel_mult)
        input_blocks, skip_shapes, connectors_in = [Block(LinearMultiDim(latent, cur))], [cur], [None]
        for level, (mult, sdim) in enumerate(zip(spec.channel_mult, spec.second_dim)):
            for _ in range(spec.num_res_blocks[level]):
                layers = [FCBlock(cur, emb_dim, [mult * C, sdim, 1])]
                cur = [mult * C, sdim, 1]
                if spec.attention_levels[level]:
                    layers.append(transformer(cur[0], spec.context_dim))
                input_blocks.append(Block(*layers))
                skip_shapes.append(cur)
                connectors_in.append(connector(cur[0], level))
            if level != levels - 1:
                input_blocks.append(Block(LinearMultiDim(cur, cur)))
                skip_shapes.append(cur)
                connectors_in.append(None)
        self.input_blocks = nn.ModuleList(input_blocks)

        self.middle_block = Block(FCBlock(cur, emb_dim), transformer(cur[0], spec.context_dim), FCBlock(cur, emb_dim))

        output_blocks, connectors_out = [], []
        for level, (mult, sdim) in reversed(list(enumerate(zip(spec.channel_mult, spec.second_dim)))):
            for i in range(spec.num_res_blocks[level] + 1):
                skip = skip_shapes.pop()
                layers = [FCBlock([cur[0] + skip[0]] + cur[1:], emb_dim, [mult * C, sdim, 1])]
                cur = [mult * C, sdim, 1]
                if spec.attention_levels[level]:
                    layers.append(transformer(cur[0], spec.context_dim))
                connectors_out.append(connector(cur[0], level))
                if level and i == spec.num_res_blocks[level]:
                    layers.append(LinearMultiDim(cur, cur))
                output_blocks.append(Block(*layers))
        self.output_blocks = nn.ModuleList(output_blocks)
        if spec.connectors:
            self.input_block_connecters_in = nn.ModuleList(connectors_in)
            self.output_block_connecters_in = nn.ModuleList(connectors_out)
        self.out = nn.Sequential(GroupNorm32(cur[0]), nn.SiLU(),
                                 zero_(LinearMultiDim(cur, [spec.out_channels, 1, 1])))

    @staticmethod
    def _environment_encoder(spec: UNetSpec, emb_dim: int) -> nn.ModuleList:
        """V for text: Linear to [C/2, s, 1], FCBlocks with Linear steps, GroupNorm, SiLU, Linear to [D, 1, 1]."""
        C = spec.model_channels
        cur: Shape = [C // 2, spec.second_dim[0], 1]
        blocks = [Block(LinearMultiDim([spec.in_channels, 1, 1], cur))]
        for level, (mult, sdim) in enumerate(zip(spec.connector_mult, spec.connector_second_dim)):
            for _ in range(spec.connector_blocks[level]):
                blocks.append(Block(FCBlock(cur, emb_dim, [mult * C, sdim, 1])))
                cur = [mult * C, sdim, 1]
            if level != len(spec.connector_mult) - 1:
                blocks.append(Block(LinearMultiDim(cur, cur)))
        blocks.append(Block(GroupNorm32(cur[0]), nn.SiLU(), LinearMultiDim(cur, [spec.connector_dim, 1, 1])))
        return nn.ModuleList(blocks)

    def to_feature_map(self, x: Tensor) -> Tensor:
        return x[:, :, None, None] if x.ndim == 2 else x

    def from_feature_map(self, h: Tensor) -> Tensor:
        return h.flatten(1)
