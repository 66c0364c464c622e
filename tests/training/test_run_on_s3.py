"""A CoDi schedule whose storage is ``s3://`` (moto on loopback, no Ray): the codecs folder a toy
schedule writes goes up to the bucket; stage hand-offs (``codecs_from``, ``merge_ldms``, ``from_ldm``)
name ``s3://`` exports and the workers' loaders read them; a run folder in the bucket is a model for
``codiray generate``; the report draws its loss curves from there. Exports are fetched without the
checkpoint's optimizer shards, once per node (``storage.local_copy``)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import boto3
import pytest
import torch
import yaml
from safetensors.torch import save_file

from codiray.report import schedule_section
from common import storage
from common.config import to_dict
from common.storage import S3Config
from models.codecs import Codecs
from models.codi import CoDi, CoDiConfig
from training import recipes_codi as rc
from training.debug_codecs import ensure_debug_codecs
from training.launch import resolve_debug_codecs
from training.run_model import is_run_folder, model_from_run
from training.task import build_task, load_codecs


@pytest.fixture()
def s3(s3_endpoint, monkeypatch, tmp_path):
    monkeypatch.setenv("CODIRAY_CACHE", str(tmp_path / "cache"))
    return S3Config(endpoint_url=s3_endpoint)


def keys(bucket: str, endpoint: str, prefix: str = "") -> list[str]:
    listing = boto3.client("s3", endpoint_url=endpoint).list_objects_v2(Bucket=bucket[len("s3://"):], Prefix=prefix)
    return sorted(o["Key"] for o in listing.get("Contents", []))


def test_local_copy_fetches_a_folder_once_and_only_the_names_asked_for(s3, bucket, tmp_path):
    folder = f"{bucket}/run/checkpoint_1"
    for name, body in {"model.safetensors": b"w", "codi_config.json": b"{}", "codecs/config.json": b"c",
                       "deepspeed/optim_states.pt": b"x" * 1000}.items():
        storage.write_bytes(f"{folder}/{name}", body, s3)

    whole = storage.local_copy(folder, s3)
    export = storage.local_copy(folder, s3, names=("model.safetensors", "codi_config.json", "codecs"))
    assert sorted(p.relative_to(whole).as_posix() for p in Path(whole).rglob("*") if p.is_file()) \
        == ["codecs/config.json", "codi_config.json", "deepspeed/optim_states.pt", "model.safetensors"]
    assert sorted(p.relative_to(export).as_posix() for p in Path(export).rglob("*") if p.is_file()) \
        == ["codecs/config.json", "codi_config.json", "model.safetensors"]
    assert str(tmp_path / "cache") in export and Path(export).name == "checkpoint_1"

    # exports never change in place: a second call is served from the cache, not the store
    boto3.client("s3", endpoint_url=s3.endpoint_url).delete_object(Bucket=bucket[5:], Key="run/checkpoint_1/model.safetensors")
    assert storage.local_copy(folder, s3, names=("model.safetensors", "codi_config.json", "codecs")) == export
    assert (Path(export) / "model.safetensors").read_bytes() == b"w"
    one = storage.local_copy(f"{folder}/codi_config.json", s3)
    assert Path(one).read_bytes() == b"{}" and Path(one).name == "codi_config.json"
    with pytest.raises(FileNotFoundError, match="run/nothing: no such object or folder"):
        storage.local_copy(f"{bucket}/run/nothing", s3)
    assert storage.local_copy(str(tmp_path / "x"), s3) == str(tmp_path / "x")   # local paths as they are
    assert storage.parent(folder) == f"{bucket}/run" and storage.parent("name") == "." and storage.parent("/x") == "/"


def write_stage(local_run, remote_run: str, name: str, cfg, model: CoDi, finished: str) -> dict:
    """A finished stage as launch.train leaves it (train_config.yaml beside a checkpoint holding the export
    and optimizer shards), written locally for upload; its schedule record names the ``s3://`` checkpoint."""
    stage = local_run / name
    model.save_pretrained(stage / "checkpoint_000001")
    (stage / "checkpoint_000001" / "deepspeed").mkdir()
    (stage / "checkpoint_000001" / "deepspeed" / "optim_states.pt").write_bytes(b"x" * 4096)
    (stage / "train_config.yaml").write_text(yaml.safe_dump(to_dict(dataclasses.replace(cfg, name=name))))
    return {"name": name, "kind": cfg.task.kind, "needs": [], "status": "done", "finished": finished,
            "run_dir": f"{remote_run}/{name}", "checkpoint": f"{remote_run}/{name}/checkpoint_000001"}


def test_a_schedule_on_s3_hands_exports_on_and_is_a_model(s3, bucket, tmp_path):
    remote_run = f"{bucket}/runs/codi"
    with_s3 = lambda cfg: dataclasses.replace(  # noqa: E731 — what run_schedule(s3=...) gives every stage
        cfg, storage_path=remote_run, data=dataclasses.replace(cfg.data, s3=s3))

    # the toy codecs a stage on `task.codecs.path: debug` gets: built once, uploaded, weights last
    image_cfg = resolve_debug_codecs(with_s3(rc.ldm("image", "laion", {"text": 1.0})))
    codecs_uri = f"{remote_run}/debug_codecs"
    assert image_cfg.task.codecs.path == codecs_uri
    assert "runs/codi/debug_codecs/model.safetensors" in keys(bucket, s3.endpoint_url, "runs/codi/debug_codecs/")
    assert resolve_debug_codecs(with_s3(rc.ldm("audio", "audiocaps", {"text": 1.0}))).task.codecs.path == codecs_uri
    oracle = Codecs.from_pretrained(ensure_debug_codecs(tmp_path / "oracle_codecs"))   # same seed, written locally
    got = load_codecs(image_cfg.task.codecs, s3)
    assert all(torch.equal(v, got.state_dict()[k]) for k, v in oracle.state_dict().items())

    # three LDM stages and a bridging stage, finished; the run uploaded as launch.train leaves it
    local = tmp_path / "run"
    models = {}
    records = []
    for i, (name, modality, spec) in enumerate([("image_ldm", "image", rc.tiny_image_unet(video=True)),
                                                ("audio_ldm", "audio", rc.tiny_audio_unet()),
                                                ("text_ldm", "text", rc.tiny_text_unet())]):
        torch.manual_seed(10 + i)
        models[modality] = CoDi(CoDiConfig(**{modality: spec}))
        cfg = rc.with_task(with_s3(rc.ldm(modality, "laion", {"text": 1.0})), codecs=image_cfg.task.codecs)
        records.append(write_stage(local, remote_run, name, cfg, models[modality], f"2026-11-22T00:00:0{i}"))
    torch.manual_seed(7)
    clip = {k: torch.randn_like(v) for k, v in oracle.state_dict().items() if k.startswith("clip.")}
    bridging = local / "audio_bridging" / "checkpoint_000001"
    bridging.mkdir(parents=True)
    save_file(clip, str(bridging / "model.safetensors"))
    (local / "audio_bridging" / "train_config.yaml").write_text(yaml.safe_dump(to_dict(rc.bridging("audio", "x"))))
    (local / "image_ldm" / "tensorboard").mkdir()
    (local / "image_ldm" / "tensorboard" / "scalars.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in (1, 2, 3)))
    (local / "schedule.json").write_text(json.dumps({"name": "codi", "stages": records}))
    storage.upload_folder(local, remote_run, s3)
    ckpts = {r["name"]: r["checkpoint"] for r in records}

    # hand-offs name s3:// exports, and the loaders on the workers read them
    bridged = rc.codecs_from(with_s3(rc.ldm("image", "laion", {"text": 1.0})),
                             {"audio_bridging": f"{remote_run}/audio_bridging/checkpoint_000001"})
    assert bridged.task.codecs.overlays == [f"{remote_run}/audio_bridging/checkpoint_000001/model.safetensors"]
    overlaid = load_codecs(dataclasses.replace(bridged.task.codecs, path=codecs_uri), s3).state_dict()
    assert all(torch.equal(overlaid[k], v) for k, v in clip.items())
    merged_cfg = rc.merge_ldms(with_s3(rc.alignment("text_image")), ckpts)
    assert merged_cfg.task.init_parts == {"image": ckpts["image_ldm"], "audio": ckpts["audio_ldm"],
                                          "text": ckpts["text_ldm"]}
    merged = build_task(merged_cfg).make_codi().state_dict()
    for model in models.values():
        assert all(torch.equal(merged[k], v) for k, v in model.state_dict().items())
    aligned = rc.from_ldm(with_s3(rc.alignment("audio_text")), {"image_ldm": ckpts["image_ldm"]})
    assert aligned.task.init == ckpts["image_ldm"] and aligned.task.codecs.path == codecs_uri
    started = build_task(aligned).make_codi().state_dict()
    assert all(torch.equal(started[k], v) for k, v in models["image"].state_dict().items())

    # the run in the bucket is a model: every UNet from its stage, the codecs its stages trained on
    assert is_run_folder(remote_run, s3) and not is_run_folder(f"{bucket}/runs", s3)
    model = model_from_run(remote_run, s3)
    state = model.state_dict()
    for m in models.values():
        assert all(torch.equal(state[k], v) for k, v in m.state_dict().items())
    assert all(torch.equal(model.codecs.state_dict()[k], v) for k, v in oracle.state_dict().items())
    fetched = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert not [p for p in fetched if "deepspeed" in p.parts], "optimizer shards were downloaded"

    # the report reads schedule.json and each stage's loss curve from the bucket
    section = schedule_section(f"{remote_run}/schedule.json", s3)
    assert section.count("<polyline") == 1 and "no losses logged in " + f"{remote_run}/audio_ldm" in section
