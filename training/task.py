"""What the training engine (training/loop.py) needs from a stage: its ``StageTask``.

A stage splits its model in two. The **trainable** part goes into DeepSpeed (built inside
``deepspeed.zero.Init`` under ZeRO-3, so its parameters are partitioned as they are created). The
**frozen** part (prompt encoders, autoencoders) stays outside the engine: built outside
``zero.Init``, whole on every worker, run under ``torch.no_grad()``; its outputs are fed to the
engine's forward. ZeRO-3 therefore never partitions a frozen module whose forward reads its own
parameters outside DeepSpeed's gather hooks (open_clip's text tower does).

Per step the engine calls ``batch_inputs`` (data + frozen outputs + every random draw) and then
``loss`` (a deterministic function of the inputs and the trainable weights), so splitting the
inputs' batch dimension into micro-batches leaves the draw unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Protocol

import torch
from torch import nn

from training.config import TrainConfig


class StageTask(Protocol):
    def build_trainable(self) -> nn.Module: ...

    def build_frozen(self) -> Optional[nn.Module]: ...

    def batch_inputs(self, batch: dict, frozen: Optional[nn.Module], generator: torch.Generator,
                     device: torch.device) -> dict[str, torch.Tensor]:
        """A data batch (numpy columns) -> the engine's inputs; the frozen part runs here, no_grad."""

    def loss(self, denoiser, inputs: dict[str, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        """Scalar loss; ``denoiser`` is the DeepSpeed engine (or the bare trainable module)."""

    def export_state(self, trainable: dict[str, torch.Tensor], frozen: Optional[nn.Module]) -> dict[str, torch.Tensor]:
        """The full model's weights (the layout its ``from_pretrained`` reads) from the gathered
        trainable state and the frozen module."""

    def save_pretrained(self, directory: Path, state: dict[str, torch.Tensor], weights_name: str) -> None: ...


def build_task(cfg: TrainConfig) -> StageTask:
    """The task of a stage config (today every TrainConfig is a text-to-image stage)."""
    from training.step import TextToImageTask

    return TextToImageTask(cfg.model)
