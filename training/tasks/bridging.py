"""Bridging alignment (CoDi §3.2): train the audio (CLAP) or video prompt encoder against the FROZEN
CLIP text encoder on paired data, so its conditions land in CLIP's 768-d space.

    L = ½[CE(e^s · ê_m ê_tᵀ, I) + CE(e^s · ê_t ê_mᵀ, I)],   s learnable, e^s ≤ 100 (CLIP)

Task shape: trainable = ``BridgingModule`` (the encoder being aligned + the log temperature s; its
one ``forward`` returns both, so ZeRO-3 gathers s inside the engine's forward); frozen = anything with
``condition("text", captions)`` — the ``Codecs`` (its CLIP text tower); ``batch_inputs`` = the raw
modality tensor + the frozen text embeddings; ``loss`` = ``info_nce``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from common.errors import UsageError
from training.objectives import CLIP_INIT_TEMPERATURE, info_nce
from training.tasks.base import frozen, strip_prefix
from training.tasks.batches import modality_data

ALIGNED = ("audio", "video")


@dataclass
class BridgingObjective:
    modality: str = "audio"                            # the prompt encoder aligned to CLIP text
    init_temperature: float = CLIP_INIT_TEMPERATURE    # s starts at log(1/τ) (CLIP: τ = 0.07)
    shard_set: str = "data"

    def __post_init__(self):
        if self.modality not in ALIGNED:
            raise ValueError(f"bridging aligns one of {', '.join(ALIGNED)} to CLIP text, got {self.modality!r}")
        if not 0.0 < self.init_temperature:
            raise ValueError("init_temperature must be positive")


class BridgingModule(nn.Module):
    """The encoder being aligned (``.audio(waveform)`` for CLAP, ``.video(frames)`` for CLIP's vision side)
    and the learnable log logit scale s."""

    def __init__(self, encoder: nn.Module, modality: str, init_temperature: float = CLIP_INIT_TEMPERATURE):
        super().__init__()
        self.encoder, self.modality = encoder, modality
        # shape (1,), not 0-dim: DeepSpeed's initial broadcast views every parameter as bytes, which a 0-dim tensor refuses
        self.log_scale = nn.Parameter(torch.tensor([math.log(1.0 / init_temperature)]))

    def forward(self, data: Tensor) -> tuple[Tensor, Tensor]:
        """(b, d) embeddings of ``data`` and s (as a tensor computed here, so it exists after ZeRO-3 releases s)."""
        embed = self.encoder.audio(data) if self.modality == "audio" else self.encoder.video(data)
        return embed.flatten(1), self.log_scale[0] * 1.0


class BridgingTask:
    """The ``bridging_alignment`` stage kind, one aligned modality per task."""

    def __init__(self, objective: BridgingObjective, encoder: Callable[[], nn.Module], text: Callable[[], nn.Module]):
        self.objective, self.make_encoder, self.make_text = objective, encoder, text

    @property
    def required(self) -> list[str]:
        return sorted({self.objective.modality, "text"})

    def build_trainable(self) -> nn.Module:
        o = self.objective
        # the encoder may come out of a Codecs, whose prompt encoders are frozen: here it is what trains
        encoder = self.make_encoder().requires_grad_(True)
        return BridgingModule(encoder, o.modality, o.init_temperature)

    def build_frozen(self) -> Optional[nn.Module]:
        return frozen(self.make_text())

    @torch.no_grad()
    def batch_inputs(self, batch: Mapping, text_encoder, generator: torch.Generator,
                     device: torch.device) -> dict[str, Tensor]:
        o = self.objective
        captions = modality_data(batch, "text", o.shard_set)
        data = modality_data(batch, o.modality, o.shard_set).to(device)
        return {"data": data, "text": text_encoder.condition("text", captions).flatten(1).float().to(device)}

    def loss(self, module, inputs: Mapping[str, Tensor], dtype: torch.dtype = torch.float32) -> Tensor:
        data = inputs["data"] if not inputs["data"].is_floating_point() else inputs["data"].to(dtype)
        embed, log_scale = module(data)
        return info_nce(embed, inputs["text"], log_scale)

    def export_state(self, trainable: dict[str, Tensor], codecs: nn.Module) -> dict[str, Tensor]:
        """The ``Codecs`` weights with the aligned CLAP put in place (audio). Video is refused: ``Codecs``
        has ONE CLIP vision tower for image and video conditions, so a trained video encoder has no slot
        of its own there (aligning that tower would move every image condition too)."""
        if self.objective.modality != "audio":
            raise UsageError("bridging_alignment for video: Codecs has no separate video prompt encoder to export "
                             "into (its CLIP vision tower also encodes images); add one to models/codecs.py first")
        state = dict(codecs.state_dict())
        encoder = strip_prefix(trainable, "encoder.")
        state.update({f"clap.{k}": v for k, v in encoder.items()})
        return state

    def save_pretrained(self, directory: Path, state: dict[str, Tensor], weights_name: str) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        # cloned: the codecs tie tensors (Optimus' GPT-2 lm_head = wte), which safetensors refuses to store twice
        save_file({k: v.detach().cpu().clone().contiguous() for k, v in state.items()}, str(directory / weights_name))
