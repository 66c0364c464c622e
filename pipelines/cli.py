"""`codiray prepare STYLE --metadata URI --media URI --out URI [--config YAML] [key=value ...]`."""

from __future__ import annotations

import argparse

from codiray.config import load_config, save_config
from codiray.runtime import ensure_ray
from pipelines import storage
from pipelines.config import PrepareConfig

STYLES = ("laion",)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "prepare",
        help="Ray Data job: corpus (local folder or s3://) -> WebDataset shards + manifest + drop ledger",
        description="Decode, filter and resize a corpus into WebDataset shards of tensors. Writes "
                    "shard-*.tar, manifest.json (input == written + dropped) and dropped.parquet under --out. "
                    "Config keys (override as key=value): image.size, image.resize_mode, image.min_size, "
                    "caption.punsafe_max, caption.pwatermark_max, shards.samples_per_shard, s3.endpoint_url, "
                    "worker.cpus, concurrency.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("style", choices=STYLES, help="corpus style")
    parser.add_argument("--metadata", required=True, help="metadata file/folder (path or s3://...)")
    parser.add_argument("--media", required=True, help="folder of media files named by key (path or s3://...)")
    parser.add_argument("--out", required=True, help="output folder (path or s3://...)")
    parser.add_argument("--config", help="YAML with PrepareConfig keys")
    parser.set_defaults(func=run)


def run(args) -> int:
    cfg = load_config(PrepareConfig, args.config, args.overrides, base=PrepareConfig())
    ensure_ray()
    from pipelines.laion import prepare_laion

    manifest = prepare_laion(args.metadata, args.media, args.out, cfg)
    if not storage.is_remote(args.out):
        save_config(cfg, storage.join(args.out, "prepare_config.yaml"))
    print(f"prepared {manifest['written']} of {manifest['input']} samples into "
          f"{len(manifest['shards'])} shards at {args.out} (dropped {manifest['dropped']}: "
          f"{manifest['per_stage']['dropped']})")
    return 0
