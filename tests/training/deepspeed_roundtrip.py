"""Run by test_deepspeed_checkpoints.py in a subprocess: one DeepSpeed engine (world size 1, gloo on
CPU; the frozen text tower outside it) at a given ZeRO stage takes two steps, saves a checkpoint the way the Train loop does, and a
fresh engine loads it back through the safe loader. Then a copy of the checkpoint with a pickled
callable planted in it goes through ``engine.load_checkpoint``. Prints a JSON summary on the last line."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
import torch


def flat_tensors(state, path: str = "") -> dict[str, torch.Tensor]:
    """Every tensor of a nested optimizer state, by its path (``base_optimizer_state/0/exp_avg`` ...)."""
    if isinstance(state, torch.Tensor):
        return {path: state.detach().float().cpu()}
    items = state.items() if isinstance(state, dict) else enumerate(state) if isinstance(state, (list, tuple)) else ()
    return {k: v for key, value in items for k, v in flat_tensors(value, f"{path}/{key}").items()}


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def plant_callable(checkpoint: Path, marker: Path) -> Path:
    """A copy of the checkpoint whose model-states file also holds an object that, unpickled,
    calls ``os.makedirs(marker)`` (what a hostile writer of shared storage could plant)."""

    class Planted:
        def __reduce__(self):
            return (os.makedirs, (str(marker),))

    from training.loop import DEEPSPEED_TAG

    planted = checkpoint.parent / "planted"
    shutil.copytree(checkpoint, planted)
    states = next((planted / DEEPSPEED_TAG).glob("*mp_rank_00_model_states.pt"))  # ZeRO-3: zero_pp_rank_0_...
    payload = torch.load(states, weights_only=False)
    payload["planted"] = Planted()
    torch.save(payload, states)
    return planted


def main(stage: int, precision: str, out: Path) -> None:
    import torch.distributed as dist

    from models.text_to_image import TextToImageDiffuser
    from training.checkpointing import use_safe_checkpoint_loading
    from training.config import TrainConfig
    from training.engine import compute_dtype, gathered_state
    from training.loop import DEEPSPEED_TAG, build_engine, save_checkpoint
    from training.recipes import text_to_image_demo_debug
    from training.task import build_task

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MASTER_PORT", "29533"),
                      RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    dist.init_process_group("gloo", rank=0, world_size=1)
    cfg: TrainConfig = text_to_image_demo_debug()
    cfg.zero_stage, cfg.precision = stage, precision
    task = build_task(cfg)

    def engine_for():
        engine, frozen, _ = build_engine(cfg, task)
        use_safe_checkpoint_loading(engine)
        return engine, frozen

    def full_weights(engine, frozen):  # the model's layout: unet.* (gathered under ZeRO-3) + text_encoder.*
        return {k: v.float().cpu().clone() for k, v in task.export_state(gathered_state(engine.module), frozen).items()}

    engine, frozen = engine_for()
    initial = full_weights(engine, frozen)
    images = np.random.default_rng(0).integers(0, 256, (cfg.batch_size_per_worker, 16, 16, 3), dtype=np.uint8)
    batch = {"image": images, "caption": np.array(["a red circle"] * len(images))}
    for _ in range(2):
        inputs = task.batch_inputs(batch, frozen, torch.Generator().manual_seed(1), engine.device)
        engine.backward(task.loss(engine, inputs, compute_dtype(cfg)))
        engine.step()
    weights = task.export_state(gathered_state(engine.module), frozen)
    save_checkpoint(engine, task, frozen, weights, step=2, epoch=1, rank=0, directory=out, history=[{"step": 2}])
    trained = full_weights(engine, frozen)
    trained_optimizer = flat_tensors(engine.optimizer.state_dict())

    fresh, fresh_frozen = engine_for()
    fresh_optimizer = flat_tensors(fresh.optimizer.state_dict())
    _, client_state = fresh.load_checkpoint(str(out), tag=DEEPSPEED_TAG)
    reloaded = full_weights(fresh, fresh_frozen)
    saved = TextToImageDiffuser.from_pretrained(out).state_dict()

    marker = out.parent / "planted-callable-ran"
    planted = plant_callable(out, marker)
    try:
        engine_for()[0].load_checkpoint(str(planted), tag=DEEPSPEED_TAG)
        refused = ""
    except pickle.UnpicklingError as err:
        refused = str(err)
    print(json.dumps({
        "client_state": {k: client_state[k] for k in ("step", "epoch")},
        # every tensor of the optimizer state (Adam moments, fp32 master partitions, step) as trained,
        # and that state differs from a fresh engine's (else restoring it would prove nothing)
        "optimizer_state_restored": same_tensors(flat_tensors(fresh.optimizer.state_dict()), trained_optimizer),
        "optimizer_state_trained": not same_tensors(fresh_optimizer, trained_optimizer),
        "num_optimizer_tensors": len(trained_optimizer),
        "resume_matches": same_tensors(trained, reloaded),
        "safetensors_matches": all(torch.allclose(trained[k], saved[k].float()) for k in trained),
        "num_tensors": len(trained),
        # against this run's own initial weights: false if the steps changed nothing
        "changed_by_training": any(not torch.equal(trained[k], initial[k]) for k in trained if k.startswith("unet.")),
        "frozen_text_encoder_unchanged": all(torch.equal(trained[k], initial[k]) for k in trained
                                             if k.startswith("text_encoder.")),
        "planted_refused": refused,
        "planted_callable_ran": marker.exists(),
    }))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], Path(sys.argv[3]))
