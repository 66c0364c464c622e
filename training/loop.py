"""The Ray Train worker loop: a stage's task on a DeepSpeed ZeRO engine, streamed shards, EMA,
metrics and checkpoints.

Runs inside each Ray Train worker (``train_loop_per_worker``). DeepSpeed is imported here, never in
the driver: importing it on a CPU-only driver has broken before, and only workers need it.

Per worker: the stage's frozen part (training/task.py) is built whole and run under no_grad (frozen
codecs remember each example's latents and embeddings: training/encoder_cache.py); its
trainable part goes into DeepSpeed (ZeRO 0-3). Every optimizer step takes ``grad_accum_steps``
micro-batches; then rank 0 folds the (gathered) weights into the EMA. A checkpoint holds DeepSpeed's
sharded state (every rank), ``model.safetensors`` + ``ema.safetensors`` (full gathered weights in the
model's own layout, rank 0), the EMA's state and every rank's record (``ranks/rank_<r>.json``).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import storage
from common.config import from_dict
from common.errors import ConfigError
from training.checkpointing import state_digest
from training.config import TrainConfig
from training.engine import (autocast, build_optimizer, compute_dtype, deepspeed_config, prepare_deepspeed,
                             gathered_state)

DEEPSPEED_TAG = "deepspeed"
STATE_NAME = "train_state.json"
HISTORY_NAME = "metrics_history.json"  # every logged metric since step 0: the checkpoint's loss curve
RANKS_DIR = "ranks"  # ranks/rank_<r>.json: what each rank trained on and held (see rank_record)
WEIGHTS_NAME = "model.safetensors"
EMA_WEIGHTS_NAME = "ema.safetensors"  # the EMA weights in the model's layout (from_pretrained(weights_name=...))
IMAGES = -1  # the key under which a step's samples record the keys of image batches (data.images)
EMA_STATE_NAME = "ema_state.safetensors"  # the EMA's own state (trainable names, fp32) for resuming


def batches_forever(shard, cfg: TrainConfig, first_epoch: int = 0):
    """Epoch after epoch over this worker's stream of the dataset (reshuffled per epoch).

    While the first epoch streams, its batches are kept; if this worker's share fits ``data.cache_mb``,
    later epochs are that share reshuffled (seeded per epoch) from memory — the same samples per
    worker, so the ranks' shares stay disjoint and together the epoch."""
    epoch = first_epoch
    limit = cfg.data.cache_mb * 2**20
    kept, size = ([] if limit > 0 else None), 0
    while True:
        yielded = False
        for batch in shard.iter_batches(batch_size=cfg.batch_size_per_worker, batch_format="numpy",
                                        drop_last=True, local_shuffle_buffer_size=cfg.data.shuffle_buffer or None,
                                        local_shuffle_seed=cfg.seed + epoch):
            yielded = True
            if kept is not None:
                size += sum(np.asarray(v).nbytes for v in batch.values())
                if size <= limit:
                    kept.append(batch)
                else:
                    kept = None
            yield epoch, batch
        if not yielded:  # else `while True` would re-read the shards forever without a step
            raise ValueError(f"{cfg.data.path}: this worker's share of the data holds fewer than "
                             f"batch_size_per_worker={cfg.batch_size_per_worker} samples; use more data, "
                             f"fewer workers or a smaller batch")
        epoch += 1
        if kept:
            yield from cached_epochs(kept, cfg.batch_size_per_worker, cfg.seed, epoch)


def image_turn(index: int, fraction: float) -> bool:
    """Whether micro-batch ``index`` (0, 1, ...) comes from the image shard set: exactly ⌊n·fraction⌋ of
    the first n do, evenly spread, and every rank takes the same turns (same step, same collectives)."""
    return int((index + 1) * fraction) > int(index * fraction)


def cached_epochs(batches: list[dict], batch_size: int, seed: int, first_epoch: int):
    """``(epoch, batch)`` forever from one epoch's batches held in memory, each epoch a seeded permutation."""
    columns = {k: np.concatenate([np.asarray(b[k]) for b in batches]) for k in batches[0]}
    n = len(next(iter(columns.values())))
    epoch = first_epoch
    while True:
        order = np.random.default_rng(seed * 100003 + epoch).permutation(n)
        for start in range(0, n - batch_size + 1, batch_size):
            index = order[start:start + batch_size]
            yield epoch, {k: v[index] for k, v in columns.items()}
        epoch += 1


def build_parts(cfg: TrainConfig, task):
    """(frozen, trainable): the stage's two parts, built whole on this worker from ``cfg.seed`` (so
    identical on every rank); the frozen part without gradients, the trainable part with activation
    checkpointing when configured.

    The trainable module is built whole (host memory), not inside ``deepspeed.zero.Init``: zero.Init
    partitions each submodule as soon as its ``__init__`` returns, so a parent's later in-place init
    hits empty shards (measured: the UNet's zero-initialised output conv came out random, max |w| 0.083).
    """
    torch.manual_seed(cfg.seed)
    frozen = task.build_frozen()
    if frozen is not None:
        frozen.requires_grad_(False).eval()
    trainable = task.build_trainable()
    if cfg.activation_checkpointing:
        if not hasattr(trainable, "set_gradient_checkpointing"):
            raise ConfigError("<train config>", "activation_checkpointing",
                              f"{type(trainable).__name__} has no set_gradient_checkpointing")
        trainable.set_gradient_checkpointing(True)
    return frozen, trainable


def build_engine(cfg: TrainConfig, task):
    """(engine, frozen, scheduler): the frozen part stays outside DeepSpeed (moved to the engine's
    device); the trainable part is wrapped by DeepSpeed, which partitions it under ZeRO-3."""
    import deepspeed

    prepare_deepspeed()
    frozen, trainable = build_parts(cfg, task)
    optimizer, scheduler = build_optimizer(trainable, cfg)
    engine, _, _, _ = deepspeed.initialize(model=trainable, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=deepspeed_config(cfg))
    if engine.world_size == 1 and cfg.zero_stage == 0 and cfg.precision != "bf16":
        # averaging gradients over one rank is the identity; DeepSpeed would still flatten, all-reduce and
        # copy back every gradient (a tenth of a toy stage's step). Not under DeepSpeed's bf16, whose
        # optimizer keeps its own fp32 gradient buffers (untested without the all-reduce)
        engine.enable_backward_allreduce = False
    if frozen is not None:
        frozen.to(engine.device)
    return engine, frozen, scheduler


def held_state(engine, weights: dict) -> dict:
    """Digests of the full (gathered) weights and of this rank's optimizer state (its ZeRO partition)."""
    return {"weights_sha256": state_digest(weights), "optimizer_sha256": state_digest(engine.optimizer.state_dict())}


def rank_record(engine, weights: dict, rank: int, world: int, step: int, samples: dict[int, list[str]],
                resumed_from: dict | None) -> dict:
    """One rank's account of a checkpoint: the sample keys it trained on since the previous
    checkpoint (by epoch), the state it holds at this step, and the state it resumed from."""
    return {"rank": rank, "world_size": world, "step": step, **held_state(engine, weights),
            "samples": {str(epoch): keys for epoch, keys in samples.items() if epoch != IMAGES},
            "image_samples": samples.get(IMAGES, []), "resumed_from": resumed_from}


def save_ema(ema, task, frozen, directory: Path, state: dict | None = None) -> None:
    """``ema.safetensors`` (the model's layout: the averages over ``state``, the gathered weights, so that
    weights that do not train are there too) and ``ema_state.safetensors`` (to resume from)."""
    from safetensors.torch import save_file

    averages = dict(ema.named_averages())
    task.save_pretrained(directory, task.export_state({**(state or {}), **averages}, frozen), EMA_WEIGHTS_NAME)
    save_file({k: v.contiguous() for k, v in averages.items()}, str(directory / EMA_STATE_NAME),
              metadata={"decay": repr(ema.decay), "warmup": str(ema.warmup), "num_updates": str(ema.num_updates)})


def load_ema_state(directory: Path) -> dict:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(directory / EMA_STATE_NAME), framework="pt") as f:
        meta = f.metadata()
    return {"decay": float(meta["decay"]), "warmup": meta["warmup"] == "True",
            "num_updates": int(meta["num_updates"]), "shadow": load_file(str(directory / EMA_STATE_NAME))}


def save_checkpoint(engine, task, frozen, weights: dict, step: int, epoch: int, rank: int, directory: Path,
                    history: list[dict], record: dict | None = None, ema=None, state: dict | None = None) -> None:
    """DeepSpeed's sharded state (every rank writes its part and its record) + the full weights
    (``weights``: ``task.export_state`` of the gathered state) from rank 0. Ray Train merges every
    rank's directory into one checkpoint."""
    engine.save_checkpoint(str(directory), tag=DEEPSPEED_TAG, client_state={"step": step, "epoch": epoch})
    if record is not None:
        (directory / RANKS_DIR).mkdir(exist_ok=True)
        (directory / RANKS_DIR / f"rank_{rank}.json").write_text(json.dumps(record))
    if rank == 0:
        task.save_pretrained(directory, weights, WEIGHTS_NAME)
        if ema is not None:
            save_ema(ema, task, frozen, directory, state)
        (directory / STATE_NAME).write_text(json.dumps({"step": step, "epoch": epoch}))
        (directory / HISTORY_NAME).write_text(json.dumps(history))


def mean_over_workers(value: float, device: torch.device) -> float:
    """The metric averaged over all data-parallel workers (each saw a different batch).

    The tensor lives on the engine's device: an NCCL process group has no CPU backend.
    """
    import torch.distributed as dist

    if not dist.is_initialized():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.item() / dist.get_world_size()


def inject_fault(cfg: TrainConfig, rank: int, step: int, run_dir: str | None) -> None:
    """``debug.fail_at_step``: rank ``debug.fail_rank`` exits hard after that step, once per run (a
    marker in the run folder), so Ray Train's FailureConfig restarts the group from its checkpoint."""
    if cfg.debug.fail_at_step != step or rank != cfg.debug.fail_rank or run_dir is None:
        return
    marker = storage.join(run_dir, f"debug_fault_injected_at_step_{step}")
    if storage.exists(marker, cfg.data.s3):
        return
    storage.write_bytes(marker, b"", cfg.data.s3)
    os._exit(17)  # no cleanup, no exception: what a killed process looks like to Ray


def train_loop_per_worker(loop_config: dict) -> None:
    import ray.train

    from models.codecs import Codecs
    from training.checkpointing import use_safe_checkpoint_loading
    from training.ema import RankZeroEMA
    from training.encoder_cache import EncoderCache
    from training.scalars import ScalarLog
    from training.task import build_task

    cfg = from_dict(TrainConfig, loop_config["train"], source="<train loop config>")
    torch.set_num_threads(cfg.scaling.worker.threads)
    run_dir = loop_config.get("run_dir")
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    board = loop_config.get("progress") if rank == 0 else None  # one feed: rank 0's view only
    scalars = ScalarLog(run_dir, cfg.data.s3) if rank == 0 and run_dir else None
    task = build_task(cfg)
    engine, frozen, scheduler = build_engine(cfg, task)
    encoders = (EncoderCache(frozen, cfg.data.encoder_cache_mb)
                if isinstance(frozen, Codecs) and cfg.data.encoder_cache_mb > 0 else frozen)
    use_safe_checkpoint_loading(engine)
    dtype, zero3 = compute_dtype(cfg), cfg.zero_stage == 3

    step, epoch, history, resumed_from, ema_dir = 0, 0, [], None, None
    checkpoint = ray.train.get_checkpoint()
    with checkpoint.as_directory() if checkpoint is not None else contextlib.nullcontext() as directory:
        if checkpoint is not None:
            _, client_state = engine.load_checkpoint(directory, tag=DEEPSPEED_TAG)
            step, epoch = int(client_state["step"]), int(client_state.get("epoch", 0))
            if (Path(directory) / HISTORY_NAME).is_file():
                history = json.loads((Path(directory) / HISTORY_NAME).read_text())
            resumed_from = {"step": step, **held_state(engine, task.export_state(gathered_state(engine.module), frozen))}
            ema_dir = Path(directory) if (Path(directory) / EMA_STATE_NAME).is_file() else None
        ema = (RankZeroEMA(engine.module, rank, cfg.ema.decay, cfg.ema.warmup, zero3, resumed=ema_dir is not None,
                           load_state=lambda: load_ema_state(ema_dir)) if cfg.ema.enabled else None)

    generator = torch.Generator().manual_seed(cfg.seed * 1000 + rank + 7919 * step)  # fresh noise per resume
    batches = batches_forever(ray.train.get_dataset_shard("train"), cfg, first_epoch=epoch)
    images = (batches_forever(ray.train.get_dataset_shard("images"), cfg)   # from its first epoch on a resume
              if cfg.data.image_fraction > 0 else None)
    micro = cfg.batch_size_per_worker
    losses, samples, started = [], {}, time.perf_counter()
    if board is not None:
        board.start.remote(step, cfg.max_steps)
    while step < cfg.max_steps:
        for k in range(cfg.grad_accum_steps):  # DeepSpeed steps the optimizer on the last one
            if images is not None and image_turn(step * cfg.grad_accum_steps + k, cfg.data.image_fraction):
                _, batch = next(images)
                seen = IMAGES
            else:
                epoch, batch = next(batches)
                seen = epoch
            inputs = task.batch_inputs(batch, encoders, generator, engine.device)   # frozen encoders: fp32
            with autocast(cfg, engine.device):
                loss = task.loss(engine, inputs, dtype)
            engine.backward(loss)
            engine.step()
            losses.append(loss.item())
            samples.setdefault(seen, []).extend(batch["key"].tolist())
        step += 1
        if ema is not None:
            ema.update()
        rate = len(losses) * micro * world / max(time.perf_counter() - started, 1e-9)
        if board is not None:
            board.update.remote(step, sum(losses) / len(losses), rate)

        last = step == cfg.max_steps
        if step % cfg.log_every == 0 or step % cfg.checkpoint_every == 0 or last:
            metrics = {"step": step, "epoch": epoch, "loss": mean_over_workers(sum(losses) / len(losses), engine.device),
                       "lr": scheduler.get_last_lr()[0], "samples_per_s": rate}
            losses, started = [], time.perf_counter()
            history.append(metrics)
            if scalars is not None:
                scalars.log(metrics)
            if step % cfg.checkpoint_every == 0 or last:
                state = gathered_state(engine.module)                               # every rank: gathers
                weights = task.export_state(state, frozen)
                record = rank_record(engine, weights, rank, world, step, samples, resumed_from)
                samples = {}
                with tempfile.TemporaryDirectory() as tmp:
                    save_checkpoint(engine, task, frozen, weights, step, epoch, rank, Path(tmp), history, record,
                                    ema.ema if ema is not None else None, state)
                    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
            else:
                ray.train.report(metrics)
        inject_fault(cfg, rank, step, run_dir)
    if scalars is not None:
        scalars.close()
