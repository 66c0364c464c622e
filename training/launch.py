"""Driver side of a training stage: Ray Train ``TorchTrainer`` over the prepared shards.

    cfg = recipes.text_to_image_demo(); cfg.data.path = "/data/shards"
    result = launch.train(cfg)   # re-running with the same name + storage_path resumes
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

from common.config import save_config, to_dict
from common.errors import UsageError
from common.runtime import ensure_ray, ray_logs_dir
from common import storage
from pipelines.reader import read_manifest, read_shards
from training.config import TrainConfig
from training.loop import train_loop_per_worker

log = logging.getLogger(__name__)
CONFIG_NAME = "train_config.yaml"


def storage_uri(cfg: TrainConfig) -> str:
    """Absolute storage path (Ray Train requires one) or the s3:// URI as given."""
    if storage.is_remote(cfg.storage_path):
        return cfg.storage_path
    return str(Path(cfg.storage_path).expanduser().resolve())


def run_dir(cfg: TrainConfig) -> str:
    """Where Ray Train writes this run's checkpoints: ``<storage_path>/<name>``."""
    return storage.join(storage_uri(cfg), cfg.name)


def check_data_fits(cfg: TrainConfig) -> None:
    """Fail before any worker starts when the shards cannot feed this stage (one line each):
    text-to-image checks the image size; the CoDi stage kinds check that the manifest carries every
    modality the task needs (``task.required``, ``batches.check_manifest``)."""
    from training.tasks.batches import check_manifest, check_shard_sets

    manifest = read_manifest(cfg.data.path, cfg.data.s3)
    second = read_manifest(cfg.data.images, cfg.data.s3) if cfg.data.image_fraction > 0 else None
    if cfg.task.kind == "text_to_image":
        check_text_to_image_data(cfg, manifest)
        if second is not None:
            check_manifest(second, ["image", "text"], cfg.data.images)
    else:
        from training.task import build_task

        task = build_task(cfg)
        if second is None:
            check_manifest(manifest, task.required, cfg.data.path)
        elif not hasattr(task, "shard_set_needs"):
            raise UsageError(f"data.images: a {cfg.task.kind} stage reads one shard set (set data.image_fraction: 0)")
        else:      # the second shard set: the video LDM's images, the text stages' audio captions
            check_shard_sets({cfg.data.path: manifest, cfg.data.images: second}, *task.shard_set_needs())
    check_fills_a_batch(cfg, manifest, cfg.data.path)
    if second is not None:
        check_fills_a_batch(cfg, second, cfg.data.images)


def check_fills_a_batch(cfg: TrainConfig, manifest: dict, uri: str) -> None:
    needed = cfg.batch_size_per_worker * cfg.scaling.num_workers
    if manifest["samples"] < needed:
        raise UsageError(f"{uri}: {manifest['samples']} samples cannot fill one batch of "
                         f"{cfg.batch_size_per_worker} on each of {cfg.scaling.num_workers} workers")


def check_text_to_image_data(cfg: TrainConfig, manifest: dict) -> None:
    image = manifest.get("tensors", {}).get("image")
    size = cfg.model.image_size
    if image is None:
        raise UsageError(f"{cfg.data.path}: the shards hold no 'image' tensors (style {manifest.get('style')!r}); "
                         f"the text-to-image stage needs 'codiray prepare laion' output")
    if list(image["shape"]) != [size, size, cfg.model.unet.in_channels]:
        raise UsageError(f"{cfg.data.path}: images are {'x'.join(map(str, image['shape']))} but model.image_size "
                         f"is {size}; prepare with image.size={size} or set model.image_size")


def resolve_debug_codecs(cfg: TrainConfig) -> TrainConfig:
    """A CoDi stage on ``task.codecs.path: debug`` (or ``toy``) gets that codecs folder, written once under
    its storage path (``<storage_path>/<variant>_codecs``: every stage of a schedule shares it). On
    ``s3://`` storage it is built in the local cache and uploaded, ``model.safetensors`` last (its presence
    marks a complete folder; concurrent stages write identical seeded files)."""
    from training.debug_codecs import VARIANTS, WEIGHTS_FILE, ensure_debug_codecs

    variant = cfg.task.codecs.path
    if cfg.task.kind == "text_to_image" or variant not in VARIANTS:
        return cfg
    target = storage.join(storage_uri(cfg), f"{variant}_codecs")
    if storage.is_remote(target):
        s3 = cfg.data.s3
        if not storage.exists(storage.join(target, WEIGHTS_FILE), s3):
            local = ensure_debug_codecs(storage.cache_dir(target, s3, "build") / f"{variant}_codecs",
                                        cfg.task.codecs.seed, variant)
            storage.upload_folder(local, target, s3, last=WEIGHTS_FILE)
    else:
        ensure_debug_codecs(target, cfg.task.codecs.seed, variant)
    codecs = dataclasses.replace(cfg.task.codecs, path=target)
    return dataclasses.replace(cfg, task=dataclasses.replace(cfg.task, codecs=codecs))


def link_ray_logs(folder: Path) -> Path | None:
    """``<folder>/ray_logs`` -> the log folder of the Ray this process started (workers' stdout/stderr,
    the Train controller, Ray Data); None when Ray runs elsewhere (a cluster keeps its own)."""
    logs = ray_logs_dir()
    if logs is None:
        return None
    link = folder / "ray_logs"
    folder.mkdir(parents=True, exist_ok=True)
    if link.is_dir() and not link.is_symlink():   # a previous run's logs, copied out of /tmp when it ended
        import shutil

        previous = folder / "ray_logs.previous"
        shutil.rmtree(previous, ignore_errors=True)
        link.rename(previous)
    elif link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(logs, target_is_directory=True)
    return link


def train(cfg: TrainConfig, progress: bool = True):
    """Fit the stage and return Ray Train's ``Result`` (``result.checkpoint`` is the latest).

    With ``progress``, one line on stdout follows rank 0 (training/progress.py). A Ray started here
    keeps the workers' output in its log folder, linked as ``<run dir>/ray_logs``.
    """
    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from training.progress import ProgressBoard, ProgressDisplay

    cfg = resolve_debug_codecs(cfg)
    check_data_fits(cfg)  # before Ray starts: a wrong --data is one line, not a failed cluster job
    ensure_ray(log_to_driver=False)
    dataset = read_shards(cfg.data.path, cfg.data.s3)
    resolved = run_dir(cfg)
    if storage.is_remote(resolved):
        import yaml

        storage.write_bytes(storage.join(resolved, CONFIG_NAME), yaml.safe_dump(to_dict(cfg)).encode(), cfg.data.s3)
    else:
        save_config(cfg, Path(resolved) / CONFIG_NAME)
        link_ray_logs(Path(resolved))
    filesystem, storage_path = (storage.resolve(storage_uri(cfg), cfg.data.s3)
                                if storage.is_remote(cfg.storage_path) else (None, storage_uri(cfg)))
    board = ray.remote(num_cpus=0)(ProgressBoard).remote() if progress else None
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"train": to_dict(cfg), "progress": board, "run_dir": resolved},
        scaling_config=cfg.scaling.worker.scaling_config(cfg.scaling.num_workers),
        torch_config=TorchConfig(backend="nccl" if cfg.scaling.worker.use_gpu else "gloo"),
        run_config=ray.train.RunConfig(
            name=cfg.name,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.num_to_keep),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            worker_runtime_env={"env_vars": {k: os.environ[k] for k in ("TORCH_EXTENSIONS_DIR",) if k in os.environ}},
        ),
        datasets={"train": dataset, **({"images": read_shards(cfg.data.images, cfg.data.s3)}
                                       if cfg.data.image_fraction > 0 else {})},
    )
    if board is None:
        return trainer.fit()
    try:
        with ProgressDisplay(f"train {cfg.name}", read=lambda: ray.get(board.read.remote(), timeout=10)):
            return trainer.fit()
    finally:
        ray.kill(board)
