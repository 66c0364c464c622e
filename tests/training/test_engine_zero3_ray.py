"""ZeRO-3 on 2 Ray Train workers, with a worker killed mid-stage.

One run of 16 steps (4 per epoch, a checkpoint per epoch) under ZeRO-3 with the frozen text tower
outside the engine and an EMA on rank 0. Rank 1 exits hard after step 6 (``debug.fail_at_step``);
``max_failures=1`` restarts the group from the step-4 checkpoint and the stage finishes. Oracles:
the run's own saved files (weights, DeepSpeed shards, rank records) and a freshly built model.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from models.text_to_image import TextToImageDiffuser
from pipelines.config import ImageConfig, PrepareConfig, ShardConfig
from pipelines.laion import prepare_laion
from pipelines.reader import read_shards
from pipelines.toyworld import write_laion_corpus
from training.checkpointing import safe_load, state_digest
from training.config import DebugConfig, EMAConfig
from training.launch import run_dir, train
from training.loop import EMA_STATE_NAME, EMA_WEIGHTS_NAME, RANKS_DIR, STATE_NAME
from training.recipes import text_to_image_demo_debug

from loss_probe import fixed_batch, fixed_batch_loss
from training.scalars import DIR_NAME, JSONL_NAME

pytestmark = [pytest.mark.ray, pytest.mark.slow]
SAMPLES, WORLD, BATCH, STEPS, FAIL_AT = 32, 2, 4, 16, 6
PER_EPOCH = SAMPLES // (WORLD * BATCH)


def checkpoints_by_step(run: Path) -> dict[int, Path]:
    return {json.loads((p / STATE_NAME).read_text())["step"]: p for p in run.glob("checkpoint_*") if p.is_dir()}


def records(checkpoint: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((checkpoint / RANKS_DIR).glob("rank_*.json"))]


@pytest.fixture(scope="module")
def run(ray_local, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("zero3")
    cfg = text_to_image_demo_debug()
    corpus = write_laion_corpus(tmp / "raw", num_samples=SAMPLES, image_size=20, seed=11, unsafe_fraction=0.0)
    manifest = prepare_laion(str(corpus["metadata"]), str(corpus["media"]), str(tmp / "shards"),
                             PrepareConfig(image=ImageConfig(size=cfg.model.image_size, min_size=8),
                                           shards=ShardConfig(samples_per_shard=8)))
    assert manifest["written"] == SAMPLES
    cfg = dataclasses.replace(
        cfg, name="zero3", storage_path=str(tmp / "runs"), zero_stage=3, batch_size_per_worker=BATCH,
        max_steps=STEPS, log_every=2, checkpoint_every=PER_EPOCH, num_to_keep=None, max_failures=1,
        ema=EMAConfig(decay=0.9, warmup=False), debug=DebugConfig(fail_at_step=FAIL_AT, fail_rank=1),
        optim=dataclasses.replace(cfg.optim, lr=3e-3, warmup_steps=1),
        data=dataclasses.replace(cfg.data, path=str(tmp / "shards")))
    result = train(cfg, progress=False)
    return cfg, result, Path(run_dir(cfg)), read_shards(str(tmp / "shards")).take_all()


@pytest.mark.timeout(900)  # one 2-worker ZeRO-3 run with a restart on 2 busy cores
def test_killed_worker_restarts_from_the_last_checkpoint_and_the_stage_finishes(run):
    cfg, result, folder, _ = run
    assert result.error is None, result.error
    assert result.metrics["step"] == STEPS
    assert (folder / f"debug_fault_injected_at_step_{FAIL_AT}").is_file()  # rank 1 really died once
    checkpoints = checkpoints_by_step(folder)
    assert sorted(checkpoints) == list(range(PER_EPOCH, STEPS + 1, PER_EPOCH))
    last_before = max(s for s in checkpoints if s <= FAIL_AT)
    saved = state_digest(load_file(str(checkpoints[last_before] / "model.safetensors")))
    for step in (s for s in checkpoints if s > FAIL_AT):
        for record in records(checkpoints[step]):
            restored = record["resumed_from"]
            # the restarted group went on from the checkpoint: its step, its weights, its optimizer shard
            assert restored is not None and restored["step"] == last_before, (step, record["rank"])
            assert restored["weights_sha256"] == saved
            shard = safe_load(str(checkpoints[last_before] / "deepspeed"
                                  / f"zero_pp_rank_{record['rank']}_mp_rank_00_optim_states.pt"))
            assert restored["optimizer_sha256"] == state_digest(shard["optimizer_state_dict"])
    # the EMA resumed with the checkpoint too: one update per step since step 0, not since the restart
    from safetensors import safe_open

    with safe_open(str(checkpoints[STEPS] / EMA_STATE_NAME), framework="pt") as f:
        assert int(f.metadata()["num_updates"]) == STEPS
    logged = [json.loads(line)["step"] for line in (folder / DIR_NAME / JSONL_NAME).read_text().splitlines()]
    assert logged[-1] == STEPS and sorted(set(logged)) == list(range(2, STEPS + 1, 2))


@pytest.mark.timeout(60)
def test_zero3_exports_full_gathered_weights_identical_on_every_rank(run):
    cfg, result, folder, _ = run
    checkpoints = checkpoints_by_step(folder)
    reference = TextToImageDiffuser(cfg.model).state_dict()  # the whole model's layout (ZeRO 0-2 hold this)
    previous = None
    for step, checkpoint in sorted(checkpoints.items()):
        weights = load_file(str(checkpoint / "model.safetensors"))
        assert {k: v.shape for k, v in weights.items()} == {k: v.shape for k, v in reference.items()}, step
        ranks = records(checkpoint)
        assert [r["rank"] for r in ranks] == [0, 1]
        assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"] == state_digest(weights), step
        assert ranks[0]["optimizer_sha256"] != ranks[1]["optimizer_sha256"]  # each holds its own partition
        assert state_digest(weights) != previous, f"weights did not change by step {step}"
        previous = state_digest(weights)
    model = TextToImageDiffuser.from_pretrained(checkpoints[STEPS])  # strict load: every tensor present
    ema = TextToImageDiffuser.from_pretrained(checkpoints[STEPS], weights_name=EMA_WEIGHTS_NAME)
    assert any(not torch.equal(a, b) for a, b in zip(model.unet.state_dict().values(), ema.unet.state_dict().values()))
    assert all(torch.equal(a, b) for a, b in zip(model.text_encoder.state_dict().values(),
                                                  ema.text_encoder.state_dict().values()))


@pytest.mark.timeout(60)
def test_zero3_loss_falls_on_a_fixed_batch(run):
    cfg, result, folder, rows = run
    checkpoints = checkpoints_by_step(folder)
    images, captions = fixed_batch(rows)
    early = fixed_batch_loss(checkpoints[PER_EPOCH], images, captions)
    late = fixed_batch_loss(checkpoints[STEPS], images, captions)
    print(f"ZeRO-3 fixed-batch loss after step {PER_EPOCH}: {early:.4f}, after step {STEPS}: {late:.4f}")
    assert late < 0.85 * early, (early, late)   # lr = 0 gives exactly 1.0
