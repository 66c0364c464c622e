"""`codiray prepare STYLE --metadata URI --media URI --out URI [--config YAML] [key=value ...]`."""

from __future__ import annotations

import argparse

from common.config import load_config, save_config
from common.runtime import ensure_ray
from common import storage
from pipelines.config import PrepareConfig
from pipelines.job import TooManyDrops, drop_summary

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
                    "audio.mel, media.pattern (e.g. '{ytid}_{start:.0f}.{ext}'), max_drop_fraction, "
                    "shards.samples_per_shard, shards.max_shard_bytes, s3.endpoint_url, worker.cpus, "
                    "concurrency, labels (audioset: class_labels_indices.csv). Exits 1 when the job writes nothing "
                    "or one stage drops more than max_drop_fraction of its inputs (shards and ledger are still written).",
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
    try:
        manifest = prepare(args.style, args.metadata, args.media, args.out, cfg)
    except TooManyDrops as failed:  # the summary still goes out (stdout); the error is one line (stderr)
        summarize(failed.manifest, args.out, cfg)
        raise
    summarize(manifest, args.out, cfg)
    return 0


def summarize(manifest: dict, out: str, cfg: PrepareConfig) -> None:
    """The end-of-job summary: counts, drops per stage with each stage's top reason, and notes."""
    if not storage.is_remote(out):
        save_config(cfg, storage.join(out, "prepare_config.yaml"))
    clips = f" as {manifest['samples']} samples" if manifest["samples"] != manifest["written"] else ""
    print(f"prepared {manifest['written']} of {manifest['input']} inputs{clips} into "
          f"{len(manifest['shards'])} shards at {out}; dropped {manifest['dropped']} "
          f"(ledger: {storage.join(out, 'dropped.parquet')})")
    for line in drop_summary(manifest):
        print(line)
    for topic, counts in manifest.get("notes", {}).items():
        print(f"  {topic}: " + ", ".join(f"{value} ({n})" for value, n in counts.items()))


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
