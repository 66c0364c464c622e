"""Tiny CoDi specs (768-d context, to take the codecs' conditions), debug codecs with local tokenizers,
and toy batches in the layout ``codiray prepare`` writes (numpy columns, as pipelines/reader.py yields)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from models.codi import CoDiConfig, UNetSpec
from training.debug_codecs import debug_codecs, debug_codecs_config, write_tokenizers  # noqa: F401 (re-exported)

CONTEXT = 768


def randomize(module: nn.Module, seed: int = 0, std: float = 0.05) -> nn.Module:
    """Seeded random values for every parameter (zero-init branches included), so every path carries gradient."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return module


def tiny_image(video: bool = False, connectors: bool = True, in_channels: int = 4, out_channels: int = 4) -> UNetSpec:
    return UNetSpec(in_channels=in_channels, out_channels=out_channels, model_channels=64, channel_mult=[1, 2],
                    num_res_blocks=[1, 1], attention_levels=[True, False], num_heads=4, context_dim=CONTEXT,
                    video=video, video_heads=2, connectors=connectors, connector_mult=[1, 2], connector_blocks=[1, 1],
                    connector_levels=[True, True], connector_dim=64)


def tiny_audio() -> UNetSpec:
    return UNetSpec(in_channels=8, out_channels=8, model_channels=64, channel_mult=[1, 2], num_res_blocks=[1, 1],
                    attention_levels=[True, False], num_heads=4, context_dim=CONTEXT, connector_mult=[1, 2],
                    connector_blocks=[1, 1], connector_levels=[True, False], connector_dim=64, scale_factor=0.9228)


def tiny_text(latent: int = 16) -> UNetSpec:
    return UNetSpec(kind="text", in_channels=latent, out_channels=latent, model_channels=32, channel_mult=[1, 2],
                    num_res_blocks=[1, 1], attention_levels=[True, True], num_heads=4, context_dim=CONTEXT,
                    second_dim=[4, 4], connector_mult=[1, 2], connector_blocks=[1, 1], connector_second_dim=[4, 4],
                    connector_levels=[True, True], connector_dim=64, scale_factor=4.3108)


def tiny_codi(**unets) -> CoDiConfig:
    return CoDiConfig(**unets)


CAPTIONS = ["a red dog runs", "a blue cat sits", "a green bird flies", "a small fish swims",
            "a big car drives", "a boat sails on the lake", "a tree grows in the park", "a house stands near the road"]


def laion_batch(n: int = 4, size: int = 16, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"key": np.array([f"{i:04d}" for i in range(n)]),
            "caption": np.array([CAPTIONS[i % len(CAPTIONS)] for i in range(n)]),
            "image": rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)}


def tone(freq: float, samples: int, rate: int = 16000) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * freq * np.arange(samples) / rate)).astype(np.float16)


def audiocaps_batch(n: int = 4, samples: int = 5120, seed: int = 0) -> dict:
    return {"key": np.array([f"{i:04d}" for i in range(n)]),
            "caption": np.array([CAPTIONS[i % len(CAPTIONS)] for i in range(n)]),
            "audio": np.stack([tone(220.0 * (1 + i % len(CAPTIONS)), samples) for i in range(n)])}


def webvid_batch(n: int = 4, frames: int = 4, size: int = 16, samples: int = 5120, with_audio=None, seed: int = 0) -> dict:
    """Clips with frames, middle frame, caption and audio; ``with_audio`` (list of bool) marks clips with sound."""
    rng = np.random.default_rng(seed)
    video = rng.integers(0, 256, (n, frames, size, size, 3), dtype=np.uint8)
    batch = {"key": np.array([f"{i:04d}" for i in range(n)]),
             "caption": np.array([CAPTIONS[i % len(CAPTIONS)] for i in range(n)]),
             "frames": video, "image": video[:, frames // 2],
             "audio": np.stack([tone(220.0 * (1 + i), samples) for i in range(n)])}
    if with_audio is not None:
        batch["has_audio"] = np.asarray(with_audio, dtype=bool)
        batch["audio"][~batch["has_audio"]] = 0
    return batch


def adam_steps(task, module: nn.Module, inputs: dict, steps: int, lr: float = 1e-3) -> list[float]:
    """``steps`` AdamW steps of ``task.loss`` on one fixed ``inputs`` (the engine's step, without DeepSpeed)."""
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    losses = []
    for _ in range(steps):
        loss = task.loss(module, inputs, torch.float32)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses
