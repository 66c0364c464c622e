"""Configs of the preparation jobs (`codiray prepare STYLE`)."""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from typing import Literal, Optional

from common.resources import WorkerResources
from common.storage import S3Config


@dataclass
class ShardConfig:
    """How output is cut into WebDataset tar shards.

    The key-sorted input is cut into slices of ``samples_per_shard`` rows, one task each; a slice's
    samples go to ``shard-NNNNNN.tar``, continued in ``shard-NNNNNN_pK.tar`` parts whenever a tar
    would pass ``samples_per_shard`` samples (videos give several clips) or ``max_shard_bytes``.
    """

    samples_per_shard: int = 256
    max_shard_bytes: int = 512 * 1024**2

    def __post_init__(self):
        if self.samples_per_shard < 1:
            raise ValueError("shards.samples_per_shard must be >= 1")
        if self.max_shard_bytes < 1:
            raise ValueError("shards.max_shard_bytes must be >= 1")


@dataclass
class VideoConfig:
    """Clip cutting for WebVid-style video: ``frames`` frames at ``fps`` per clip (CoDi: 8 @ 4, 16 @ 8)."""

    size: int = 64
    fps: float = 4.0
    frames: int = 8
    resize_mode: Literal["center_crop", "keep_ratio"] = "center_crop"
    max_clips: Optional[int] = None  # clips per video, from its start; None = every whole clip
    interpolation: Literal["BILINEAR", "FAST_BILINEAR", "BICUBIC", "AREA"] = "BILINEAR"
    threads: int = 0                 # decoder threads per file; 0 = FFmpeg's choice (all cores)
    keep_audio: bool = True          # store the clip's audio segment when the file has an audio track
    max_pixels: int = 8192 * 4320    # absurd frame sizes are dropped before decoding

    def __post_init__(self):
        if self.size < 1 or self.frames < 1 or self.fps <= 0:
            raise ValueError("video.size and video.frames must be >= 1 and video.fps > 0")
        if self.max_clips is not None and self.max_clips < 1:
            raise ValueError("video.max_clips must be >= 1 or null")

    @property
    def clip_seconds(self) -> float:
        return self.frames / self.fps


@dataclass
class AudioConfig:
    """Audio segments: mono at ``sample_rate``, cut or zero-padded to ``seconds``, optional log-mel."""

    sample_rate: int = 16000
    seconds: float = 10.0
    min_seconds: float = 0.5         # less decoded audio than this in a segment -> dropped
    mel: bool = False
    n_mels: int = 64
    n_fft: int = 1024
    hop_length: int = 160
    win_length: int = 1024
    f_min: float = 0.0
    f_max: Optional[float] = 8000.0
    keep_waveform: bool = True       # store audio.npy (float16) next to mel.npy
    # "absolute": files are whole recordings and the metadata's start/end are positions in them;
    # "clip": files hold only the segment; "auto": absolute when the file is long enough for it.
    offsets: Literal["auto", "absolute", "clip"] = "auto"

    def __post_init__(self):
        if self.sample_rate < 1000 or self.seconds <= 0:
            raise ValueError("audio.sample_rate must be >= 1000 and audio.seconds > 0")
        if not (self.mel or self.keep_waveform):
            raise ValueError("audio: with mel off, keep_waveform must be on (nothing would be stored)")

    @property
    def num_samples(self) -> int:
        return int(round(self.seconds * self.sample_rate))


@dataclass
class ClipFilterConfig:
    """CLIP image-text similarity filter (LAION-5B: ViT-B/32, cosine >= 0.28), run in an actor pool."""

    enabled: bool = False
    model: str = "ViT-B-32"
    pretrained: Optional[str] = "laion2b_s34b_b79k"
    threshold: float = 0.28
    actors: int = 1
    batch_size: int = 64
    # tests: a tiny random-init CLIP (no download); a real job must leave this off
    tiny_random: bool = False


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
    clip: ClipFilterConfig = field(default_factory=ClipFilterConfig)


# The fields a ``media.pattern`` may use, per style (``ext`` is any accepted file extension).
PATTERN_FIELDS = {
    "audioset": ("ytid", "start", "end", "key", "ext"),
    "audiocaps": ("audiocap_id", "ytid", "start", "end", "key", "ext"),
    "webvid": ("videoid", "page_dir", "key", "ext"),
    "laion": ("key", "ext"),
}


def pattern_fields(pattern: str) -> list[str]:
    """The field names a format template uses (``{ytid[0]}`` -> ``ytid``); ValueError for a template
    that is not one (unbalanced braces, positional ``{}``, attribute access ``{ytid.x}``)."""
    names = []
    for _, field_name, _, _ in string.Formatter().parse(pattern):
        if field_name is None:
            continue
        base = re.split(r"[.\[]", field_name, maxsplit=1)[0]
        if not base or base.isdigit():
            raise ValueError(f"media.pattern {pattern!r}: every field needs a name, e.g. {{ytid}}")
        if "." in field_name.split("[", 1)[0]:
            raise ValueError(f"media.pattern {pattern!r}: attribute access ({field_name}) is not allowed")
        names.append(base)
    return names


@dataclass
class MediaConfig:
    """Where a row's media file is. Unset, each style's naming conventions are tried (see the README:
    AudioSet ``{ytid}``, ``Y{ytid}``, ``{ytid}_{start}[_{end}]``; AudioCaps also ``{audiocap_id}``).
    ``pattern``: one format template instead, relative to --media, e.g. ``"{ytid}_{start:.0f}.{ext}"``
    or ``"clips/{ytid[0]}/{ytid}.flac"``; fields per style in ``PATTERN_FIELDS``."""

    pattern: Optional[str] = None

    def __post_init__(self):
        if self.pattern is None:
            return
        known = sorted({f for fields in PATTERN_FIELDS.values() for f in fields})
        try:
            names = pattern_fields(self.pattern)
        except ValueError as err:
            raise ValueError(str(err)) from None
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"media.pattern {self.pattern!r}: unknown field {unknown[0]!r} "
                             f"(fields: {', '.join(known)})")
        if self.pattern.startswith("/") or ".." in self.pattern.split("/"):
            raise ValueError(f"media.pattern {self.pattern!r}: must be a path relative to --media")


@dataclass
class PrepareConfig:
    """A full `codiray prepare` job."""

    image: ImageConfig = field(default_factory=ImageConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    caption: CaptionFilterConfig = field(default_factory=CaptionFilterConfig)
    shards: ShardConfig = field(default_factory=ShardConfig)
    s3: S3Config = field(default_factory=S3Config)
    worker: WorkerResources = field(default_factory=WorkerResources)
    media: MediaConfig = field(default_factory=MediaConfig)
    concurrency: Optional[int] = None  # parallel shard tasks; None lets Ray Data decide
    labels: Optional[str] = None       # audioset: class_labels_indices.csv (default: next to --metadata)
    # A stage that drops more than this fraction of the inputs reaching it fails the job (exit 1),
    # after the shards and the ledger are written; so does a job that writes nothing.
    max_drop_fraction: float = 0.5

    def __post_init__(self):
        if not 0.0 <= self.max_drop_fraction <= 1.0:
            raise ValueError("max_drop_fraction must be between 0 and 1")
