"""Typed configs of CoDi's latent diffusers (CoDi §3, appendix; the released ``openai_unet.yaml``).

``UNetSpec`` describes one modality's UNet with its environment encoder V and its cross-modal
attention sublayers ("connectors"); ``CoDiConfig`` holds any subset of the three UNets (image serves
image and video), their latent scale factors and the shared diffusion process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from models.diffusion.config import DiffusionConfig

GROUPS = 32                                      # LDM's GroupNorm groups (blocks.GroupNorm32)
MODALITIES = ("image", "audio", "text")          # one UNet each; "video" runs on the image UNet
LATENT_MODALITIES = ("image", "video", "audio", "text")


@dataclass
class UNetSpec:
    """One latent diffuser. ``kind`` "2d" = ``openai_unet_2d`` (image/video, audio); "text" = ``openai_unet_0dmd``.

    Per-level lists (``num_res_blocks``, ``attention_levels``, ``second_dim``) have one entry per
    ``channel_mult`` level; the ``connector_*`` lists describe V's levels and which UNet levels get
    a cross-modal attention sublayer after each block.
    """

    kind: Literal["2d", "text"] = "2d"
    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 4, 4])
    num_res_blocks: list[int] = field(default_factory=lambda: [2, 2, 2, 2])
    attention_levels: list[bool] = field(default_factory=lambda: [True, True, True, False])
    num_heads: int = 8
    context_dim: int = 768
    video: bool = False                 # SpatioTemporalAttention after every ResBlock (image UNet)
    video_heads: int = 8                # temporal attention heads (CoDi hard-codes 8)
    video_head_ratio: int = 4           # temporal attention dim_head = channels // ratio
    connectors: bool = True             # environment encoder V + cross-modal attention sublayers
    connector_mult: list[int] = field(default_factory=lambda: [1, 2, 4])
    connector_blocks: list[int] = field(default_factory=lambda: [1, 1, 1])
    connector_levels: list[bool] = field(default_factory=lambda: [True, True, True, False])
    connector_dim: int = 1280           # width of V's output, the shared latent space
    second_dim: list[int] = field(default_factory=lambda: [4, 4, 4, 4])   # text UNet: "pixels" per level
    connector_second_dim: list[int] = field(default_factory=lambda: [4, 4, 4])
    scale_factor: float = 0.18215       # latent scale factor of this modality's autoencoder

    def __post_init__(self):
        levels = len(self.channel_mult)
        per_level = ("num_res_blocks", "attention_levels") + (("connector_levels",) if self.connectors else ())
        for name in per_level:
            if len(getattr(self, name)) != levels:
                raise ValueError(f"{name} needs one entry per channel_mult level ({levels})")
        if self.kind == "text" and len(self.second_dim) != levels:
            raise ValueError(f"second_dim needs one entry per channel_mult level ({levels})")
        if self.kind == "text" and len(set(self.second_dim)) > 1:
            raise ValueError("second_dim must be equal at every level (skip connections concatenate channels)")
        if self.connectors and len(self.connector_blocks) != len(self.connector_mult):
            raise ValueError("connector_blocks needs one entry per connector_mult level")
        if self.kind == "text" and self.connectors and len(self.connector_second_dim) != len(self.connector_mult):
            raise ValueError("connector_second_dim needs one entry per connector_mult level")
        if self.kind == "text" and self.video:
            raise ValueError("the text UNet has no video layers")
        if any(self.model_channels * m % self.num_heads for m in self.channel_mult):
            raise ValueError("every level's channels must divide by num_heads")
        if self.kind == "2d" and self.connectors and (self.model_channels // 2) % GROUPS:
            raise ValueError(f"model_channels // 2 = {self.model_channels // 2} (the environment encoder V's first "
                             f"width) must divide by the {GROUPS} groups of its GroupNorm")


def image_unet(video: bool = True, connectors: bool = True) -> UNetSpec:
    """CoDi's ``openai_unet_2d`` (video architecture): SD 1.x's UNet plus video layers, V and connectors."""
    return UNetSpec(video=video, connectors=connectors, scale_factor=0.18215)


def audio_unet() -> UNetSpec:
    """CoDi's ``openai_unet_2d_audio``: 8 latent channels, 192 model channels, no video layers."""
    return UNetSpec(in_channels=8, out_channels=8, model_channels=192, scale_factor=0.9228)


def text_unet() -> UNetSpec:
    """CoDi's ``openai_unet_0dmd``: the 768-d Optimus latent as [768, 1, 1], C×4 "pixels" per level."""
    return UNetSpec(kind="text", in_channels=768, out_channels=768, model_channels=320, scale_factor=4.3108)


@dataclass
class CoDiConfig:
    """Any subset of CoDi's three UNets sharing one diffusion process (1000 steps, scaled-linear β, ε)."""

    image: Optional[UNetSpec] = None
    audio: Optional[UNetSpec] = None
    text: Optional[UNetSpec] = None
    # CoDi diffuses VAE latents: x̂ is never clipped to the pixel range (see resolve_x0_clip).
    diffusion: DiffusionConfig = field(default_factory=lambda: DiffusionConfig(data_space="latent"))
    gradient_checkpointing: bool = False

    def __post_init__(self):
        if not any(self.specs().values()):
            raise ValueError("a CoDi model needs at least one of image, audio, text")
        dims = {spec.connector_dim for spec in self.specs().values() if spec.connectors}
        if len(dims) > 1:
            raise ValueError(f"environment encoders must share one connector_dim, got {sorted(dims)}")
        if len({spec.context_dim for spec in self.specs().values()}) > 1:
            raise ValueError("all UNets must share one context_dim (the composed conditioning)")

    def specs(self) -> dict[str, UNetSpec]:
        """The UNets this model holds, keyed image/audio/text."""
        return {name: spec for name in MODALITIES if (spec := getattr(self, name)) is not None}

    @classmethod
    def released(cls) -> "CoDiConfig":
        """The released CoDi: video-capable image UNet, audio UNet and text UNet, each with V and connectors."""
        return cls(image=image_unet(), audio=audio_unet(), text=text_unet())

    @classmethod
    def stable_diffusion(cls) -> "CoDiConfig":
        """An image-only model at Stable Diffusion 1.x's size (no video layers, V or connectors)."""
        return cls(image=image_unet(video=False, connectors=False))
