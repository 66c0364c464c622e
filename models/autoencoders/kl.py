"""LDM KL autoencoders on diffusers' ``AutoencoderKL`` and the image/video codec (SD kl-f8).

The diffusion latent is the posterior mean times a scale factor (LDM §4.3.2: unit-variance latents):
    z = s · μ_φ(x),      x̂ = D_θ(z / s)
Images travel as uint8 ``(b, h, w, 3)``; video as uint8 ``(b, f, h, w, 3)``, encoded frame by frame to
``(b, c, f, h/8, w/8)`` (CoDi's video latent layout) and decoded back frame by frame.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL
from torch import nn

from models.codecs_config import KLVAEConfig


def build_kl_vae(cfg: KLVAEConfig) -> AutoencoderKL:
    """``AutoencoderKL`` of ``cfg`` (random init), or the library's own ``from_pretrained(cfg.pretrained)``."""
    if cfg.pretrained:
        return AutoencoderKL.from_pretrained(cfg.pretrained)
    n = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=cfg.in_channels, out_channels=cfg.in_channels, latent_channels=cfg.latent_channels,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.block_out_channels), layers_per_block=cfg.layers_per_block,
        norm_num_groups=cfg.norm_num_groups, scaling_factor=cfg.scale)


def kl_encode(vae: AutoencoderKL, x: torch.Tensor, scale: float) -> torch.Tensor:
    """z = s · μ(x): the scaled posterior mean (no sampling; CoDi's diffusion latents)."""
    return vae.encode(x).latent_dist.mean * scale


def kl_decode(vae: AutoencoderKL, z: torch.Tensor, scale: float) -> torch.Tensor:
    """x̂ = D(z / s)."""
    return vae.decode(z / scale).sample


def uint8_to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(n, h, w, 3)`` -> float ``(n, 3, h, w)`` in [-1, 1]."""
    return images.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def unit_to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float ``(n, 3, h, w)`` in [-1, 1] -> uint8 ``(n, h, w, 3)`` (clamped, rounded)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)


class ImageCodec(nn.Module):
    """SD's kl-f8 VAE for images and, frame by frame, video."""

    def __init__(self, cfg: KLVAEConfig):
        super().__init__()
        self.cfg = cfg
        self.vae = build_kl_vae(cfg)
        self.scale = cfg.scale

    def _check(self, data: torch.Tensor, dims: int, what: str) -> None:
        if data.dtype != torch.uint8 or data.dim() != dims or data.shape[-1] != 3:
            layout = "(b, h, w, 3)" if dims == 4 else "(b, f, h, w, 3)"
            raise ValueError(f"{what} must be uint8 {layout}, got {data.dtype} {tuple(data.shape)}")
        f = self.cfg.downsample
        if data.shape[-2] % f or data.shape[-3] % f:
            raise ValueError(f"{what} height and width must be multiples of {f}, got {tuple(data.shape)}")

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        self._check(images, 4, "image")
        x = uint8_to_unit(images.to(self.vae.device)).to(self.vae.dtype)
        return kl_encode(self.vae, x, self.scale)

    def decode_image(self, z: torch.Tensor) -> torch.Tensor:
        return unit_to_uint8(kl_decode(self.vae, z.to(self.vae.dtype), self.scale).float())

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        self._check(video, 5, "video")
        b, f = video.shape[:2]
        z = self.encode_image(video.flatten(0, 1))
        return z.unflatten(0, (b, f)).transpose(1, 2)          # (b, c, f, h', w')

    def decode_video(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() != 5:
            raise ValueError(f"video latent must be (b, c, f, h, w), got {tuple(z.shape)}")
        b, f = z.shape[0], z.shape[2]
        frames = self.decode_image(z.transpose(1, 2).flatten(0, 1))
        return frames.unflatten(0, (b, f))                     # (b, f, h, w, 3)
