"""Typed configs of a training stage. A recipe (training/recipes.py) is a function returning one."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from common.resources import WorkerResources
from models.text_to_image import TextToImageModelConfig
from common.storage import S3Config


@dataclass
class OptimConfig:
    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 50
    grad_clip: float = 1.0


@dataclass
class DataConfig:
    path: str = ""               # --out of `codiray prepare` (local path or s3://)
    shuffle_buffer: int = 256    # local shuffle within each worker's stream
    s3: S3Config = field(default_factory=S3Config)


@dataclass
class ScalingConfig:
    num_workers: int = 2
    worker: WorkerResources = field(default_factory=WorkerResources)


@dataclass
class TrainConfig:
    """One training stage run by Ray Train + DeepSpeed."""

    name: str = "t2i"
    storage_path: str = "./outputs/runs"  # local path or s3:// — where Ray Train keeps checkpoints
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: TextToImageModelConfig = field(default_factory=TextToImageModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    zero_stage: int = 2  # ZeRO-2: optimizer states and gradients sharded across workers
    precision: Literal["fp32", "bf16"] = "fp32"
    batch_size_per_worker: int = 8
    max_steps: int = 200
    log_every: int = 10
    checkpoint_every: int = 100
    num_to_keep: Optional[int] = 2
    max_failures: int = 0

    def __post_init__(self):
        if self.zero_stage not in (0, 1, 2):
            # ZeRO-3 partitions the frozen prompt encoder too, whose forward reads parameters
            # outside ZeRO-3's gather hooks (measured: the positional embedding arrives empty).
            raise ValueError("zero_stage must be 0, 1 or 2 (ZeRO-3 is not supported yet)")
        if min(self.batch_size_per_worker, self.max_steps, self.log_every, self.checkpoint_every) < 1:
            raise ValueError("batch_size_per_worker, max_steps, log_every and checkpoint_every must be >= 1")
