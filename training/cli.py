"""`codiray train --recipe NAME --data SHARDS [--config YAML] [key=value ...]` — one stage, or
`codiray train --schedule NAME --data STYLE=URI [--data STYLE=URI ...]` — a DAG of stages."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from common import storage
from common.config import load_config
from common.errors import JobFailed, UsageError
from training.config import TrainConfig
from training.recipes import RECIPES
from training.schedules import SCHEDULES


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
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--recipe", default="text_to_image_demo", choices=sorted(RECIPES), help="one stage")
    what.add_argument("--schedule", choices=sorted(SCHEDULES),
                      help="a DAG of stages run concurrently where independent (schedule.json under "
                           "<storage_path>/<name>; overrides 'key=value' for all stages, 'STAGE:key=value' for one)")
    parser.add_argument("--config", help="YAML with TrainConfig keys, applied over the recipe (every stage's)")
    parser.add_argument("--data", action="append", default=[], metavar="SHARDS | STYLE=URI",
                        help="prepared shards (the --out of 'codiray prepare'): a path for --recipe (sets "
                             "data.path); STYLE=URI, repeatable, for --schedule (e.g. laion=s3://b/laion)")
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
    if len(args.data) > 1:
        raise UsageError(f"--recipe trains one stage on one shard set; got --data {len(args.data)} times "
                         "(several STYLE=URI sets are for --schedule)")
    if args.data:
        cfg = replace(cfg, data=replace(cfg.data, path=args.data[0]))
    if not cfg.data.path:
        raise UsageError("no training data: pass --data SHARDS or set data.path")
    return cfg


def run(args) -> int:
    if args.schedule:
        from training.orchestrator import schedule_command

        return schedule_command(args)
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
