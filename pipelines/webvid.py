"""`codiray prepare webvid`: WebVid's CSV + video files -> WebDataset shards of fixed-length clips.

Each clip of a video is one sample ``<videoid>_<NNN>``: ``frames.npy`` (uint8 ``f h w 3``),
``image.npy`` (the middle frame, the clip's image prompt), ``audio.npy``/``mel.npy`` (float16, the
clip's aligned audio, when the file has a track) and ``.json`` (key, video, caption, source,
start/end, fps, sample_rate). Accounting is per input video: written if any clip is written.
"""

from __future__ import annotations

import json

from pipelines import media
from pipelines.clipfilter import ClipFilter
from pipelines.config import PrepareConfig
from pipelines.filters import check_caption
from pipelines.images import DropSample
from pipelines.job import Sample, per_row, run_sharded
from pipelines.metadata import assign_keys, parse_iso_duration, read_csv_rows
from pipelines.shards import encode_npy
from pipelines.video import decode_clips

STAGES = ["dedup", "metadata", "caption", "fetch", "decode", "duration", "clip_score"]
COLUMNS = ("videoid", "name")


def read_metadata(uri: str, cfg: PrepareConfig) -> list[dict]:
    return assign_keys(read_csv_rows(uri, cfg.s3, required=COLUMNS), "videoid")


def clip_samples(key: str, caption: str, source: str, clips: list[dict], cfg: PrepareConfig) -> list[Sample]:
    """Encode each clip's tensors and metadata as one WebDataset sample."""
    samples = []
    for index, clip in enumerate(clips):
        sample_key = f"{key}_{index:03d}"
        fields = {"frames.npy": encode_npy(clip["frames"]), "image.npy": encode_npy(clip["image"])}
        for name in ("audio", "mel"):
            if name in clip:
                fields[f"{name}.npy"] = encode_npy(clip[name])
        meta = {"key": sample_key, "video": key, "caption": caption, "source": source, "style": "webvid",
                "start": round(clip["start"], 6), "end": round(clip["end"], 6), "fps": clip["fps"],
                "frames": int(clip["frames"].shape[0]),
                "sample_rate": cfg.audio.sample_rate if "audio" in clip or "mel" in clip else None}
        fields["json"] = json.dumps(meta).encode()
        samples.append({"key": sample_key, "input": key, "fields": fields, "caption": caption,
                        "image": clip["image"]})
    return samples


def media_candidates(cfg: PrepareConfig):
    """WebVid downloads live at ``<page_dir>/<videoid>.<ext>``; a flat folder works too
    (``media.pattern`` replaces both)."""
    def candidates(row: dict):
        videoid, page_dir = (row.get("videoid") or "").strip(), (row.get("page_dir") or "").strip()
        if cfg.media.pattern:
            return media.pattern_candidates(cfg.media.pattern, {"videoid": videoid, "page_dir": page_dir,
                                                                "key": row["key"]})
        return media.simple_candidates(([f"{page_dir}/{videoid}"] if page_dir else []) + ([videoid] if videoid else []),
                                       "{videoid}")

    return candidates


def make_row_fn(cfg: PrepareConfig):
    def one(row: dict) -> list[Sample]:
        key = row["key"]
        if not (row.get("videoid") or "").strip():
            raise DropSample("metadata", "videoid is empty")
        if row.get("duration") not in (None, ""):
            parse_iso_duration(row["duration"])  # malformed metadata is reported, not guessed at
        caption = check_caption(row.get("name"), cfg.caption)
        uri, _ = media.lookup(row, media.VIDEO_EXTENSIONS)
        clips = decode_clips(media.open_source(uri, cfg.s3), cfg.video, cfg.audio)
        return clip_samples(key, caption, row.get("contentUrl") or uri, clips, cfg)

    return one


def prepare_webvid(metadata: str, media_uri: str, out: str, cfg: PrepareConfig) -> dict:
    """Run the WebVid job end to end and return the manifest."""
    if cfg.media.pattern:
        media.check_pattern(cfg.media.pattern, "webvid", {"videoid": "1066678207", "page_dir": "001", "key": "k"})
    rows = media.attach(read_metadata(metadata, cfg), media.index_media(media_uri, cfg.s3), media_candidates(cfg),
                        media_uri)
    return run_sharded(rows, out, "webvid", cfg, per_row(make_row_fn(cfg)), STAGES, ClipFilter.maybe(cfg))
