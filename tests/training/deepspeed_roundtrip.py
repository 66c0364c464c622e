"""Run by test_deepspeed_checkpoints.py in a subprocess: one DeepSpeed engine (world size 1, gloo on
CPU) at a given ZeRO stage takes two steps, saves a checkpoint the way the Train loop does, and a
fresh engine loads it back through the safe loader. Prints a JSON summary on the last line."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch


def _optimizer_steps(engine) -> int:
    """AdamW's step count from the (possibly ZeRO-wrapped) optimizer: proof its state was restored."""
    state = engine.optimizer.state_dict()
    inner = state.get("base_optimizer_state", state)
    steps = [int(s["step"]) for s in inner["state"].values()] if isinstance(inner, dict) and "state" in inner else []
    return max(steps, default=0)


def main(stage: int, precision: str, out: Path) -> None:
    import deepspeed
    import torch.distributed as dist

    from models.text_to_image import TextToImageDiffuser
    from training.checkpointing import use_safe_checkpoint_loading
    from training.config import TrainConfig
    from training.loop import DEEPSPEED_TAG, build_optimizer, deepspeed_config, save_checkpoint
    from training.recipes import text_to_image_demo_debug
    from training.step import text_to_image_loss

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MASTER_PORT", "29533"),
                      RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    dist.init_process_group("gloo", rank=0, world_size=1)
    cfg: TrainConfig = text_to_image_demo_debug()
    cfg.zero_stage, cfg.precision = stage, precision

    def engine_for():
        torch.manual_seed(0)
        model = TextToImageDiffuser(cfg.model)
        optimizer, scheduler = build_optimizer(model, cfg)
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                          config=deepspeed_config(cfg))
        use_safe_checkpoint_loading(engine)
        return engine

    engine = engine_for()
    images = np.random.default_rng(0).integers(0, 256, (cfg.batch_size_per_worker, 16, 16, 3), dtype=np.uint8)
    for _ in range(2):
        loss = text_to_image_loss(engine.module, images, ["a red circle"] * len(images), torch.Generator().manual_seed(1))
        engine.backward(loss)
        engine.step()
    save_checkpoint(engine, step=2, epoch=1, rank=0, directory=out, history=[{"step": 2}])
    trained = {k: v.float().cpu().clone() for k, v in engine.module.state_dict().items()}

    fresh = engine_for()
    _, client_state = fresh.load_checkpoint(str(out), tag=DEEPSPEED_TAG)
    reloaded = {k: v.float().cpu() for k, v in fresh.module.state_dict().items()}
    saved = TextToImageDiffuser.from_pretrained(out).state_dict()
    print(json.dumps({
        "client_state": {k: client_state[k] for k in ("step", "epoch")},
        "optimizer_state_restored": _optimizer_steps(fresh) == _optimizer_steps(engine) > 0,
        "resume_matches": all(torch.equal(trained[k], reloaded[k]) for k in trained),
        "safetensors_matches": all(torch.allclose(trained[k], saved[k].float()) for k in trained),
        "num_tensors": len(trained),
        "changed_by_training": any(not torch.equal(trained[k], v.float()) for k, v in
                                   TextToImageDiffuser(cfg.model).state_dict().items() if k.startswith("unet.")),
    }))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], Path(sys.argv[3]))
