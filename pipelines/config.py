"""Configs of the preparation jobs (`codiray prepare STYLE`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from infra.resources import WorkerResources
from pipelines.storage import S3Config


@dataclass
class ShardConfig:
    """How output is cut into WebDataset tar shards (one input slice -> one shard, img2dataset-style)."""

    samples_per_shard: int = 256
    max_shard_bytes: int = 512 * 1024**2

    def __post_init__(self):
        if self.samples_per_shard < 1:
            raise ValueError("shards.samples_per_shard must be >= 1")


@dataclass
class ImageConfig:
    """Decode/resize of still images."""

    size: int = 64
    resize_mode: Literal["center_crop", "keep_ratio"] = "center_crop"
    min_size: int = 16            # drop images whose shorter side is below this
    max_aspect_ratio: float = 3.0  # drop panoramas/strips beyond this long:short ratio
    max_pixels: int = 89_478_485   # PIL's decompression-bomb limit; larger images are dropped

    def __post_init__(self):
        if self.size < 1 or self.min_size < 1:
            raise ValueError("image.size and image.min_size must be >= 1")


@dataclass
class CaptionFilterConfig:
    """Caption and metadata thresholds (LAION-5B's published defaults where they exist)."""

    min_chars: int = 1
    max_chars: int = 1000
    blocklist: list[str] = field(default_factory=list)
    punsafe_max: Optional[float] = 0.5
    pwatermark_max: Optional[float] = 0.8
    similarity_min: Optional[float] = None
    aesthetic_min: Optional[float] = None


@dataclass
class PrepareConfig:
    """A full `codiray prepare` job."""

    image: ImageConfig = field(default_factory=ImageConfig)
    caption: CaptionFilterConfig = field(default_factory=CaptionFilterConfig)
    shards: ShardConfig = field(default_factory=ShardConfig)
    s3: S3Config = field(default_factory=S3Config)
    worker: WorkerResources = field(default_factory=WorkerResources)
    concurrency: Optional[int] = None  # parallel shard tasks; None lets Ray Data decide
