"""Pure parts of the training engine (no Ray, no DeepSpeed started): the LR schedule, the scalar log,
the fault-injection knob, and the stage task's split of the text-to-image model."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from models.text_to_image import TextToImageDiffuser
from training.config import DebugConfig, EMAConfig, OptimConfig, TrainConfig
from training.engine import build_optimizer, lr_at
from training.recipes import text_to_image_demo_debug
from training.scalars import DIR_NAME, JSONL_NAME, ScalarLog
from training.step import text_to_image_loss
from training.task import build_task

ROOT = Path(__file__).resolve().parents[2]


def test_lr_at_warms_up_linearly_then_follows_a_half_cosine_to_the_floor():
    base, warmup, total, r = 1e-3, 4, 24, 0.1
    assert [lr_at(s, base, warmup, total, r) for s in range(4)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert lr_at(4, base, warmup, total, r) == pytest.approx(base)             # cosine starts at the peak
    assert lr_at(14, base, warmup, total, r) == pytest.approx(base * 0.55)     # halfway: r + (1 − r)/2
    # a quarter of the way: cos(π/4) = √2/2
    assert lr_at(9, base, warmup, total, r) == pytest.approx(base * (0.1 + 0.9 * (1 + math.sqrt(0.5)) / 2))
    assert lr_at(24, base, warmup, total, r) == pytest.approx(base * r)
    assert lr_at(30, base, warmup, total, r) == pytest.approx(base * r)        # held at the floor after T
    assert {lr_at(s, base, warmup, total, 1.0) for s in range(4, 40)} == {base}  # min_lr_ratio=1: constant
    assert lr_at(0, base, 0, total, 0.0) == pytest.approx(base)                # no warmup


def test_engine_scheduler_steps_the_optimizer_through_lr_at():
    cfg = TrainConfig(max_steps=10, optim=OptimConfig(lr=0.2, warmup_steps=3, min_lr_ratio=0.25))
    model = torch.nn.Linear(2, 2)
    optimizer, scheduler = build_optimizer(model, cfg)
    seen = []
    for _ in range(12):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([lr_at(s, 0.2, 3, 10, 0.25) for s in range(12)])
    assert seen[0] == pytest.approx(0.2 / 3) and seen[-1] == pytest.approx(0.05)


def test_optim_fields_are_validated():
    with pytest.raises(ValueError, match="min_lr_ratio must be in"):
        OptimConfig(min_lr_ratio=1.5)
    with pytest.raises(ValueError, match="ema.decay must be in"):
        EMAConfig(decay=2.0)


def test_scalar_log_appends_json_lines_in_the_run_folder(tmp_path):
    log = ScalarLog(str(tmp_path / "run"))
    log.log({"step": 2, "loss": 0.5, "lr": 1e-3, "note": "skipped"})
    log.close()
    ScalarLog(str(tmp_path / "run")).log({"step": 4, "loss": 0.25})  # a resumed run appends
    lines = [json.loads(x) for x in (tmp_path / "run" / DIR_NAME / JSONL_NAME).read_text().splitlines()]
    assert lines == [{"step": 2, "loss": 0.5, "lr": 1e-3}, {"step": 4, "loss": 0.25}]


FAULT = """
import sys
from training.config import DebugConfig, TrainConfig
from training.loop import inject_fault
cfg = TrainConfig(debug=DebugConfig(fail_at_step=3, fail_rank=1))
inject_fault(cfg, 0, 3, sys.argv[1])   # another rank: nothing
inject_fault(cfg, 1, 2, sys.argv[1])   # another step: nothing
inject_fault(cfg, 1, 3, sys.argv[1])   # exits the first time (marker written), returns afterwards
print("survived")
"""


def test_fail_at_step_kills_the_configured_rank_once_per_run(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.run([sys.executable, "-c", FAULT, str(tmp_path)], capture_output=True, text=True, env=env, cwd=ROOT)
    assert first.returncode == 17 and "survived" not in first.stdout, first.stderr[-2000:]
    assert (tmp_path / "debug_fault_injected_at_step_3").is_file()
    second = subprocess.run([sys.executable, "-c", FAULT, str(tmp_path)], capture_output=True, text=True, env=env, cwd=ROOT)
    assert second.returncode == 0 and "survived" in second.stdout
    assert DebugConfig().fail_at_step is None  # off unless configured


def test_task_split_reproduces_the_whole_models_loss_and_saves_its_layout(tmp_path):
    """The task's frozen tower + trainable UNet, fed the same draws, give the full model's loss, and
    export the weights in the layout ``TextToImageDiffuser.from_pretrained`` reads."""
    cfg = text_to_image_demo_debug()
    task = build_task(cfg)
    torch.manual_seed(0)
    frozen, unet = task.build_frozen(), task.build_trainable()
    torch.nn.init.normal_(unet.out[-1].weight, std=0.1)  # zero-init output: make the loss weight-dependent
    task.save_pretrained(tmp_path, task.export_state(unet.state_dict(), frozen), "model.safetensors")
    whole = TextToImageDiffuser.from_pretrained(tmp_path)
    assert all(torch.equal(whole.unet.state_dict()[k], v) for k, v in unet.state_dict().items())
    rng = np.random.default_rng(0)
    batch = {"image": rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8),
             "caption": np.array(["a red circle", "a blue square", "", "a green triangle"])}
    split = task.loss(unet, task.batch_inputs(batch, frozen, torch.Generator().manual_seed(9), torch.device("cpu")),
                      torch.float32)
    reference = text_to_image_loss(whole, batch["image"], batch["caption"].tolist(), torch.Generator().manual_seed(9))
    assert split.item() == pytest.approx(reference.item(), rel=1e-6)
    assert not any(p.requires_grad for p in frozen.parameters())


def test_activation_checkpointing_reaches_models_that_have_it_and_is_refused_for_others():
    from common.errors import ConfigError
    from models.codi import CoDi, CoDiConfig, UNetSpec
    from training.loop import build_parts

    cfg = dataclasses.replace(text_to_image_demo_debug(), activation_checkpointing=True)
    with pytest.raises(ConfigError, match="activation_checkpointing.*UNet has no set_gradient_checkpointing"):
        build_parts(cfg, build_task(cfg))

    class CoDiImageTask:  # a stage whose trainable part supports it (CoDi's UNets)
        def build_frozen(self):
            return None

        def build_trainable(self):
            return CoDi(CoDiConfig(image=UNetSpec(in_channels=4, out_channels=4, model_channels=32, channel_mult=[1, 2],
                                                  num_res_blocks=[1, 1], attention_levels=[True, False], num_heads=2,
                                                  context_dim=32, video=False, connectors=False)))

    frozen, trainable = build_parts(cfg, CoDiImageTask())
    assert frozen is None and all(u.gradient_checkpointing for u in trainable.unets.values())
    _, plain = build_parts(dataclasses.replace(cfg, activation_checkpointing=False), CoDiImageTask())
    assert not any(u.gradient_checkpointing for u in plain.unets.values())


def test_tensorboard_event_files_hold_the_logged_scalars(tmp_path):
    """The event files TensorBoard reads carry the same values as the JSON lines (read back with
    TensorBoard's own EventAccumulator, not with the writer's code)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = ScalarLog(str(tmp_path / "run"))
    for step, loss in ((2, 0.75), (4, 0.5), (6, 0.25)):
        log.log({"step": step, "loss": loss, "lr": 1e-3 * step})
    log.close()
    events = EventAccumulator(str(tmp_path / "run" / DIR_NAME))
    events.Reload()
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("loss")] == [(2, 0.75), (4, 0.5), (6, 0.25)]
    assert [e.step for e in events.Scalars("lr")] == [2, 4, 6]


def test_a_killed_extension_build_no_longer_blocks_the_next_one(tmp_path, capsys):
    """torch's JIT builds serialise on a ``FileBaton`` lock in the op's build folder; a builder killed
    mid-build leaves it and every later ``deepspeed.initialize`` waits forever. ``clear_stale_build_locks``
    removes a lock older than any build (the baton can be taken again) and keeps a fresh one (a build in
    progress), under ``TORCH_EXTENSIONS_DIR`` and torch's versioned subfolders alike."""
    from torch.utils.file_baton import FileBaton

    from training.engine import STALE_BUILD_LOCK_S, clear_stale_build_locks

    stale_dir, fresh_dir = tmp_path / "deepspeed_shm_comm", tmp_path / "py312_cpu" / "other_op"
    for d in (stale_dir, fresh_dir):
        d.mkdir(parents=True)
        assert FileBaton(str(d / "lock")).try_acquire()      # a builder takes the baton ... and is killed
    old = os.path.getmtime(stale_dir / "lock") - STALE_BUILD_LOCK_S - 5
    os.utime(stale_dir / "lock", (old, old))
    assert not FileBaton(str(stale_dir / "lock")).try_acquire()   # without the fix: held forever

    removed = clear_stale_build_locks(str(tmp_path))
    assert removed == [stale_dir / "lock"]
    assert "stale extension build lock" in capsys.readouterr().out
    assert FileBaton(str(stale_dir / "lock")).try_acquire()       # the next build can start
    assert (fresh_dir / "lock").exists() and not FileBaton(str(fresh_dir / "lock")).try_acquire()
    assert clear_stale_build_locks(str(tmp_path / "missing")) == []
