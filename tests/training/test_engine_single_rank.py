"""The training engine on one DeepSpeed rank (gloo, world size 1, CPU), each case in its own process
(tests/training/engine_single_rank.py): ZeRO-3 with the frozen text tower outside the engine, its
rank-0 EMA against the closed form over the weights actually produced, its checkpoint round trip;
gradient accumulation under ZeRO-2 against one step on the whole batch; ZeRO-0's single-rank step
without DeepSpeed's gradient all-reduce against the step with it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def run_case(*args: str, env: dict | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("engine_single_rank.py")), *args],
                          capture_output=True, text=True, env=env, timeout=280, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(300)  # measured 61 s on 2 busy cores
def test_zero3_trains_partitioned_weights_with_an_exact_ema_and_resumes(tmp_path):
    s = run_case("zero3", "29661", str(tmp_path / "checkpoint"))
    assert s["partitioned"] and s["num_params"] > 100  # every UNet parameter held as a ZeRO-3 shard
    assert s["layout_matches_zero2"]                   # gathered: the full shapes a whole UNet has
    assert all(s["changed"])                           # every step moved the weights
    # EMA (β = 0.8, 5 updates) vs β^n θ_0 + Σ (1−β) β^{n−k} θ_k over the recorded gathered weights
    assert s["ema_error"] < 1e-5 and s["ema_differs_from_last"], s
    assert s["client_state"] == 5
    assert s["resumed_weights_match"] and s["resumed_optimizer_match"], s
    assert s["safetensors_full_and_equal"]             # model.safetensors: full gathered weights + text tower
    assert s["ema_safetensors_equal"] and s["frozen_in_ema_file"]
    assert s["ema_resumed"]                            # the saved average, decay and update count come back


@pytest.mark.timeout(300)  # measured ~40 s
def test_two_accumulated_micro_batches_equal_one_step_on_the_whole_batch():
    s = run_case("accum", "29662")
    # 3 SGD steps; the same draws of t, ε and caption dropout in both runs
    assert s["max_update"] > 1e-2, s                   # the steps moved the weights visibly
    assert s["max_abs_diff"] < 1e-6, s               # measured 1.5e-8 (fp32 summation order)


@pytest.mark.timeout(300)  # measured ~25 s
def test_a_single_zero0_rank_skips_the_all_reduce_and_steps_the_same(tmp_path):
    """Also: the engine starts DeepSpeed's comm without JIT-building its inference-only shared-memory
    kernel (a fresh extensions folder stays empty; before, the first start built it there for ~55 s)."""
    extensions = tmp_path / "torch_extensions"
    extensions.mkdir()
    s = run_case("zero0", "29663", env={"TORCH_EXTENSIONS_DIR": str(extensions)})
    assert sorted(p.name for p in extensions.iterdir()) == []
    assert s["allreduce"] is False and s["fused"] is True, s   # what build_engine sets up on one ZeRO-0 rank
    assert s["max_update"] > 1e-3, s                           # 4 AdamW steps at lr 3e-3 moved the weights
    assert s["max_abs_diff"] == 0.0, s                         # all-reducing over one rank changes nothing
