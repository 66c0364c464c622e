"""`codiray train --recipe NAME --data SHARDS [--config YAML] [key=value ...]`."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from common import storage
from common.config import load_config
from common.errors import JobFailed, UsageError
from training.config import TrainConfig
from training.recipes import RECIPES


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="Ray Train + DeepSpeed ZeRO: train a diffusion stage on prepared shards (resumes by name)",
        description="Train a stage from a recipe, overridden by --config YAML and key=value pairs "
                    "(e.g. max_steps=1000 optim.lr=3e-4 scaling.num_workers=8 scaling.worker.gpus=1 "
                    "zero_stage=2). Re-running with the same name and storage_path resumes from the "
                    "latest checkpoint.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--recipe", default="text_to_image_demo", choices=sorted(RECIPES))
    parser.add_argument("--config", help="YAML with TrainConfig keys, applied over the recipe")
    parser.add_argument("--data", help="prepared shards (the --out of 'codiray prepare'); sets data.path")
    parser.add_argument("--name", help="run name (sets name)")
    parser.add_argument("--storage-path", help="where checkpoints go, local or s3:// (sets storage_path)")
    parser.set_defaults(func=run, accepts_overrides=True)


def resolve_train_config(args) -> TrainConfig:
    cfg = load_config(TrainConfig, args.config, args.overrides, base=RECIPES[args.recipe]())
    # Flag values are plain strings (a run named 2024 or on stays a string; key=value is YAML).
    if args.name:
        cfg = replace(cfg, name=args.name)
    if args.storage_path:
        cfg = replace(cfg, storage_path=args.storage_path)
    if args.data:
        cfg = replace(cfg, data=replace(cfg.data, path=args.data))
    if not cfg.data.path:
        raise UsageError("no training data: pass --data SHARDS or set data.path")
    return cfg


def run(args) -> int:
    from training.launch import run_dir, train

    cfg = resolve_train_config(args)
    result = train(cfg)
    logs = storage.join(run_dir(cfg), "ray_logs")
    logs_note = f"Ray's logs: {logs}" if not storage.is_remote(logs) and Path(logs).exists() else ""
    if result.error:
        raise JobFailed(f"training failed: {result.error}" + (f" ({logs_note})" if logs_note else ""))
    print(f"trained {cfg.name}: step {result.metrics.get('step')} loss {result.metrics.get('loss'):.4f}; "
          f"checkpoints under {run_dir(cfg)}; latest {result.checkpoint.path if result.checkpoint else None}"
          + (f"; {logs_note}" if logs_note else ""))
    return 0
