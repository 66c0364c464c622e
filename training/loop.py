"""The Ray Train worker loop: DeepSpeed ZeRO engine, streamed shards, metrics and checkpoints.

Runs inside each Ray Train worker (``train_loop_per_worker``). DeepSpeed is imported here, never in
the driver: importing it on a CPU-only driver has broken before, and only workers need it.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch

from common.config import from_dict
from training.config import TrainConfig

DEEPSPEED_TAG = "deepspeed"
STATE_NAME = "train_state.json"
HISTORY_NAME = "metrics_history.json"  # every logged metric since step 0: the checkpoint's loss curve
RANKS_DIR = "ranks"  # ranks/rank_<r>.json: what each rank trained on and held (see rank_record)


def deepspeed_config(cfg: TrainConfig) -> dict:
    """The DeepSpeed JSON config of a stage (optimizer and scheduler are passed as objects)."""
    return {
        "train_micro_batch_size_per_gpu": cfg.batch_size_per_worker,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": {"stage": cfg.zero_stage},
        "bf16": {"enabled": cfg.precision == "bf16"},
        "steps_per_print": 10**9,  # our own metrics go through ray.train.report
        "wall_clock_breakdown": False,
    }


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                                  weight_decay=cfg.optim.weight_decay)
    warmup = max(1, cfg.optim.warmup_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    return optimizer, scheduler


def batches_forever(shard, cfg: TrainConfig, first_epoch: int = 0):
    """Epoch after epoch over this worker's stream of the dataset (reshuffled per epoch)."""
    epoch = first_epoch
    while True:
        yielded = False
        for batch in shard.iter_batches(batch_size=cfg.batch_size_per_worker, batch_format="numpy",
                                        drop_last=True, local_shuffle_buffer_size=cfg.data.shuffle_buffer or None,
                                        local_shuffle_seed=cfg.seed + epoch):
            yielded = True
            yield epoch, batch
        if not yielded:  # else `while True` would re-read the shards forever without a step
            raise ValueError(f"{cfg.data.path}: this worker's share of the data holds fewer than "
                             f"batch_size_per_worker={cfg.batch_size_per_worker} samples; use more data, "
                             f"fewer workers or a smaller batch")
        epoch += 1


def held_state(engine) -> dict:
    """Digests of the weights and of this rank's optimizer state (its ZeRO partition) as held now."""
    from training.checkpointing import state_digest

    return {"weights_sha256": state_digest(engine.module.state_dict()),
            "optimizer_sha256": state_digest(engine.optimizer.state_dict())}


def rank_record(engine, rank: int, world: int, step: int, samples: dict[int, list[str]],
                resumed_from: dict | None) -> dict:
    """One rank's account of a checkpoint: the sample keys it trained on since the previous
    checkpoint (by epoch), the state it holds at this step, and the state it resumed from."""
    return {"rank": rank, "world_size": world, "step": step, **held_state(engine),
            "samples": {str(epoch): keys for epoch, keys in samples.items()}, "resumed_from": resumed_from}


def save_checkpoint(engine, step: int, epoch: int, rank: int, directory: Path, history: list[dict],
                    record: dict | None = None) -> None:
    """DeepSpeed's sharded state (every rank writes its part and its record) + safetensors weights
    from rank 0. Ray Train merges every rank's directory into one checkpoint."""
    engine.save_checkpoint(str(directory), tag=DEEPSPEED_TAG, client_state={"step": step, "epoch": epoch})
    if record is not None:
        (directory / RANKS_DIR).mkdir(exist_ok=True)
        (directory / RANKS_DIR / f"rank_{rank}.json").write_text(json.dumps(record))
    if rank == 0:
        engine.module.save_pretrained(directory)
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


def train_loop_per_worker(loop_config: dict) -> None:
    import deepspeed
    import ray.train

    from models.diffusion.config import build_schedule
    from models.text_to_image import TextToImageDiffuser
    from training.checkpointing import use_safe_checkpoint_loading
    from training.step import text_to_image_loss

    cfg = from_dict(TrainConfig, loop_config["train"], source="<train loop config>")
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    board = loop_config.get("progress") if rank == 0 else None  # one feed: rank 0's view only
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = TextToImageDiffuser(cfg.model)
    optimizer, scheduler = build_optimizer(model, cfg)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=deepspeed_config(cfg))
    use_safe_checkpoint_loading(engine)

    step, epoch, history, resumed_from = 0, 0, [], None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            _, client_state = engine.load_checkpoint(directory, tag=DEEPSPEED_TAG)
            step, epoch = int(client_state["step"]), int(client_state.get("epoch", 0))
            if (Path(directory) / HISTORY_NAME).is_file():
                history = json.loads((Path(directory) / HISTORY_NAME).read_text())
        resumed_from = {"step": step, **held_state(engine)}

    schedule = build_schedule(cfg.model.diffusion)
    generator = torch.Generator().manual_seed(cfg.seed * 1000 + rank + 7919 * step)  # fresh noise per resume
    shard = ray.train.get_dataset_shard("train")
    losses, samples, started = [], {}, time.perf_counter()
    if board is not None:
        board.start.remote(step, cfg.max_steps)
    for epoch, batch in batches_forever(shard, cfg, first_epoch=epoch):
        if step >= cfg.max_steps:
            break
        loss = text_to_image_loss(engine.module, batch["image"], batch["caption"].tolist(), generator, schedule)
        engine.backward(loss)
        engine.step()
        step += 1
        losses.append(loss.item())
        samples.setdefault(epoch, []).extend(batch["key"].tolist())
        if board is not None:
            board.update.remote(step, sum(losses) / len(losses),
                                len(losses) * cfg.batch_size_per_worker * world / (time.perf_counter() - started))

        last = step == cfg.max_steps
        if step % cfg.log_every and step % cfg.checkpoint_every and not last:
            continue
        elapsed = time.perf_counter() - started
        metrics = {"step": step, "epoch": epoch, "loss": mean_over_workers(sum(losses) / len(losses), engine.device),
                   "lr": scheduler.get_last_lr()[0],
                   "samples_per_s": len(losses) * cfg.batch_size_per_worker * world / max(elapsed, 1e-9)}
        losses, started = [], time.perf_counter()
        history.append(metrics)
        if step % cfg.checkpoint_every == 0 or last:
            record = rank_record(engine, rank, world, step, samples, resumed_from)
            samples = {}
            with tempfile.TemporaryDirectory() as tmp:
                save_checkpoint(engine, step, epoch, rank, Path(tmp), history, record)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)
