"""The schedule engine on a real Ray: concurrent Ray Train stages, schedule.json, skip on rerun,
failure propagation, and the never-fits check before any trainer starts."""

from __future__ import annotations

import dataclasses
import datetime
import json
import time
from pathlib import Path

import pytest
import ray
import torch

from common.errors import JobFailed, UsageError
from common.resources import WorkerResources
from models.text_to_image import TextToImageDiffuser
from pipelines.config import ImageConfig, PrepareConfig, ShardConfig
from pipelines.laion import prepare_laion
from pipelines.toyworld import write_laion_corpus
from training.config import ScalingConfig
from training.orchestrator import run_schedule
from training.schedule import Schedule, Stage
from training.schedules import engine_debug, one_worker_t2i_debug

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def at(iso: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(iso)


def huge_stage() -> Schedule:
    def recipe():
        return dataclasses.replace(one_worker_t2i_debug(), scaling=ScalingConfig(1, WorkerResources(cpus=64)))

    return Schedule([Stage("a", "ldm", recipe=one_worker_t2i_debug, data="laion"),
                     Stage("huge", "cascade_base", recipe=recipe, data="laion")])


@pytest.mark.timeout(120)
def test_a_stage_that_can_never_fit_fails_before_anything_starts(ray_local, tmp_path):
    with pytest.raises(UsageError) as err:
        run_schedule(huge_stage, "exp", str(tmp_path), data={"laion": str(tmp_path / "unused")})
    assert str(err.value).startswith("stage 'huge' can never run: it needs 1 worker(s) x {CPU=64} but no node")
    assert list(tmp_path.iterdir()) == []  # no schedule.json, no run folder: nothing started


def with_a_failing_branch() -> Schedule:
    """engine_debug plus a stage reading shards that do not exist and a stage that needs it, and a stage
    whose worker process dies after its first step (``debug.fail_at_step``, set by the test)."""
    return Schedule([*engine_debug().stages,
                     Stage("dies", "ldm", recipe=one_worker_t2i_debug, data="laion"),
                     Stage("bad", "ldm", recipe=one_worker_t2i_debug, data="missing"),
                     Stage("after_bad", "distillation", recipe=one_worker_t2i_debug, data="laion", needs=["bad"])])


@pytest.mark.timeout(900)
def test_engine_debug_runs_stages_concurrently_records_them_and_skips_them_on_rerun(ray_local, tmp_path, capsys):
    cfg = one_worker_t2i_debug()
    corpus = write_laion_corpus(tmp_path / "raw", num_samples=24, image_size=20, seed=3)
    shards = str(tmp_path / "shards")
    prepare_laion(str(corpus["metadata"]), str(corpus["media"]), shards,
                  PrepareConfig(image=ImageConfig(size=cfg.model.image_size, min_size=8), shards=ShardConfig(samples_per_shard=8)))
    runs = tmp_path / "runs"
    data = {"laion": shards, "missing": str(tmp_path / "nowhere")}
    overrides = ["max_steps=2", "checkpoint_every=2", "log_every=1"]

    with pytest.raises(JobFailed) as err:
        run_schedule(with_a_failing_branch, "exp", str(runs), data=data,
                     overrides=overrides + ["dies:debug.fail_at_step=1", "dies:debug.fail_rank=0"])
    assert "3 stage(s) failed: dies (" in str(err.value) and "; bad (UsageError:" in str(err.value)
    record = json.loads((runs / "exp" / "schedule.json").read_text())
    stages = {r["name"]: r for r in record["stages"]}
    a, b, c = stages["a"], stages["b"], stages["c"]
    assert [stages[n]["status"] for n in ("a", "b", "c", "dies", "bad", "after_bad")] == \
        ["done", "done", "done", "failed", "failed", "failed"]
    assert stages["dies"]["checkpoint"] is None and stages["dies"]["reason"], stages["dies"]
    # nothing stays reserved: every placement group Ray Train made (the dead stage's too) was removed
    deadline = time.monotonic() + 30
    while (left := [pg for pg in ray.util.placement_group_table().values() if pg["state"] != "REMOVED"]) and \
            time.monotonic() < deadline:
        time.sleep(0.5)
    assert left == [], left
    assert stages["bad"]["reason"] == f"UsageError: {tmp_path / 'nowhere'}: no manifest.json — is this the --out of 'codiray prepare'?"
    assert stages["after_bad"]["reason"] == f"needs bad, which failed: {stages['bad']['reason']}"
    assert stages["after_bad"]["started"] is None  # never launched
    # a and b trained at the same time (times measured inside their tasks); c only after both
    assert at(a["started"]) < at(b["finished"]) and at(b["started"]) < at(a["finished"])
    assert at(c["started"]) >= max(at(a["finished"]), at(b["finished"]))
    assert a["resources"] == {"num_workers": 1, "per_worker": {"CPU": 1.0}, "total": {"CPU": 1.0}}
    assert c["needs"] == ["a", "b"] and c["kind"] == "ldm"

    torch.manual_seed(cfg.seed)  # the loop's initial weights
    init = dict(TextToImageDiffuser(cfg.model).unet.named_parameters())
    for r in (a, b, c):
        checkpoint = Path(r["checkpoint"])
        assert checkpoint.parent == runs / "exp" / r["name"]
        trained = dict(TextToImageDiffuser.from_pretrained(checkpoint).unet.named_parameters())
        changed = [n for n in init if not torch.equal(init[n], trained[n])]
        # the zero-initialised output conv and the input conv both trained (2 steps reach only the
        # layers whose gradient is non-zero while the zero-init residual/attention outputs are still ~0)
        assert {"conv_in.weight", "out.2.weight"} <= set(changed) and len(changed) >= 20, changed
        assert not init["out.2.weight"].any() and trained["out.2.weight"].abs().max() > 0
        assert r["metrics"]["step"] == 2

    configs = {n: (runs / "exp" / n / "train_config.yaml").stat().st_mtime_ns for n in ("a", "b", "c")}
    capsys.readouterr()
    records = run_schedule(engine_debug, "exp", str(runs), data={"laion": shards}, overrides=overrides)
    assert [r["status"] for r in records.values()] == ["skipped"] * 3
    assert [r["checkpoint"] for r in records.values()] == [a["checkpoint"], b["checkpoint"], c["checkpoint"]]
    again = json.loads((runs / "exp" / "schedule.json").read_text())
    assert [r["status"] for r in again["stages"]] == ["skipped"] * 3
    # launch.train writes train_config.yaml before fitting: unchanged means no trainer started
    assert configs == {n: (runs / "exp" / n / "train_config.yaml").stat().st_mtime_ns for n in ("a", "b", "c")}
    assert ": started" not in capsys.readouterr().out
