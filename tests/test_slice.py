"""The first end-to-end slice on a handful of samples: real JPEGs, a Ray Data job, Ray Train +
DeepSpeed ZeRO-2 on 2 workers, a checkpoint, a resumed run, and PNGs from `codiray generate`."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from codiray.cli import main
from codiray.demo_t2i import debug_config, run_demo
from pipelines.reader import read_shards
from training.generate import find_checkpoint
from training.launch import run_dir, train
from training.loop import HISTORY_NAME, STATE_NAME

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def demo(ray_local, tmp_path_factory):
    cfg = debug_config()
    out = tmp_path_factory.mktemp("demo")
    return cfg, out, run_demo(cfg, out)


@pytest.mark.timeout(480)  # pays the module's demo run (measured 146 s when it still built DeepSpeed's comm op, 80 s of it)
def test_shards_account_for_every_input(demo):
    cfg, out, paths = demo
    manifest = paths["manifest"]
    metadata = pq.read_table(Path(paths["corpus"]) / "metadata.parquet").to_pylist()
    unsafe = sorted(r["key"] for r in metadata if r["punsafe"] > cfg.prepare.caption.punsafe_max)
    assert manifest["input"] == cfg.num_samples == len(metadata)
    assert manifest["written"] + manifest["dropped"] == manifest["input"]
    assert len(manifest["shards"]) == math.ceil(cfg.num_samples / cfg.prepare.shards.samples_per_shard)
    assert sum(s["samples"] for s in manifest["shards"]) == manifest["written"]
    ledger = pq.read_table(Path(paths["shards"]) / "dropped.parquet").to_pylist()
    assert sorted(r["key"] for r in ledger) == unsafe and all(r["stage"] == "metadata" for r in ledger)
    rows = read_shards(paths["shards"]).take_all()
    assert len(rows) == manifest["written"]
    assert rows[0]["image"].shape == (cfg.train.model.image_size, cfg.train.model.image_size, 3)
    assert {r["key"] for r in rows}.isdisjoint(unsafe)


@pytest.mark.timeout(300)  # a resumed 2-worker run of 3 steps
def test_training_checkpoints_and_resumes_from_the_saved_step(demo):
    cfg, out, paths = demo
    checkpoint = Path(paths["checkpoint"])
    assert json.loads((checkpoint / STATE_NAME).read_text())["step"] == cfg.train.max_steps
    shards = sorted(p.name for p in (checkpoint / "deepspeed").iterdir())
    assert "zero_pp_rank_0_mp_rank_00_optim_states.pt" in shards and "zero_pp_rank_1_mp_rank_00_optim_states.pt" in shards
    assert (Path(run_dir(dataclasses.replace(cfg.train, storage_path=str(out / "bucket" / "runs")))) / "train_config.yaml").is_file()

    more = dataclasses.replace(cfg.train, max_steps=cfg.train.max_steps + 3, storage_path=str(out / "bucket" / "runs"),
                               data=dataclasses.replace(cfg.train.data, path=paths["shards"]))
    result = train(more)
    assert result.error is None and result.metrics["step"] == more.max_steps
    latest = find_checkpoint(Path(run_dir(more)))
    steps = [m["step"] for m in json.loads((latest / HISTORY_NAME).read_text())]
    # the history carried over from the first run, then continued after its last step (no restart at 0)
    logged = [s for s in range(1, more.max_steps + 1)
              if s % more.log_every == 0 or s % more.checkpoint_every == 0 or s in (cfg.train.max_steps, more.max_steps)]
    assert steps == logged, steps


@pytest.mark.timeout(120)
def test_generate_writes_decodable_pngs_of_the_configured_size(demo, tmp_path, capsys):
    cfg, out, paths = demo
    size = cfg.train.model.image_size
    for png in Path(paths["samples"]).glob("0*.png"):
        with Image.open(png) as image:
            assert image.format == "PNG" and image.size == (size, size)
    code = main(["generate", "--checkpoint", str(out / "bucket" / "runs" / cfg.train.name),
                 "--prompt", "a red circle on the left", "--prompt", "a blue square on the right",
                 "--num-per-prompt", "2", "--steps", "3", "--out", str(tmp_path)])
    assert code == 0
    pngs = sorted(tmp_path.glob("0*.png"))
    assert len(pngs) == 4
    for png in pngs:
        with Image.open(png) as image:
            image.load()
            assert image.size == (size, size) and image.mode == "RGB"
    assert "wrote 4 images" in capsys.readouterr().out
    assert Path(paths["loss_plot"]).is_file()


@pytest.mark.timeout(300)  # a fresh 2-step 2-worker run through the CLI
def test_train_command_runs_a_recipe_with_overrides(demo, tmp_path, capsys):
    cfg, out, paths = demo
    code = main(["train", "--recipe", "text_to_image_demo_debug", "--data", paths["shards"],
                 "--storage-path", str(tmp_path), "--name", "cli-run", "max_steps=2", "checkpoint_every=2",
                 "optim.lr=5e-4"])
    assert code == 0
    import yaml

    resolved = yaml.safe_load((tmp_path / "cli-run" / "train_config.yaml").read_text())
    assert (resolved["max_steps"], resolved["optim"]["lr"], resolved["data"]["path"]) == (2, 5e-4, paths["shards"])
    checkpoint = find_checkpoint(tmp_path / "cli-run")
    assert json.loads((checkpoint / STATE_NAME).read_text())["step"] == 2
    assert "trained cli-run: step 2" in capsys.readouterr().out


@pytest.mark.timeout(60)  # refused before any worker starts
def test_train_refuses_shards_that_do_not_fit_the_model(demo, capsys):
    cfg, out, paths = demo
    assert main(["train", "--recipe", "text_to_image_demo_debug", "--data", paths["shards"],
                 "model.image_size=32"]) == 2
    assert "images are 16x16x3 but model.image_size is 32" in capsys.readouterr().err
    assert main(["train", "--recipe", "text_to_image_demo_debug", "--data", paths["shards"],
                 "batch_size_per_worker=64"]) == 2
    assert "cannot fill one batch of 64 on each of 2 workers" in capsys.readouterr().err
