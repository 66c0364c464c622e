"""The DeepSpeed side of the training engine: config, optimizer + LR schedule, ZeRO-3 gathering.

Imported inside Ray Train workers only (DeepSpeed is imported lazily by the functions that need it).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path
from typing import Iterator, Optional

import torch

from training.config import TrainConfig


def lr_at(step: int, base: float, warmup: int, total: int, min_ratio: float) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warmup over ``warmup`` steps, then a
    half cosine from ``base`` down to ``base·min_ratio`` at step ``total`` (SGDR, Loshchilov & Hutter
    2017, without restarts). ``min_ratio=1`` keeps ``base`` after warmup.

        η_s = η (s + 1) / W                                  s < W
        η_s = η [r + (1 − r) · ½ (1 + cos(π (s − W) / (T − W)))]   W ≤ s (progress capped at 1)
    """
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def deepspeed_config(cfg: TrainConfig) -> dict:
    """The DeepSpeed JSON config of a stage (optimizer and scheduler are passed as objects)."""
    zero = {"stage": cfg.zero_stage}
    if cfg.zero_stage == 3:
        # Partition every parameter, however small (DeepSpeed keeps those under 1e5 elements whole on
        # every rank by default): the per-worker memory ZeRO-3 promises, and what its tests verify.
        zero["stage3_param_persistence_threshold"] = 0
    return {
        "train_micro_batch_size_per_gpu": cfg.batch_size_per_worker,
        "gradient_accumulation_steps": cfg.grad_accum_steps,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": cfg.precision == "bf16"},
        "steps_per_print": 10**9,  # our own metrics go through ray.train.report
        "wall_clock_breakdown": False,
    }


def compute_dtype(cfg: TrainConfig) -> torch.dtype:
    """The dtype of the engine's weights (what a task casts the trained model's inputs to)."""
    return torch.bfloat16 if cfg.precision == "bf16" else torch.float32


def autocast(cfg: TrainConfig, device: torch.device):
    """The context a training loss runs in: ``torch.autocast`` to bf16 under ``precision=bf16_autocast``
    (weights stay fp32; the losses cast model outputs to fp32), else nothing.

    On a CPU under bf16 autocast, attention also runs PyTorch's math kernel, not its CPU flash kernel,
    whose bf16 backward is slow at short lengths. Forward + backward, 64 rows of 16 channels, one thread,
    on a 2-core Xeon with AMX: 64 queries x 64 keys 10.4 ms flash vs 2.2 ms math; 128 x 128 21.0 vs 7.2;
    one key (cross-attention to CoDi's single condition token) 9.3 vs 3.1; only 512 x 512 is faster in
    flash (78 vs 243). The demo's audio LDM step (batch 16) went from 284 to 231 ms. In fp32, flash is
    as fast or faster at every length measured, so fp32 keeps PyTorch's choice. The chosen kernel is
    recorded by autograd, so the backward pass runs the same one."""
    if cfg.precision != "bf16_autocast":
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=False)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    stack = contextlib.ExitStack()
    stack.enter_context(torch.autocast(device.type, dtype=torch.bfloat16))
    if device.type == "cpu":
        stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
    return stack


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig):
    """AdamW over the trainable parameters + ``lr_at`` as a LambdaLR (stepped by the engine once per
    optimizer step, i.e. every ``grad_accum_steps`` micro-batches).

    The fused AdamW kernel (CPU and CUDA): on CPU torch otherwise takes a Python loop over the parameters,
    a fifth of a toy LDM stage's step (3x the fused kernel's time on the demo's UNets)."""
    params = [p for p in model.parameters() if p.requires_grad]
    o = cfg.optim
    optimizer = torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_at(step, 1.0, o.warmup_steps, cfg.max_steps, o.min_lr_ratio))
    return optimizer, scheduler


# A JIT build of a DeepSpeed op takes 60-80 s on 2 cores; a build lock this old has no builder left.
STALE_BUILD_LOCK_S = 600.0


def clear_stale_build_locks(root: Optional[str] = None, older_than_s: float = STALE_BUILD_LOCK_S) -> list[Path]:
    """Remove torch JIT-extension build locks that no builder holds any more; returns what was removed.

    torch serialises an extension's build on a ``lock`` file in its build folder (``FileBaton``), and every
    other process that wants the op waits for it to disappear — forever, when the builder was killed mid-build
    (a run stopped during DeepSpeed's first ``initialize``). A lock older than ``older_than_s`` is such a
    leftover. ``root``: ``TORCH_EXTENSIONS_DIR``, else torch's default build root."""
    if root is None:
        from torch.utils.cpp_extension import get_default_build_root

        root = os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()
    removed, now = [], time.time()
    for lock in [*Path(root).glob("*/lock"), *Path(root).glob("*/*/lock")]:
        try:
            age = now - lock.stat().st_mtime
            if age <= older_than_s:
                continue
            lock.unlink()
        except FileNotFoundError:   # the build finished, or another rank removed it first
            continue
        removed.append(lock)
        print(f"removed a stale extension build lock ({age:.0f} s old, no build takes that long): {lock}", flush=True)
    return removed


# DeepSpeed's CPU comm backend JIT-builds a shared-memory all-reduce kernel (``deepspeed_shm_comm``) when it
# starts: 55 s of both cores once per venv, in the demo's first stage, while the stage beside it waits on the
# build lock. Only ``inference_all_reduce`` (tensor-parallel inference) calls it; training reduces through the
# torch process group (gloo), so the demo's first stages started a minute late for a kernel nothing runs.
SHM_COMM_OP = "deepspeed_shm_comm"


def prepare_deepspeed() -> None:
    """Before DeepSpeed's comm starts in this process (``deepspeed.initialize``, ``zero.Init``,
    ``init_distributed``): remove stale build locks, and on the CPU accelerator mark the inference-only
    shared-memory comm kernel unavailable, so that DeepSpeed skips its build (its own check,
    ``deepspeed.ops.__compatible_ops__``, a dict DeepSpeed keeps for the process)."""
    clear_stale_build_locks()     # else a killed first build leaves every later initialize waiting forever
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() == "cpu":
        deepspeed.ops.__compatible_ops__[SHM_COMM_OP] = False


def zero_init(cfg: TrainConfig, ds_config: dict):
    """Context to build the trainable module in: ZeRO-3 partitions parameters as they are created
    (a model larger than one worker's memory never exists whole). Frozen modules are built outside."""
    if cfg.zero_stage != 3:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.Init(config_dict_or_path=ds_config)


def is_partitioned(tensor: torch.Tensor) -> bool:
    return hasattr(tensor, "ds_id")  # a ZeRO-3 parameter (its .data is this rank's shard, or empty)


@contextlib.contextmanager
def gathered(params: list[torch.Tensor]):
    """The full values of ZeRO-3 parameters for the block (a collective: every rank must enter)."""
    partitioned = [p for p in params if is_partitioned(p)]
    if not partitioned:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None):
        yield


def gathered_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The module's full state dict on CPU, one ZeRO-3 parameter gathered at a time (every rank must
    call it: each gather is a collective). Without ZeRO-3 this is a CPU copy of ``state_dict()``."""
    state = {}
    for name, value in module.state_dict(keep_vars=True).items():
        with gathered([value]):
            state[name] = value.detach().cpu().clone()
    return state


def gathered_params(module: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, full value) of each trainable parameter, valid until the next item is drawn (ZeRO-3
    gathers one at a time; every rank must draw every item)."""
    for name, param in module.named_parameters():
        if param.requires_grad:
            with gathered([param]):
                yield name, param.detach()
