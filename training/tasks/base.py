"""Pieces every task shares: freezing, the weighted batch mean, and writing a CoDi model folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from common.config import to_dict
from models.codi.model import CONFIG_NAME, WEIGHTS_NAME


def frozen(module: Optional[nn.Module]) -> Optional[nn.Module]:
    """``module`` with every parameter's ``requires_grad`` off, in eval mode (no dropout)."""
    if module is not None:
        module.requires_grad_(False)
        module.train(False)
    return module


def weighted_mean(per_sample: Tensor, weight: Optional[Tensor] = None) -> Tensor:
    """Σ wᵢ ℓᵢ / Σ wᵢ (the plain mean without weights); examples with w = 0 (a missing target) count for nothing."""
    if weight is None:
        return per_sample.mean()
    weight = weight.to(per_sample.device, per_sample.dtype)
    return (per_sample * weight).sum() / weight.sum().clamp(min=1.0)


def save_codi_folder(directory: Path, state: dict[str, Tensor], config, weights_name: str = WEIGHTS_NAME) -> Path:
    """A ``CoDi.from_pretrained`` folder from a full CoDi state dict and its ``CoDiConfig``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(directory / weights_name))
    (directory / CONFIG_NAME).write_text(json.dumps(to_dict(config), indent=2))
    return directory


def strip_prefix(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries of ``state`` under ``prefix`` (e.g. ``codi.``), renamed without it."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


