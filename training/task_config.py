"""What a stage trains: ``TrainConfig.task``, a ``kind`` plus that kind's typed objective.

    TaskConfig()                                            # text-to-image (``TrainConfig.model``)
    TaskConfig(kind="ldm", ldm=LDMObjective("image"), codi=CoDiConfig(image=...), codecs=CodecsSource(...))

``training.task.build_task`` turns it into the stage's task object with a plain ``if``/``elif`` over
``kind``: no class is ever looked up from a string. Upstream stages' exports enter through
``codecs`` (a codecs folder plus weight files laid over it) and ``init`` (a ``CoDi`` folder).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from models.codi import CoDiConfig
from models.codi.config import UNetSpec
from training.tasks.autoencoder import AutoencoderObjective
from training.tasks.bridging import BridgingObjective
from training.tasks.cascade import CascadeObjective
from training.tasks.distillation import DistillationObjective
from training.tasks.latent_alignment import LatentAlignmentObjective
from training.tasks.ldm import LDMObjective

TaskKind = Literal["text_to_image", "autoencoder", "bridging_alignment", "ldm", "latent_alignment", "cascade",
                   "distillation"]
DEBUG_CODECS = "debug"
CODECS_VARIANTS = (DEBUG_CODECS, "toy")          # written by launch.train (training/debug_codecs.py)


@dataclass
class CodecsSource:
    """The stage's ``Codecs``: a ``Codecs.from_pretrained`` folder, then ``overlays`` (safetensors files of
    upstream stages, e.g. a trained VAE piece or a bridged CLAP) loaded over it in order; every tensor of
    an overlay must exist in the codecs with the same shape.

    ``path: debug`` is the tiny debug codecs, written once by ``launch.train`` under the stage's
    storage path (``<storage_path>/debug_codecs``) and shared by every stage stored there; ``path: toy`` the
    same sizes with the toy world's vocabulary and 1.28 s of audio (``<storage_path>/toy_codecs``)."""

    path: str = DEBUG_CODECS
    overlays: list[str] = field(default_factory=list)
    seed: int = 0                                  # the debug codecs' weights


@dataclass
class TaskConfig:
    kind: TaskKind = "text_to_image"
    codecs: CodecsSource = field(default_factory=CodecsSource)
    # a CoDi.from_pretrained folder: ldm starts from it (optional); latent_alignment aligns it and
    # distillation distils it (its teacher and the student's start) — both require it; a cascade base
    # export (cascade_config.json + weights) for distillation with teacher: cascade
    init: str = ""
    # or the model assembled from several folders: UNet (image/audio/text) -> the CoDi folder holding it
    # (CoDi's per-modality LDMs, trained apart, meet for latent alignment)
    init_parts: dict[str, str] = field(default_factory=dict)
    init_weights: str = "model.safetensors"        # which weights of ``init`` (or ema.safetensors)
    codi: Optional[CoDiConfig] = None              # ldm without ``init``: the model's sizes
    cascade_unet: Optional[UNetSpec] = None        # cascade: the UNet sizes (cascade_spec sets the channels)
    autoencoder: Optional[AutoencoderObjective] = None
    bridging: Optional[BridgingObjective] = None
    ldm: Optional[LDMObjective] = None
    latent_alignment: Optional[LatentAlignmentObjective] = None
    cascade: Optional[CascadeObjective] = None
    distillation: Optional[DistillationObjective] = None

    def __post_init__(self):
        objective = {"autoencoder": self.autoencoder, "bridging_alignment": self.bridging, "ldm": self.ldm,
                     "latent_alignment": self.latent_alignment, "cascade": self.cascade,
                     "distillation": self.distillation}
        key = {"bridging_alignment": "bridging"}.get(self.kind, self.kind)
        if self.kind != "text_to_image" and objective[self.kind] is None:
            raise ValueError(f"task.kind {self.kind} needs task.{key} (its objective)")
        if self.init and self.init_parts:
            raise ValueError("give task.init or task.init_parts, not both")
        unknown = sorted(set(self.init_parts) - {"image", "audio", "text"})
        if unknown:
            raise ValueError(f"task.init_parts keys must be UNets (image, audio, text), got {unknown}")
        if self.kind == "ldm" and self.codi is None and not self.has_init:
            raise ValueError("task.kind ldm needs task.codi (the model's sizes) or task.init (a CoDi folder)")
        if self.kind in ("latent_alignment", "distillation") and not self.has_init:
            raise ValueError(f"task.kind {self.kind} needs task.init (or task.init_parts): the CoDi folder of an "
                             "ldm stage's export (distillation: or a cascade base's export)")
        if self.kind == "distillation" and self.distillation.teacher == "cascade" and not self.init:
            raise ValueError("a cascade teacher is one export folder: set task.init, not task.init_parts")
        if self.kind == "cascade" and self.cascade_unet is None:
            raise ValueError("task.kind cascade needs task.cascade_unet (the UNet's sizes)")

    @property
    def has_init(self) -> bool:
        return bool(self.init or self.init_parts)
