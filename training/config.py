"""Typed configs of a training stage. A recipe (training/recipes.py) is a function returning one."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, get_args

from common.resources import WorkerResources
from models.text_to_image import TextToImageModelConfig
from common.storage import S3Config
from training.task_config import TaskConfig

Precision = Literal["fp32", "bf16", "bf16_autocast"]   # TrainConfig.precision (see there)


@dataclass
class OptimConfig:
    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 50
    grad_clip: float = 1.0       # global gradient-norm clip (DeepSpeed ``gradient_clipping``); 0 = off
    min_lr_ratio: float = 1.0    # cosine decay after warmup down to lr·min_lr_ratio at max_steps; 1 = constant

    def __post_init__(self):
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError("optim.min_lr_ratio must be in [0, 1]")
        if self.warmup_steps < 0 or self.grad_clip < 0:
            raise ValueError("optim.warmup_steps and optim.grad_clip must be >= 0")


@dataclass
class EMAConfig:
    """Exponential moving average of the trainable weights (training/ema.py), kept on rank 0."""

    enabled: bool = True
    decay: float = 0.9999
    warmup: bool = True  # β_n = min(decay, (1 + n) / (10 + n)): early averages forget the random init

    def __post_init__(self):
        if not 0.0 <= self.decay <= 1.0:
            raise ValueError("ema.decay must be in [0, 1]")


@dataclass
class DebugConfig:
    """Fault injection for testing recovery: never set in a real run."""

    # Rank ``fail_rank`` exits the process (os._exit) right after optimizer step ``fail_at_step``,
    # once per run: a marker file in the run folder keeps the restarted group from dying again.
    fail_at_step: Optional[int] = None
    fail_rank: int = 1


@dataclass
class DataConfig:
    path: str = ""               # --out of `codiray prepare` (local path or s3://)
    shuffle_buffer: int = 256    # local shuffle within each worker's stream
    # a worker whose share of one epoch fits in this many MiB keeps it in memory and reshuffles it for the
    # next epochs instead of re-running the streaming read (seconds of start-up per epoch: on toy data
    # an epoch is a few steps); 0 = always stream
    cache_mb: float = 256.0
    # what the frozen encoders computed per example (latents, condition embeddings) is kept up to this
    # many MiB and not computed again (training/encoder_cache.py); 0 = encode every batch
    encoder_cache_mb: float = 256.0
    # a second shard set and the fraction of batches taken from it. Named for its first use, joint
    # image–video training (CoDi's appendix: laion images as 1-frame videos; CLIP pretraining on clips and
    # stills); the text VAE and text LDM take audio–text pairs here (audiocaps beside laion: CoDi's
    # Table 1 trains audio->text too), each batch paired with the conditions its own set carries
    images: str = ""
    image_fraction: float = 0.0
    s3: S3Config = field(default_factory=S3Config)

    def __post_init__(self):
        if self.encoder_cache_mb < 0:
            raise ValueError(f"data.encoder_cache_mb must be >= 0, got {self.encoder_cache_mb}")
        if not 0.0 <= self.image_fraction < 1.0:
            raise ValueError(f"data.image_fraction must lie in [0, 1), got {self.image_fraction}")
        if self.image_fraction > 0 and not self.images:
            raise ValueError("data.image_fraction > 0 needs data.images (the second shard set)")


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
    task: TaskConfig = field(default_factory=TaskConfig)  # what the stage trains (text-to-image: ``model``)
    optim: OptimConfig = field(default_factory=OptimConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    # ZeRO-1/2 shard optimizer states (and gradients); ZeRO-3 also the trainable parameters. Frozen
    # encoders stay outside the engine, whole on every worker (training/task.py).
    zero_stage: int = 2
    # fp32; bf16: DeepSpeed's (bf16 weights, fp32 master weights in the optimizer; for GPUs);
    # bf16_autocast: fp32 weights, gradients and optimizer, the trained model's forward under
    # torch.autocast(bf16) (convolutions and matmuls in bf16). On CPUs with AMX / AVX512-BF16 it made the
    # demo's audio LDM 34 % faster (training/schedules.py); it is slower than fp32 for tiny UNets
    precision: Precision = "fp32"
    grad_accum_steps: int = 1     # micro-batches of batch_size_per_worker per optimizer step
    activation_checkpointing: bool = False  # for models with ``set_gradient_checkpointing``
    ema: EMAConfig = field(default_factory=EMAConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)
    batch_size_per_worker: int = 8
    max_steps: int = 200
    log_every: int = 10
    checkpoint_every: int = 100
    num_to_keep: Optional[int] = 2
    max_failures: int = 0

    def __post_init__(self):
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.precision not in get_args(Precision):
            raise ValueError(f"precision must be one of {', '.join(get_args(Precision))}, got {self.precision!r}")
        if min(self.batch_size_per_worker, self.max_steps, self.log_every, self.checkpoint_every,
               self.grad_accum_steps) < 1:
            raise ValueError("batch_size_per_worker, max_steps, log_every, checkpoint_every and "
                             "grad_accum_steps must be >= 1")
