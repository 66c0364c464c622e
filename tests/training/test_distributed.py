"""Data-parallel training proven by its results: 2 Ray Train workers under DeepSpeed ZeRO-2.

One run of 16 steps (4 epochs of 32 samples, 4 per worker per step, a checkpoint per epoch), then a
resumed run to step 20. What each rank trained on and held comes from the run's own checkpoints:
``ranks/rank_<r>.json`` (sample keys by epoch, digests of its weights and optimizer partition), the
DeepSpeed shards and ``model.safetensors``. Oracles are those saved files and the prepared shards.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from pipelines.config import ImageConfig, PrepareConfig, ShardConfig
from pipelines.laion import prepare_laion
from pipelines.reader import read_shards
from pipelines.toyworld import write_laion_corpus
from training.checkpointing import safe_load, state_digest
from training.launch import run_dir, train
from training.loop import RANKS_DIR, STATE_NAME
from training.recipes import text_to_image_demo_debug

from loss_probe import fixed_batch, fixed_batch_loss

pytestmark = [pytest.mark.ray, pytest.mark.slow]
SAMPLES, WORLD, BATCH, STEPS, RESUMED_STEPS = 32, 2, 4, 16, 20
STEPS_PER_EPOCH = SAMPLES // (WORLD * BATCH)


def checkpoints_by_step(run: Path) -> dict[int, Path]:
    return {json.loads((p / STATE_NAME).read_text())["step"]: p for p in run.glob("checkpoint_*") if p.is_dir()}


def records(checkpoint: Path) -> list[dict]:
    found = sorted((checkpoint / RANKS_DIR).glob("rank_*.json"))
    return [json.loads(p.read_text()) for p in found]


@pytest.fixture(scope="module")
def runs(ray_local, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("distributed")
    cfg = text_to_image_demo_debug()
    corpus = write_laion_corpus(tmp / "raw", num_samples=SAMPLES, image_size=20, seed=11, unsafe_fraction=0.0)
    manifest = prepare_laion(str(corpus["metadata"]), str(corpus["media"]), str(tmp / "shards"),
                             PrepareConfig(image=ImageConfig(size=cfg.model.image_size, min_size=8),
                                           shards=ShardConfig(samples_per_shard=8)))
    assert manifest["written"] == SAMPLES  # an epoch fills whole steps on both workers
    cfg = dataclasses.replace(
        cfg, name="dist", storage_path=str(tmp / "runs"), batch_size_per_worker=BATCH, max_steps=STEPS,
        log_every=STEPS_PER_EPOCH, checkpoint_every=STEPS_PER_EPOCH, num_to_keep=None,
        optim=dataclasses.replace(cfg.optim, lr=3e-3, warmup_steps=1),
        data=dataclasses.replace(cfg.data, path=str(tmp / "shards")))
    first = train(cfg)
    assert first.error is None, first.error
    first_checkpoints = checkpoints_by_step(Path(run_dir(cfg)))
    resumed_cfg = dataclasses.replace(cfg, max_steps=RESUMED_STEPS)
    resumed = train(resumed_cfg)
    assert resumed.error is None, resumed.error
    rows = read_shards(str(tmp / "shards")).take_all()
    return cfg, first_checkpoints, checkpoints_by_step(Path(run_dir(cfg))), rows


@pytest.mark.timeout(720)  # pays the module's two runs: 225 s alone, 394 s on 2 busy cores
def test_every_rank_holds_identical_weights_after_each_epoch(runs):
    cfg, first, _, _ = runs
    assert sorted(first) == list(range(STEPS_PER_EPOCH, STEPS + 1, STEPS_PER_EPOCH))
    previous = None
    for step, checkpoint in sorted(first.items()):
        ranks = records(checkpoint)
        assert [r["rank"] for r in ranks] == [0, 1] and all(r["step"] == step for r in ranks)
        saved = state_digest(load_file(str(checkpoint / "model.safetensors")))
        assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"] == saved, step
        # ZeRO-2 partitions the optimizer: each rank holds a different half of its state
        assert ranks[0]["optimizer_sha256"] != ranks[1]["optimizer_sha256"]
        assert saved != previous, f"weights did not change by step {step}"
        previous = saved


@pytest.mark.timeout(60)
def test_ranks_see_disjoint_samples_whose_union_is_each_epoch(runs):
    cfg, first, _, rows = runs
    epoch_keys = {str(r["key"]) for r in rows}
    assert len(epoch_keys) == SAMPLES
    seen: dict[int, dict[str, list[str]]] = {}  # rank -> epoch -> keys, over every checkpoint of the run
    for checkpoint in first.values():
        for record in records(checkpoint):
            for epoch, keys in record["samples"].items():
                seen.setdefault(record["rank"], {}).setdefault(epoch, []).extend(keys)
    assert sorted(seen) == [0, 1]
    epochs = sorted(seen[0], key=int)
    assert epochs == sorted(seen[1], key=int) == [str(e) for e in range(STEPS // STEPS_PER_EPOCH)]
    for epoch in epochs:
        rank0, rank1 = seen[0][epoch], seen[1][epoch]
        assert len(rank0) == len(set(rank0)) == len(rank1) == len(set(rank1)) == SAMPLES // WORLD, epoch
        assert set(rank0).isdisjoint(rank1), f"epoch {epoch}: both ranks trained on {set(rank0) & set(rank1)}"
        assert set(rank0) | set(rank1) == epoch_keys, epoch


@pytest.mark.timeout(60)
def test_loss_falls_on_a_fixed_batch(runs):
    """The same 8 images, captions, timesteps and noise (loss_probe) scored by the weights after epoch 1
    and after epoch 4."""
    cfg, first, _, rows = runs
    images, captions = fixed_batch(rows)
    early = fixed_batch_loss(first[STEPS_PER_EPOCH], images, captions)
    late = fixed_batch_loss(first[STEPS], images, captions)
    print(f"fixed-batch loss after epoch 1: {early:.4f}, after epoch 4: {late:.4f}")
    assert late < 0.85 * early, (early, late)   # lr = 0 gives exactly 1.0


@pytest.mark.timeout(60)
def test_resume_restores_weights_and_optimizer_state_exactly(runs):
    cfg, first, after, _ = runs
    saved = first[STEPS]
    assert sorted(after) == sorted([*first, RESUMED_STEPS])
    ranks = records(after[RESUMED_STEPS])
    saved_weights = state_digest(load_file(str(saved / "model.safetensors")))
    for record in ranks:
        rank = record["rank"]
        restored = record["resumed_from"]
        assert restored["step"] == STEPS
        assert restored["weights_sha256"] == saved_weights, f"rank {rank} resumed with other weights"
        shard = safe_load(str(saved / "deepspeed" / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"))
        assert restored["optimizer_sha256"] == state_digest(shard["optimizer_state_dict"]), \
            f"rank {rank} resumed with another optimizer state than its saved ZeRO partition"
        # the run went on from there: 4 more steps on every rank, then a new state
        assert sum(len(k) for k in record["samples"].values()) == (RESUMED_STEPS - STEPS) * BATCH
        assert record["weights_sha256"] != saved_weights
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]


@pytest.mark.timeout(60)
def test_rays_logs_are_linked_into_the_run_folder(runs):
    """Workers' output stays out of the terminal (log_to_driver=False) and is found from the run."""
    cfg = runs[0]
    link = Path(run_dir(cfg)) / "ray_logs"
    assert link.is_symlink() and link.resolve().is_dir()
    worker_logs = list(link.glob("worker-*.out")) + list(link.glob("worker-*.err"))
    assert worker_logs, sorted(p.name for p in link.iterdir())[:20]
    assert any("RayTrainWorker" in p.read_text(errors="replace") for p in worker_logs)  # the Train workers' own
