"""Real DeepSpeed checkpoints (ZeRO 0-3, fp32 and bf16) round-trip through codiray's safe loader:
the resumed engine has the trained weights and every tensor of the trained optimizer state, and
model.safetensors holds the same weights; a checkpoint with a pickled callable planted in it is
refused by ``engine.load_checkpoint`` before the callable runs. Each case runs in its own process
(it initialises torch.distributed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(240)  # ~25 s each (more on slower 2-core CPUs)
@pytest.mark.parametrize("stage, precision, port", [(0, "fp32", 29611), (1, "bf16", 29612), (2, "bf16", 29613),
                                                    (3, "bf16", 29614)])
def test_checkpoint_round_trip(tmp_path, stage, precision, port):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MASTER_PORT": str(port)}
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("deepspeed_roundtrip.py")),
                           str(stage), precision, str(tmp_path / "checkpoint")], capture_output=True, text=True,
                          env=env, timeout=220, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["client_state"] == {"step": 2, "epoch": 1}
    assert summary["changed_by_training"] and summary["frozen_text_encoder_unchanged"]
    assert summary["num_tensors"] > 100
    assert summary["resume_matches"]
    assert summary["optimizer_state_trained"] and summary["optimizer_state_restored"], summary
    assert summary["num_optimizer_tensors"] >= 3  # Adam's two moments and the step at least
    assert summary["safetensors_matches"]
    # engine level: DeepSpeed's own load_checkpoint refuses the planted callable, which never ran
    assert "unsupported GLOBAL os.makedirs" in summary["planted_refused"], summary
    assert not summary["planted_callable_ran"]


def test_engine_fields_are_validated():
    assert TrainConfig(zero_stage=3).zero_stage == 3  # the frozen encoders stay outside ZeRO-3 (training/task.py)
    with pytest.raises(ValueError, match="zero_stage must be 0, 1, 2 or 3, got 4"):
        TrainConfig(zero_stage=4)
    with pytest.raises(ValueError, match="grad_accum_steps must be >= 1"):
        TrainConfig(grad_accum_steps=0)
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, bf16_autocast, got 'bf16_autocat'"):
        TrainConfig(precision="bf16_autocat")
