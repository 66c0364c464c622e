"""Run by test_engine_single_rank.py in a subprocess: the training engine on one DeepSpeed rank
(gloo, world size 1, CPU). Prints a JSON summary on the last line.

``zero3``: the text-to-image task under ZeRO-3 (frozen text tower outside the engine) takes steps;
the gathered weights after every step are recorded and the rank-0 EMA is compared with the closed
form over that recorded sequence; a checkpoint is saved and resumed into a fresh engine.
``accum``: under ZeRO-2, two micro-batches of b accumulated equal one step on the batch of 2b.
``zero0``: on one ZeRO-0 rank the engine skips DeepSpeed's gradient all-reduce (an identity over one rank)
and its steps equal those of the same engine that runs it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch


def init_dist(port: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    dist.init_process_group("gloo", rank=0, world_size=1)


def batch_of(n: int, size: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    captions = np.array(["a red circle on the left", "a blue square on the right"] * (n // 2))
    return {"image": rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), "caption": captions}


def zero3(out: Path) -> dict:
    from models.text_to_image import TextToImageDiffuser
    from models.unet import UNet
    from training.checkpointing import state_digest, use_safe_checkpoint_loading
    from training.ema import RankZeroEMA
    from training.engine import compute_dtype, gathered_state, is_partitioned
    from training.loop import (DEEPSPEED_TAG, EMA_WEIGHTS_NAME, build_engine, held_state, load_ema_state,
                               save_checkpoint)
    from training.recipes import text_to_image_demo_debug
    from training.task import build_task

    cfg = text_to_image_demo_debug()
    cfg = dataclasses.replace(cfg, zero_stage=3, optim=dataclasses.replace(cfg.optim, lr=3e-3, warmup_steps=1))
    task = build_task(cfg)
    engine, frozen, _ = build_engine(cfg, task)
    use_safe_checkpoint_loading(engine)
    params = list(engine.module.parameters())
    plain = UNet(cfg.model.unet).state_dict()  # the layout ZeRO 0-2 hold whole on every rank
    beta, steps = 0.8, 5
    ema = RankZeroEMA(engine.module, 0, beta, warmup=False, zero3=True, resumed=False)
    sequence = [gathered_state(engine.module)]
    batch, generator, losses = batch_of(4, cfg.model.image_size, 0), torch.Generator().manual_seed(3), []
    for _ in range(steps):
        loss = task.loss(engine, task.batch_inputs(batch, frozen, generator, engine.device), compute_dtype(cfg))
        engine.backward(loss)
        engine.step()
        ema.update()
        losses.append(loss.item())
        sequence.append(gathered_state(engine.module))
    # θ̄_n = β^n θ_0 + Σ_{k=1..n} (1−β) β^{n−k} θ_k over the weights actually produced, in float64
    ema_error = max((ema.ema.shadow[name].double() - (beta**steps * sequence[0][name].double() + sum(
        (1 - beta) * beta ** (steps - k) * sequence[k][name].double() for k in range(1, steps + 1)))).abs().max().item()
                    for name, _ in engine.module.named_parameters())
    weights = task.export_state(sequence[-1], frozen)
    save_checkpoint(engine, task, frozen, weights, step=steps, epoch=0, rank=0, directory=out, history=[],
                    ema=ema.ema)
    trained_optimizer = state_digest(engine.optimizer.state_dict())

    fresh, fresh_frozen, _ = build_engine(cfg, task)
    use_safe_checkpoint_loading(fresh)
    _, client_state = fresh.load_checkpoint(str(out), tag=DEEPSPEED_TAG)
    resumed = held_state(fresh, task.export_state(gathered_state(fresh.module), fresh_frozen))
    resumed_ema = RankZeroEMA(fresh.module, 0, 0.5, warmup=True, zero3=True, resumed=True,
                              load_state=lambda: load_ema_state(out))
    saved = TextToImageDiffuser.from_pretrained(out).state_dict()
    saved_ema = TextToImageDiffuser.from_pretrained(out, weights_name=EMA_WEIGHTS_NAME).state_dict()
    return {
        "partitioned": all(is_partitioned(p) and p.numel() == 0 for p in params),  # held as shards, not whole
        "num_params": len(params),
        "layout_matches_zero2": {k: list(v.shape) for k, v in sequence[-1].items()} == {k: list(v.shape) for k, v in plain.items()},
        "losses": losses,
        "changed": [not torch.equal(sequence[k][n], sequence[k + 1][n]) for k in range(steps) for n in ["out.2.weight"]],
        "ema_error": ema_error,
        "ema_differs_from_last": any(not torch.allclose(ema.ema.shadow[n], sequence[-1][n]) for n in sequence[-1]),
        "client_state": client_state["step"],
        "resumed_weights_match": resumed["weights_sha256"] == state_digest(weights),
        "resumed_optimizer_match": resumed["optimizer_sha256"] == trained_optimizer,
        "safetensors_full_and_equal": all(torch.equal(saved[k], weights[k]) for k in weights) and saved.keys() == weights.keys(),
        "ema_safetensors_equal": all(torch.equal(saved_ema[f"unet.{k}"], v) for k, v in ema.ema.shadow.items()),
        "frozen_in_ema_file": all(torch.equal(saved_ema[k], weights[k]) for k in weights if k.startswith("text_encoder.")),
        "ema_resumed": (resumed_ema.ema.num_updates == steps and resumed_ema.ema.decay == beta and not resumed_ema.ema.warmup
                        and all(torch.equal(resumed_ema.ema.shadow[k], v) for k, v in ema.ema.shadow.items())),
    }


def accum() -> dict:
    import deepspeed

    from training.engine import compute_dtype, deepspeed_config
    from training.recipes import text_to_image_demo_debug
    from training.task import build_task

    base = text_to_image_demo_debug()
    b = 4
    inputs_cfg = dataclasses.replace(base, zero_stage=2, optim=dataclasses.replace(base.optim, grad_clip=0.0))
    task = build_task(inputs_cfg)
    torch.manual_seed(0)
    frozen = task.build_frozen()
    batches = [task.batch_inputs(batch_of(2 * b, base.model.image_size, s), frozen, torch.Generator().manual_seed(s),
                                 torch.device("cpu")) for s in range(3)]

    def train(micro: int, accum_steps: int) -> dict[str, torch.Tensor]:
        cfg = dataclasses.replace(inputs_cfg, batch_size_per_worker=micro, grad_accum_steps=accum_steps)
        torch.manual_seed(1)
        model = task.build_trainable()
        config = {**deepspeed_config(cfg), "zero_allow_untested_optimizer": True}
        # plain SGD: its update is proportional to the gradient (Adam's first steps are not), so a
        # wrongly scaled or dropped micro-batch shows in the weights
        engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.5),
                                          config=config)
        for inputs in batches:
            for part in range(accum_steps):
                rows = slice(part * micro, (part + 1) * micro)
                loss = task.loss(engine, {k: v[rows] for k, v in inputs.items()}, compute_dtype(cfg))
                engine.backward(loss)
                engine.step()
        return {k: v.detach().clone() for k, v in engine.module.state_dict().items()}

    torch.manual_seed(1)
    initial = task.build_trainable().state_dict()
    whole, accumulated, last_only = train(2 * b, 1), train(b, 2), None
    diff = max((whole[k] - accumulated[k]).abs().max().item() for k in whole)
    moved = max((whole[k] - initial[k]).abs().max().item() for k in whole)
    return {"max_abs_diff": diff, "max_update": moved}


def zero0() -> dict:
    from training.engine import compute_dtype
    from training.loop import build_engine
    from training.recipes import text_to_image_demo_debug
    from training.task import build_task

    base = text_to_image_demo_debug()
    cfg = dataclasses.replace(base, zero_stage=0, optim=dataclasses.replace(base.optim, lr=3e-3, warmup_steps=2))
    task = build_task(cfg)
    torch.manual_seed(0)
    engines = [build_engine(cfg, task) for _ in range(2)]     # (engine, frozen, scheduler) twice
    skipping, reducing = engines[0][0], engines[1][0]
    built_with = skipping.enable_backward_allreduce
    reducing.enable_backward_allreduce = True                 # DeepSpeed's own path: flatten, all-reduce, copy back
    reducing.module.load_state_dict(skipping.module.state_dict())
    initial = {k: v.detach().clone() for k, v in skipping.module.state_dict().items()}
    frozen = engines[0][1]
    for s in range(4):
        inputs = task.batch_inputs(batch_of(4, cfg.model.image_size, s), frozen, torch.Generator().manual_seed(s),
                                   skipping.device)
        for engine in (skipping, reducing):
            engine.backward(task.loss(engine, inputs, compute_dtype(cfg)))
            engine.step()
    got, want = skipping.module.state_dict(), reducing.module.state_dict()
    return {"allreduce": built_with, "fused": skipping.optimizer.defaults.get("fused"),
            "max_abs_diff": max((got[k] - want[k]).abs().max().item() for k in want),
            "max_update": max((want[k] - initial[k]).abs().max().item() for k in want)}


if __name__ == "__main__":
    init_dist(sys.argv[2])
    cases = {"zero3": lambda: zero3(Path(sys.argv[3])), "accum": accum, "zero0": zero0}
    result = cases[sys.argv[1]]()
    print(json.dumps(result))
