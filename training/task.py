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

from common import storage
from common.errors import UsageError
from common.storage import S3Config
from training.config import TrainConfig
from training.task_config import CODECS_VARIANTS, CodecsSource


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


def load_codecs(source: CodecsSource, s3: Optional[S3Config] = None):
    """The stage's ``Codecs``: its folder, then each overlay's tensors laid over it (names and shapes must
    match); folder and overlays local or ``s3://`` (read through ``storage.local_copy``)."""
    from safetensors.torch import load_file

    from models.codecs import Codecs

    if source.path in CODECS_VARIANTS:
        raise UsageError(f"task.codecs.path is still {source.path!r}: launch.train writes those codecs and points "
                         "the config at them before the workers start")
    codecs = Codecs.from_pretrained(storage.local_copy(source.path, s3))
    own = codecs.state_dict()
    for path in source.overlays:
        state = load_file(storage.local_copy(path, s3))
        wrong = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
        if wrong:
            raise UsageError(f"{path}: {len(wrong)} tensor(s) do not fit the codecs at {source.path} "
                             f"(first: {wrong[0]!r}) — exported from codecs of another config?")
        codecs.load_state_dict(state, strict=False)
    return codecs


def build_task(cfg: TrainConfig) -> StageTask:
    """The task of a stage config: ``cfg.task.kind`` picks the class, its typed objective configures it."""
    from training.tasks.autoencoder import AutoencoderTask
    from training.tasks.bridging import BridgingTask
    from training.tasks.cascade import CascadeTask, load_cascade
    from training.tasks.distillation import DistillationTask
    from training.tasks.latent_alignment import LatentAlignmentTask
    from training.tasks.ldm import LDMTask

    t, s3 = cfg.task, cfg.data.s3
    codecs = lambda: load_codecs(t.codecs, s3)  # noqa: E731 — built on each worker, not in the driver
    init = ((lambda: load_codi(t.init, t.init_weights, s3)) if t.init else
            (lambda: load_codi_parts(t.init_parts, t.init_weights, s3)) if t.init_parts else None)
    if t.kind == "text_to_image":
        from training.step import TextToImageTask

        return TextToImageTask(cfg.model)
    if t.kind == "autoencoder":
        return AutoencoderTask(t.autoencoder, codecs_config(t.codecs, s3))
    if t.kind == "bridging_alignment":
        piece = "clap" if t.bridging.modality == "audio" else "clip"     # image and video: CLIP's towers
        return BridgingTask(t.bridging, encoder=lambda: getattr(load_codecs(t.codecs, s3), piece), text=codecs)
    if t.kind == "ldm":
        codi = t.codi if t.codi is not None else init_config(t, s3)
        return LDMTask(t.ldm, codi, codecs, init=init, second_set=cfg.data.image_fraction > 0)
    if t.kind == "latent_alignment":
        return LatentAlignmentTask(t.latent_alignment, init, codecs)
    if t.kind == "cascade":
        return CascadeTask(t.cascade, t.cascade_unet, codecs)
    if t.kind == "distillation" and t.distillation.teacher == "cascade":
        base = cascade_teacher_config(t.init, t.distillation.student_steps, s3)
        return DistillationTask(t.distillation, lambda: load_cascade(t.init, t.init_weights, s3)[0], codecs,
                                base.objective.diffusion, cascade=base)
    if t.kind == "distillation":
        return DistillationTask(t.distillation, init, codecs, init_config(t, s3).diffusion)
    raise AssertionError(f"unhandled task kind {t.kind!r}")


def cascade_teacher_config(folder: str, student_steps: int, s3: Optional[S3Config] = None):
    """The ``CascadeConfig`` of the base export a distillation stage halves: a base stage's (any sampling
    steps) or a distilled student's of 2N steps."""
    from training.tasks.cascade import cascade_config

    config = cascade_config(folder, s3)
    if config.objective.kind != "base":
        raise UsageError(f"{folder}: a cascade {config.objective.kind} export — distillation halves the base's steps")
    if config.sampling_steps and config.sampling_steps != 2 * student_steps:
        raise UsageError(f"{folder}: a {config.sampling_steps}-step student cannot teach a {student_steps}-step one "
                         f"(progressive distillation halves: set student_steps {config.sampling_steps // 2})")
    return config


def codi_config(directory: str, s3: Optional[S3Config] = None):
    """The ``CoDiConfig`` of a CoDi folder, local or ``s3://`` (its config.json), without loading weights."""
    import json

    from common.config import from_dict
    from models.codi import CoDiConfig
    from models.codi.model import CONFIG_NAME

    path = storage.join(str(directory), CONFIG_NAME)
    if not storage.exists(path, s3):
        raise UsageError(f"{directory}: no {CONFIG_NAME} — task.init must be a CoDi folder (an ldm stage's checkpoint)")
    return from_dict(CoDiConfig, json.loads(storage.read_bytes(path, s3)), source=path)


def parts_config(parts: dict[str, str], s3: Optional[S3Config] = None):
    """The ``CoDiConfig`` holding each named UNet as its folder's config has it (diffusion: the first's;
    every folder must agree on it)."""
    import dataclasses

    configs = {unet: codi_config(folder, s3) for unet, folder in parts.items()}
    first = next(iter(configs.values()))
    for unet, cfg in configs.items():
        if getattr(cfg, unet) is None:
            raise UsageError(f"{parts[unet]}: holds no {unet} UNet (it has: {', '.join(cfg.specs())})")
        if cfg.diffusion != first.diffusion:
            raise UsageError(f"{parts[unet]}: its diffusion process differs from {next(iter(parts.values()))}'s")
    unets = {"image": None, "audio": None, "text": None}
    unets.update({unet: getattr(cfg, unet) for unet, cfg in configs.items()})
    return dataclasses.replace(first, **unets)


def init_config(t, s3: Optional[S3Config] = None):
    """The ``CoDiConfig`` a task's ``init`` / ``init_parts`` describe."""
    return codi_config(t.init, s3) if t.init else parts_config(t.init_parts, s3)


def load_codi_parts(parts: dict[str, str], weights_name: str, s3: Optional[S3Config] = None):
    """One ``CoDi`` assembled from several folders (local or ``s3://``): each UNet (with its V and
    connectors) from its own."""
    from safetensors.torch import load_file

    from models.codi import CoDi

    model = CoDi(parts_config(parts, s3))
    state = {}
    for folder in dict.fromkeys(parts.values()):   # each file read once, however many UNets it gives
        prefixes = tuple(f"unets.{unet}." for unet, f in parts.items() if f == folder)
        weights = storage.local_copy(storage.join(folder, weights_name), s3)
        state.update({k: v for k, v in load_file(weights).items() if k.startswith(prefixes)})
    model.load_state_dict(state, strict=True)
    return model


def load_codi(directory: str, weights_name: str, s3: Optional[S3Config] = None):
    """``CoDi.from_pretrained`` of ``directory`` (local or ``s3://``) reading ``weights_name`` (model or
    EMA weights)."""
    from safetensors.torch import load_file

    from models.codi import CoDi
    from models.codi.model import CODECS_DIR, CONFIG_NAME

    config = codi_config(directory, s3)   # a missing config is one line naming the folder
    if weights_name == "model.safetensors":
        return CoDi.from_pretrained(storage.local_copy(directory, s3, names=(CONFIG_NAME, weights_name, CODECS_DIR)))
    model = CoDi(config)
    model.load_state_dict(load_file(storage.local_copy(storage.join(directory, weights_name), s3)), strict=True)
    return model


def codecs_config(source: CodecsSource, s3: Optional[S3Config] = None):
    """The ``CodecsConfig`` of a codecs folder, local or ``s3://`` (tokenizer paths resolved to local
    files), without building the codecs."""
    import json

    from common.config import from_dict
    from models.codecs_config import CodecsConfig

    if not storage.exists(storage.join(source.path, "config.json"), s3):
        raise UsageError(f"{source.path}: no config.json — task.codecs.path must be a Codecs.from_pretrained folder")
    folder = Path(storage.local_copy(source.path, s3))
    path = folder / "config.json"
    cfg = from_dict(CodecsConfig, json.loads(path.read_text()), source=str(path))
    for obj, attr in ((cfg.text, "encoder_tokenizer"), (cfg.text, "decoder_tokenizer"), (cfg.clip, "tokenizer")):
        if obj is not None and getattr(obj, attr):
            setattr(obj, attr, str(folder / getattr(obj, attr)))
    return cfg
