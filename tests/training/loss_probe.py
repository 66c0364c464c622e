"""The text-to-image loss of a checkpoint on a fixed batch: the same images, captions, timesteps and
noise for every checkpoint, averaged over 16 fixed draws (one draw of t per image made the ratio
between two checkpoints swing by ±0.1 from run to run)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models.text_to_image import TextToImageDiffuser
from training.step import text_to_image_loss

DRAWS = 16


def fixed_batch(rows: list[dict], size: int = 8) -> tuple[np.ndarray, list[str]]:
    batch = sorted(rows, key=lambda r: str(r["key"]))[:size]
    return np.stack([r["image"] for r in batch]), [str(r["caption"]) for r in batch]


def fixed_batch_loss(checkpoint: Path, images: np.ndarray, captions: list[str]) -> float:
    model = TextToImageDiffuser.from_pretrained(checkpoint)
    model.cfg.cond_drop_prob = 0.0
    with torch.no_grad():
        return float(np.mean([text_to_image_loss(model, images, captions, torch.Generator().manual_seed(seed)).item()
                              for seed in range(DRAWS)]))
