"""`codiray prepare STYLE --metadata URI --media URI --out URI [--config YAML] [key=value ...]`."""

from __future__ import annotations

import argparse

from common.config import load_config, save_config
from common.runtime import ensure_ray
from common import storage
from pipelines.config import PrepareConfig

STYLES = ("laion", "webvid", "audioset", "audiocaps")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "prepare",
        help="Ray Data job: corpus (local folder or s3://) -> WebDataset shards + manifest + drop ledger",
        description="Decode, filter and resize a corpus into WebDataset shards of tensors. Writes "
                    "shard-*.tar, manifest.json (input == written + dropped) and dropped.parquet under --out. "
                    "Config keys (override as key=value): image.size, image.resize_mode, image.min_size, "
                    "caption.punsafe_max, caption.pwatermark_max, caption.clip.enabled, caption.clip.threshold, "
                    "video.size, video.fps, video.frames, video.max_clips, audio.sample_rate, audio.seconds, "
                    "audio.mel, shards.samples_per_shard, shards.max_shard_bytes, s3.endpoint_url, worker.cpus, "
                    "concurrency, labels (audioset: class_labels_indices.csv).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("style", choices=STYLES, help="corpus style")
    parser.add_argument("--metadata", required=True, help="metadata file/folder (path or s3://...)")
    parser.add_argument("--media", required=True,
                        help="folder of media files named by key, or of img2dataset tars (path or s3://...)")
    parser.add_argument("--out", required=True, help="output folder (path or s3://...)")
    parser.add_argument("--config", help="YAML with PrepareConfig keys")
    parser.set_defaults(func=run, accepts_overrides=True)


def run(args) -> int:
    cfg = load_config(PrepareConfig, args.config, args.overrides, base=PrepareConfig())
    ensure_ray()
    manifest = prepare(args.style, args.metadata, args.media, args.out, cfg)
    if not storage.is_remote(args.out):
        save_config(cfg, storage.join(args.out, "prepare_config.yaml"))
    clips = f" as {manifest['samples']} samples" if manifest["samples"] != manifest["written"] else ""
    print(f"prepared {manifest['written']} of {manifest['input']} samples{clips} into "
          f"{len(manifest['shards'])} shards at {args.out} (dropped {manifest['dropped']}: "
          f"{manifest['per_stage']['dropped']})")
    return 0


def prepare(style: str, metadata: str, media: str, out: str, cfg: PrepareConfig) -> dict:
    """Run one style's job (Ray must be up) and return its manifest."""
    for uri in (metadata, media, out):
        storage.require_bucket(uri, cfg.s3)
    if style == "laion":
        from pipelines.laion import prepare_laion

        return prepare_laion(metadata, media, out, cfg)
    if style == "webvid":
        from pipelines.webvid import prepare_webvid

        return prepare_webvid(metadata, media, out, cfg)
    from pipelines.audioset import prepare_audio

    return prepare_audio(style, metadata, media, out, cfg)
