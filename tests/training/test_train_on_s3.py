"""The bucket path end to end on a real S3 API (moto on loopback): shards in S3, Ray Train
checkpoints written to S3, and `codiray generate` sampling from the s3:// run."""

from __future__ import annotations

import dataclasses

import boto3
import pytest
from PIL import Image

from codiray.cli import main
from pipelines.config import ImageConfig, PrepareConfig, ShardConfig
from pipelines.laion import prepare_laion
from common.storage import S3Config
from pipelines.toyworld import write_laion_corpus
from training.launch import train
from training.recipes import text_to_image_demo_debug

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.mark.timeout(420)  # prepare + a 3-step 2-worker run + generate (~2 min)
def test_prepare_train_generate_through_s3(ray_local, s3_endpoint, bucket, tmp_path, monkeypatch):
    s3 = S3Config(endpoint_url=s3_endpoint)
    cfg = text_to_image_demo_debug()
    corpus = write_laion_corpus(tmp_path / "raw", num_samples=24, image_size=20, seed=3)
    manifest = prepare_laion(str(corpus["metadata"]), str(corpus["media"]), f"{bucket}/shards",
                             PrepareConfig(image=ImageConfig(size=cfg.model.image_size, min_size=8),
                                           shards=ShardConfig(samples_per_shard=8), s3=s3))
    assert manifest["written"] + manifest["dropped"] == 24 and manifest["written"] > 8

    run = dataclasses.replace(cfg, name="s3run", max_steps=3, checkpoint_every=3, storage_path=f"{bucket}/runs",
                              data=dataclasses.replace(cfg.data, path=f"{bucket}/shards", s3=s3))
    result = train(run)
    assert result.error is None and result.metrics["step"] == 3

    keys = [o["Key"] for o in boto3.client("s3", endpoint_url=s3_endpoint)
            .list_objects_v2(Bucket=bucket[len("s3://"):], Prefix="runs/s3run/")["Contents"]]
    assert "runs/s3run/train_config.yaml" in keys
    checkpoint_files = {k.split("/", 3)[-1] for k in keys if "/checkpoint_" in k}
    assert {"model.safetensors", "model_config.json", "train_state.json",
            "deepspeed/zero_pp_rank_1_mp_rank_00_optim_states.pt"} <= checkpoint_files

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    out = tmp_path / "samples"
    assert main(["generate", "--checkpoint", f"{bucket}/runs/s3run", "--prompt", "a red circle on the left",
                 "--steps", "2", "--out", str(out)]) == 0
    with Image.open(next(out.glob("000-*.png"))) as image:
        assert image.size == (cfg.model.image_size, cfg.model.image_size)
