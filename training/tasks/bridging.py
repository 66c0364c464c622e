"""Bridging alignment (CoDi §3.2): train the audio (CLAP) or video prompt encoder against the FROZEN
CLIP text encoder on paired data, so its conditions land in CLIP's 768-d space.

    L = ½[CE(e^s · ê_m ê_tᵀ, I) + CE(e^s · ê_t ê_mᵀ, I)],   s learnable, e^s ≤ 100 (CLIP)

``modality: video`` trains CoDi's temporal attention blocks inside CLIP's vision tower (its video prompt
encoder, ``clip.temporal: true``) with the tower itself frozen, so image conditions do not move; the
export is those blocks (``clip.temporal.*``).

``modality: image`` is CLIP's own pretraining (Radford et al. 2021: the same loss on image–text pairs,
BOTH towers trained), which the toy schedules run first because no pretrained CLIP exists at their
sizes: CoDi starts from OpenAI's CLIP, whose text space already separates what captions say. A random
frozen text tower gives distinct but unstructured caption embeddings, and the demo's LDMs trained on
those ignored their prompts (loss with the right caption 0.0546 vs a shuffled one 0.0550).

``modality: image+video`` is that pretraining on video–text pairs as well (the stage's clips; its
``data.images`` pairs arrive as 1-frame videos, which CLIP encodes as images). Web-scale CLIP has read
"moving left" under countless videos and GIFs; a toy CLIP pretrained on still images never has to tell
it from "moving right", and it did not: in the demo, captions differing only in motion embedded at
cosine 0.99 (only in colour: 0.31), so no video LDM could follow the motion asked for. Here the
clips' side runs CoDi's temporal blocks (trained too: without them a frame average of a path centred
mid-clip reads the same both ways), so the text tower has to separate directions. The export is the
two towers only: video bridging then trains the temporal blocks afresh against the frozen, now
motion-aware text tower, as CoDi does.

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
from training.tasks.batches import images_as_videos, modality_data

# each aligned modality -> the encoder method its data goes through; image(+video): CLIP pretraining
ENCODE = {"audio": "audio", "video": "video", "image": "image", "image+video": "video"}
ALIGNED = tuple(ENCODE)
PRETRAINING = ("image", "image+video")         # both towers train


@dataclass
class BridgingObjective:
    modality: str = "audio"                            # the prompt encoder aligned to CLIP text (image: CLIP itself)
    init_temperature: float = CLIP_INIT_TEMPERATURE    # s starts at log(1/τ) (CLIP: τ = 0.07)
    shard_set: str = "data"

    def __post_init__(self):
        if self.modality not in ALIGNED:
            raise ValueError(f"bridging aligns one of {', '.join(ALIGNED)} to CLIP text, got {self.modality!r}")
        if not 0.0 < self.init_temperature:
            raise ValueError("init_temperature must be positive")


class ClipTowers(nn.Module):
    """A ``ClipEncoder``'s towers, projections (and, with ``temporal``, its temporal blocks) as parameters,
    its methods as calls — without CLIP's 0-dim ``logit_scale``, which DeepSpeed's initial broadcast (a
    bytes view of every parameter) refuses; the stage learns its own s."""

    def __init__(self, encoder: nn.Module, temporal: bool = True):
        super().__init__()
        m = encoder.model
        self.text_model, self.vision_model = m.text_model, m.vision_model
        self.text_projection, self.visual_projection = m.text_projection, m.visual_projection
        self.temporal = encoder.temporal if temporal else None   # image pretraining never runs them
        self.__dict__["clip"] = encoder           # not registered: the same modules, reached through its methods

    def image(self, images: Tensor) -> Tensor:
        return self.clip.image(images)

    def video(self, video: Tensor) -> Tensor:
        return self.clip.video(video)

    def text_ids(self, ids: Tensor) -> Tensor:
        return self.clip.text_ids(ids)

    @staticmethod
    def codecs_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
        """This module's state under the ``Codecs`` names (``clip.model.…``, ``clip.temporal.…``)."""
        return {f"clip.{k}" if k.startswith("temporal.") else f"clip.model.{k}": v for k, v in state.items()}


class BridgingModule(nn.Module):
    """The encoder being aligned (``.audio(waveform)`` for CLAP, ``.video(frames)`` for CLIP's vision side)
    and the learnable log logit scale s."""

    def __init__(self, encoder: nn.Module, modality: str, init_temperature: float = CLIP_INIT_TEMPERATURE):
        super().__init__()
        self.encoder, self.modality = encoder, modality
        # shape (1,), not 0-dim: DeepSpeed's initial broadcast views every parameter as bytes, which a 0-dim tensor refuses
        self.log_scale = nn.Parameter(torch.tensor([math.log(1.0 / init_temperature)]))

    def forward(self, data: Tensor, ids: Optional[Tensor] = None) -> tuple[Tensor, ...]:
        """(b, d) embeddings of ``data`` and s (as a tensor computed here, so it exists after ZeRO-3 releases s);
        for CLIP pretraining (``image``) also the (b, d) embeddings of the caption token ``ids``."""
        embed = getattr(self.encoder, ENCODE[self.modality])(data).flatten(1)
        if self.modality in PRETRAINING:
            return embed, self.encoder.text_ids(ids).flatten(1), self.log_scale[0] * 1.0
        return embed, self.log_scale[0] * 1.0


class BridgingTask:
    """The ``bridging_alignment`` stage kind, one aligned modality per task."""

    def __init__(self, objective: BridgingObjective, encoder: Callable[[], nn.Module], text: Callable[[], nn.Module]):
        self.objective, self.make_encoder, self.make_text = objective, encoder, text

    @property
    def required(self) -> list[str]:
        return sorted({ENCODE[self.objective.modality], "text"})

    def shard_set_needs(self) -> tuple[list[str], list[str], list[str]]:
        """With a second shard set (``image+video``: CLIP on clips and on image–text pairs)."""
        return self.required, ["image", "text"], []

    def build_trainable(self) -> nn.Module:
        o = self.objective
        # the encoder may come out of a Codecs, whose prompt encoders are frozen: here it is what trains
        encoder = self.make_encoder().requires_grad_(True)
        if o.modality != "audio":                       # CLIP's towers
            encoder = ClipTowers(encoder, temporal=o.modality != "image")
        if o.modality == "video":
            if encoder.temporal is None:
                raise UsageError("bridging_alignment for video trains CoDi's temporal attention in CLIP's vision "
                                 "tower, and these codecs have none: set clip.temporal: true in the codecs config")
            encoder.requires_grad_(False)
            encoder.temporal.requires_grad_(True)       # the tower stays as image conditions know it
        return BridgingModule(encoder, o.modality, o.init_temperature)

    def build_frozen(self) -> Optional[nn.Module]:
        return frozen(self.make_text())

    @torch.no_grad()
    def batch_inputs(self, batch: Mapping, text_encoder, generator: torch.Generator,
                     device: torch.device) -> dict[str, Tensor]:
        o = self.objective
        captions = modality_data(batch, "text", o.shard_set)
        if o.modality == "image+video":     # clips, or a data.images batch as 1-frame videos
            batch = images_as_videos(batch)
        data = modality_data(batch, ENCODE[o.modality], o.shard_set).to(device)
        if o.modality in PRETRAINING:     # the text tower trains: only its token ids are fed in
            return {"data": data, "ids": text_encoder.clip.tokenize(captions).to(device)}
        return {"data": data, "text": text_encoder.condition("text", captions).flatten(1).float().to(device)}

    def loss(self, module, inputs: Mapping[str, Tensor], dtype: torch.dtype = torch.float32) -> Tensor:
        data = inputs["data"] if not inputs["data"].is_floating_point() else inputs["data"].to(dtype)
        if self.objective.modality in PRETRAINING:
            embed, text, log_scale = module(data, inputs["ids"])
            return info_nce(embed, text, log_scale)
        embed, log_scale = module(data)
        return info_nce(embed, inputs["text"], log_scale)

    def export_state(self, trainable: dict[str, Tensor], codecs: nn.Module) -> dict[str, Tensor]:
        """The trained piece under its ``Codecs`` names, laid over the codecs of later stages like an
        autoencoder piece: the aligned CLAP (``clap.*``, audio); CoDi's temporal blocks (``clip.temporal.*``,
        video: the one part of the video prompt encoder that image conditions do not share); both CLIP
        towers (``clip.model.*`` but its logit scale, image and image+video: CLIP pretraining, whose temporal
        blocks were a means to read motion and stay behind, so each piece has one stage)."""
        encoder = strip_prefix(trainable, "encoder.")
        if self.objective.modality == "audio":
            return {f"clap.{k}": v for k, v in encoder.items()}
        temporal = {k: v for k, v in encoder.items() if k.startswith("temporal.")}
        if self.objective.modality == "video":
            return ClipTowers.codecs_state(temporal)
        return ClipTowers.codecs_state({k: v for k, v in encoder.items() if k not in temporal})

    def save_pretrained(self, directory: Path, state: dict[str, Tensor], weights_name: str) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        # cloned: the codecs tie tensors (Optimus' GPT-2 lm_head = wte), which safetensors refuses to store twice
        save_file({k: v.detach().cpu().clone().contiguous() for k, v in state.items()}, str(directory / weights_name))
