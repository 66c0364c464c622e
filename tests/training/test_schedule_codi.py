"""``codi_debug`` end to end on a real Ray: a toy world prepared by the real prepare jobs, every CoDi
stage kind trained by Ray Train + DeepSpeed in its DAG, each stage loading its needs' exports, and a
rerun that skips them all."""

from __future__ import annotations

import datetime
import itertools
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from common.config import from_dict
from models.codi import CoDi
from pipelines.cli import prepare
from pipelines.config import AudioConfig, ImageConfig, PrepareConfig, ShardConfig, VideoConfig
from pipelines.toyworld_av import write_toyworld
from training.config import TrainConfig
from training.orchestrator import run_schedule
from training.schedules import codi_debug
from training.task import build_task, load_codecs
from training.tasks.latent_alignment import alignment_parameter_names

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def at(iso: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(iso)


def prepare_toyworld(root: Path) -> dict[str, str]:
    """LAION images at 16 px, WebVid 4-frame 16 px clips, AudioCaps 0.32 s 16 kHz waveforms (the debug codecs' sizes)."""
    corpora = write_toyworld(root / "raw", images=8, videos=2, sounds=4, seed=3, image_size=24)
    cfg = PrepareConfig(image=ImageConfig(size=16, min_size=8),
                        video=VideoConfig(size=16, fps=4.0, frames=4, threads=1),
                        audio=AudioConfig(sample_rate=16000, seconds=0.32, min_seconds=0.1, keep_waveform=True),
                        shards=ShardConfig(samples_per_shard=4), concurrency=1)
    out = {}
    for style in ("laion", "webvid", "audiocaps"):
        out[style] = str(root / "shards" / style)
        manifest = prepare(style, str(corpora[style]["metadata"]), str(corpora[style]["media"]), out[style], cfg)
        assert manifest["dropped"] == 0 and manifest["samples"] >= 4, (style, manifest)
    return out


def stage_cfg(record: dict) -> TrainConfig:
    import yaml

    path = Path(record["run_dir"]) / "train_config.yaml"
    return from_dict(TrainConfig, yaml.safe_load(path.read_text()), source=str(path))


def initial_export(cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """The weights the stage started from, in its export layout (the loop's build: seed, frozen, trainable)."""
    task = build_task(cfg)
    torch.manual_seed(cfg.seed)
    frozen = task.build_frozen()
    trainable = task.build_trainable()
    return task.export_state({k: v.detach().clone() for k, v in trainable.state_dict().items()}, frozen)


def changed(before: dict, after: dict) -> list[str]:
    assert set(before) == set(after)
    return [k for k in before if not torch.equal(before[k], after[k])]


@pytest.mark.timeout(600)  # measured 160 s on 2 shared cores (280 s under load)
def test_codi_debug_trains_every_stage_kind_in_its_dag_and_skips_on_rerun(ray_local, tmp_path):
    torch.set_num_threads(1)
    data = prepare_toyworld(tmp_path)
    runs = tmp_path / "runs"
    records = run_schedule(codi_debug, "codi", str(runs), data=data)
    stages = {r["name"]: r for r in json.loads((runs / "codi" / "schedule.json").read_text())["stages"]}
    assert {n: r["status"] for n, r in stages.items()} == {n: "done" for n in records}
    assert {r["kind"] for r in stages.values()} == {"autoencoder", "bridging_alignment", "ldm", "latent_alignment",
                                                    "cascade_base", "cascade_ssr", "cascade_tsr", "distillation"}
    overlapping = [(a, b) for a, b in itertools.combinations(stages, 2)
                   if at(stages[a]["started"]) < at(stages[b]["finished"])
                   and at(stages[b]["started"]) < at(stages[a]["finished"])]
    assert len(overlapping) >= 1, "no two stages trained at the same time"
    for name, r in stages.items():  # every stage started after all its needs finished
        assert all(at(r["started"]) >= at(stages[m]["finished"]) for m in r["needs"]), name

    ckpt = {n: Path(r["checkpoint"]) for n, r in stages.items()}
    exported = {n: load_file(str(p / "model.safetensors")) for n, p in ckpt.items()}
    cfgs = {n: stage_cfg(r) for n, r in stages.items()}

    # roots: each export differs from its initial weights (two AdamW steps at lr 1e-3)
    for name in ("image_autoencoder", "audio_autoencoder", "audio_bridging", "cascade_base", "cascade_ssr", "cascade_tsr"):
        moved = changed(initial_export(cfgs[name]), exported[name])
        assert moved, name
    assert all(k.startswith("clap.") for k in changed(initial_export(cfgs["audio_bridging"]), exported["audio_bridging"]))

    # image_ldm: its codecs are the debug codecs with the bridged CLAP and both trained autoencoders laid over
    ldm_codecs = load_codecs(cfgs["image_ldm"].task.codecs).state_dict()
    for name in ("image_autoencoder", "audio_autoencoder"):
        assert all(torch.equal(ldm_codecs[k], v) for k, v in exported[name].items()), name
    assert all(torch.equal(ldm_codecs[k], v) for k, v in exported["audio_bridging"].items() if k.startswith("clap."))
    ldm = CoDi.from_pretrained(ckpt["image_ldm"])
    assert changed(initial_export(cfgs["image_ldm"]), dict(ldm.state_dict()))

    # latent alignment started from the ldm export and moved only V + cross-modal attention
    aligned = CoDi.from_pretrained(ckpt["text_image_alignment"]).state_dict()
    moved = set(changed(dict(ldm.state_dict()), dict(aligned)))
    assert moved and moved <= set(alignment_parameter_names(ldm, ("image", "text"))), sorted(moved)[:5]
    assert cfgs["text_image_alignment"].task.codecs == cfgs["image_ldm"].task.codecs

    # distillation: the student started as the ldm export (its teacher) and moved away from it
    student = CoDi.from_pretrained(ckpt["image_distillation"]).state_dict()
    assert changed(dict(ldm.state_dict()), dict(student))
    assert cfgs["image_distillation"].task.init == str(ckpt["image_ldm"])

    again = run_schedule(codi_debug, "codi", str(runs), data=data)
    assert {n: r["status"] for n, r in again.items()} == {n: "skipped" for n in records}
