"""``codi_debug`` end to end as on a real cluster (the run of the session's ``codiray demo --debug``,
tests/conftest.py): a toy world prepared by the real prepare jobs into an S3 bucket, every CoDi stage
kind trained by Ray Train + DeepSpeed on two data-parallel workers in its DAG on a Ray of three nodes
(the GPU-pool stages on the node with the pool's resource), each stage loading its needs' exports from
the bucket, and a rerun that skips them all."""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from common import storage
from common.config import from_dict
from models.codi import CoDi
from training.config import TrainConfig
from training.orchestrator import run_schedule
from training.schedules import codi_debug
from training.task import build_task, load_codecs
from training.tasks.cascade import load_cascade
from training.tasks.latent_alignment import alignment_parameter_names
from training.tasks.ldm import cross_attention_names, video_layer_names

from ray_nodes import GPU_POOL, L40S

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def at(iso: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(iso)


def stage_cfg(record: dict, s3) -> TrainConfig:
    import yaml

    path = storage.join(record["run_dir"], "train_config.yaml")
    return from_dict(TrainConfig, yaml.safe_load(storage.read_bytes(path, s3)), source=path)


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


@pytest.mark.timeout(1800)  # may pay the session's `codiray demo --debug` run (10-15 min on 2 cores)
def test_codi_debug_trains_every_stage_kind_in_its_dag_and_skips_on_rerun(codi_demo_debug, ray_local):
    out, paths = codi_demo_debug
    data, run, s3 = paths["data"], paths["run"], paths["s3"]
    assert run.startswith("s3://") and all(uri.startswith("s3://") for uri in data.values())
    stages = {r["name"]: r for r in json.loads(storage.read_bytes(storage.join(run, "schedule.json"), s3))["stages"]}
    def local(checkpoint: str) -> Path:
        """A checkpoint's export and rank records, fetched from the bucket once (not its optimizer shards)."""
        assert checkpoint.startswith(run + "/"), checkpoint
        return Path(storage.local_copy(checkpoint, s3, names=(
            "model.safetensors", "codi_config.json", "cascade_config.json", "ranks")))

    assert set(stages) == set(codi_debug().order())
    assert {r["status"] for r in stages.values()} == {"done"}
    assert {r["kind"] for r in stages.values()} == {"autoencoder", "bridging_alignment", "ldm", "latent_alignment",
                                                    "cascade_base", "cascade_ssr", "cascade_tsr", "distillation"}
    overlapping = [(a, b) for a, b in itertools.combinations(stages, 2)
                   if at(stages[a]["started"]) < at(stages[b]["finished"])
                   and at(stages[b]["started"]) < at(stages[a]["finished"])]
    assert len(overlapping) >= 1, "no two stages trained at the same time"
    for name, r in stages.items():  # every stage started after all its needs finished
        assert all(at(r["started"]) >= at(stages[m]["finished"]) for m in r["needs"]), name

    # every stage trained data-parallel on two Ray Train workers: the schedule reserved two, and each of its
    # checkpoints holds both ranks' records (written by the workers themselves): disjoint sample keys, the same
    # weights and optimizer state after the all-reduced steps; over its checkpoints each rank trained on samples
    for name, r in stages.items():
        pool = {L40S: 0.001} if name in GPU_POOL else {}
        assert r["resources"]["num_workers"] == 2 and r["resources"]["per_worker"] == {"CPU": 0.75, **pool}, (name, r)
        checkpoints = [uri for uri in storage.list_dirs(r["run_dir"], s3) if "/checkpoint_" in uri]
        assert r["checkpoint"] in checkpoints, name
        trained = {0: 0, 1: 0}
        for folder in map(local, checkpoints):
            records = {int(p.stem.removeprefix("rank_")): json.loads(p.read_text())
                       for p in (folder / "ranks").glob("rank_*.json")}
            assert set(records) == {0, 1} and {q["world_size"] for q in records.values()} == {2}, (name, folder)
            keys = {rank: [k for keys in q["samples"].values() for k in keys] + q["image_samples"]
                    for rank, q in records.items()}
            assert not set(keys[0]) & set(keys[1]), (name, folder, keys)
            assert records[0]["weights_sha256"] == records[1]["weights_sha256"], (name, folder)
            assert records[0]["optimizer_sha256"] == records[1]["optimizer_sha256"], (name, folder)
            for rank in trained:
                trained[rank] += len(keys[rank])
        # two steps of batch 2 per rank (the video LDM's: one in each of its two phases' checkpoints)
        assert trained == {0: 4, 1: 4}, (name, trained)

    # where Ray placed them (its placement-group and actor tables): the GPU-pool stages' workers (the video
    # LDM's two curriculum phases are two worker groups) on node B, which alone has the pool's resource; the
    # other stages' on both nodes; none on the head
    cluster = paths["cluster"]
    placed = cluster["placements"]
    pool_bundles = [node for bundle, node in placed if L40S in bundle]
    assert len(pool_bundles) == 2 * (len(GPU_POOL) + 1) and set(pool_bundles) == {cluster["B"]}, placed
    assert {node for bundle, node in placed if L40S not in bundle} == {cluster["A"], cluster["B"]}, placed
    assert len(placed) == 2 * (len(stages) + 1)   # two workers a stage (and phase), no retries
    assert cluster["head"] not in cluster["train_workers"] and len(cluster["train_workers"]) == len(placed)

    refused = paths["refused"]
    assert refused["error"] == ("stage 'image_ldm' can never run: it needs 2 worker(s) x {CPU=0.75, "
                                "accelerator_type:H100=0.001} but no node of the cluster holds one worker "
                                "(largest node has CPU=3, accelerator_type:H100=0)"), refused
    assert refused["seconds"] < 30 and refused["placements"] == len(placed) and refused["wrote"] == [], refused

    uri = {n: r["checkpoint"] for n, r in stages.items()}
    ckpt = {n: local(u) for n, u in uri.items()}
    exported = {n: load_file(str(p / "model.safetensors")) for n, p in ckpt.items()}
    cfgs = {n: stage_cfg(r, s3) for n, r in stages.items()}

    # roots: each export differs from its initial weights (two AdamW steps at lr 1e-3)
    roots = ("image_autoencoder", "audio_autoencoder", "vocoder_autoencoder", "text_autoencoder", "clip_pretraining",
             "cascade_base", "cascade_ssr", "cascade_tsr")
    for name in roots:
        moved = changed(initial_export(cfgs[name]), exported[name])
        assert moved, name
    # each bridging stage exports and moves only its piece: CLIP pretraining both CLIP towers, audio bridging
    # CLAP, video bridging CoDi's temporal blocks; the last two aligned to the pretrained CLIP
    clip_moved = changed(initial_export(cfgs["clip_pretraining"]), exported["clip_pretraining"])
    assert all(k.startswith("clip.model.") for k in exported["clip_pretraining"])
    assert any(k.startswith("clip.model.text_model.") for k in clip_moved)
    assert any(k.startswith("clip.model.vision_model.") for k in clip_moved)
    for name, piece in (("audio_bridging", "clap."), ("video_bridging", "clip.temporal.")):
        assert all(k.startswith(piece) for k in exported[name]), name
        assert changed(initial_export(cfgs[name]), exported[name]), name
        aligned_to = load_codecs(cfgs[name].task.codecs, s3).state_dict()
        assert all(torch.equal(aligned_to[k], v) for k, v in exported["clip_pretraining"].items()), name

    # every LDM's codecs: the debug codecs with every autoencoder and bridging piece laid over
    for ldm_name in ("image_ldm", "audio_ldm", "text_ldm"):
        codecs = load_codecs(cfgs[ldm_name].task.codecs, s3).state_dict()
        for name in ("image_autoencoder", "audio_autoencoder", "vocoder_autoencoder", "text_autoencoder",
                     "clip_pretraining", "audio_bridging", "video_bridging"):
            assert all(torch.equal(codecs[k], v) for k, v in exported[name].items()), (ldm_name, name)
    ldms = {n: CoDi.from_pretrained(ckpt[n]) for n in ("image_ldm", "audio_ldm", "text_ldm", "video_ldm")}
    for name, unet in (("image_ldm", "image"), ("audio_ldm", "audio"), ("text_ldm", "text")):
        assert list(ldms[name].unets) == [unet], name
        assert changed(initial_export(cfgs[name]), dict(ldms[name].state_dict())), name

    # the video LDM grew from the image LDM's export, through its two curriculum phases
    assert cfgs["video_ldm"].task.init == uri["image_ldm"]
    # ... and moved its video layers and text cross-attention, nothing else (train: video_layers+cross_attention)
    grown = set(changed(dict(ldms["image_ldm"].state_dict()), dict(ldms["video_ldm"].state_dict())))
    video_layers = video_layer_names(ldms["video_ldm"])
    assert grown & video_layers and grown - video_layers, sorted(grown)[:4]
    assert grown <= video_layers | cross_attention_names(ldms["video_ldm"]), sorted(grown - video_layers)[:4]
    assert [p["name"] for p in stages["video_ldm"]["phases"]] == ["short_low_fps", "full"]
    assert (cfgs["video_ldm"].task.ldm.frames, cfgs["video_ldm"].task.ldm.frame_stride) == (0, 1)  # the last phase's
    # joint image-video training: its second step was a batch of laion images (as 1-frame videos)
    assert cfgs["video_ldm"].data.images == data["laion"]
    assert cfgs["video_ldm"].data.image_fraction == 0.5
    record = json.loads((ckpt["video_ldm"] / "ranks" / "rank_0.json").read_text())
    clips = {k for keys in record["samples"].values() for k in keys}
    assert record["image_samples"] and not set(record["image_samples"]) & clips, record
    # the text VAE and the text LDM: their second step was a batch of audio captions (CoDi's audio->text)
    for name in ("text_autoencoder", "text_ldm"):
        assert (cfgs[name].data.path, cfgs[name].data.images) == (data["laion"], data["audiocaps"]), name
        record = json.loads((ckpt[name] / "ranks" / "rank_0.json").read_text())
        assert record["image_samples"] and any(record["samples"].values()), (name, record)
    assert sorted(cfgs["text_ldm"].task.ldm.condition.weights) == ["audio", "image", "text"]

    # latent alignment: phase 1 starts from the three LDMs merged, each phase moves only its V + cross-attention
    # (the last phase audio's as well as video's: JOINT_VIDEO_AUDIO)
    start = {**{k: v for k, v in ldms["video_ldm"].state_dict().items()},
             **{k: v for n in ("audio_ldm", "text_ldm") for k, v in ldms[n].state_dict().items()}}
    previous, before = "the merged LDMs", start
    for name, trains in (("text_image_alignment", ("image", "text")), ("audio_text_alignment", ("audio",)),
                         ("video_audio_alignment", ("video", "audio"))):
        aligned = CoDi.from_pretrained(ckpt[name])
        state = dict(aligned.state_dict())
        moved = set(changed(before, state))
        assert moved and moved <= set(alignment_parameter_names(aligned, trains)), (name, previous, sorted(moved)[:5])
        for m in trains:                          # every trained UNet's V / connectors moved
            assert moved & set(alignment_parameter_names(aligned, (m,))), (name, m)
        assert cfgs[name].task.codecs == cfgs["image_ldm"].task.codecs, name
        # the LDMs' min-SNR loss weight (DEMO_MIN_SNR_GAMMA) came along with their weights
        assert aligned.config.diffusion.min_snr_gamma == 5.0, name
        previous, before = name, state
    assert cfgs["text_image_alignment"].task.init_parts == {"image": uri["video_ldm"], "audio": uri["audio_ldm"],
                                                            "text": uri["text_ldm"]}

    # distillation of the cascade's base: the student started as the base export (its teacher) and moved away
    # from it; both exports load by folder, the student's as a 4-step base
    assert cfgs["base_distillation"].task.init == uri["cascade_base"]
    assert not changed(initial_export(cfgs["base_distillation"]), exported["cascade_base"])
    assert changed(exported["cascade_base"], exported["base_distillation"])
    base, base_config = load_cascade(str(ckpt["cascade_base"]))
    student, student_config = load_cascade(str(ckpt["base_distillation"]))
    assert cfgs["base_distillation"].task.codecs.path.startswith(run + "/")   # the schedule's codecs, in the bucket
    assert changed(dict(base.state_dict()), dict(student.state_dict()))
    assert student_config == dataclasses.replace(base_config, sampling_steps=4)
    assert cfgs["base_distillation"].task.codecs == cfgs["cascade_base"].task.codecs

    again = run_schedule(codi_debug, "codi", storage.parent(run), data=data, s3=s3)   # on the session's Ray
    assert {n: r["status"] for n, r in again.items()} == {n: "skipped" for n in stages}
