"""A prepared --out belongs to one plan (inputs + settings): re-running the same plan resumes, a
different one is refused with one line, and shard records are checked key by key."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from common.errors import CodirayError, JobFailed
from pipelines import shards
from pipelines.config import ImageConfig, PrepareConfig, ShardConfig
from pipelines.laion import prepare_laion
from pipelines.toyworld import write_laion_corpus

@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_same_plan_resumes_and_other_plan_is_refused(ray_local, tmp_path):
    corpus = write_laion_corpus(tmp_path / "raw", num_samples=12, image_size=24, seed=5)
    cfg = PrepareConfig(image=ImageConfig(size=16, min_size=8), shards=ShardConfig(samples_per_shard=4))
    out = str(tmp_path / "out")
    first = prepare_laion(str(corpus["metadata"]), str(corpus["media"]), out, cfg)
    again = prepare_laion(str(corpus["metadata"]), str(corpus["media"]), out, cfg)
    assert again == first

    bigger = replace(cfg, image=ImageConfig(size=20, min_size=8))
    with pytest.raises(CodirayError, match="already holds shards prepared from other inputs or settings"):
        prepare_laion(str(corpus["metadata"]), str(corpus["media"]), out, bigger)
    more = write_laion_corpus(tmp_path / "raw2", num_samples=14, image_size=24, seed=5)
    with pytest.raises(CodirayError, match="already holds shards"):
        prepare_laion(str(more["metadata"]), str(more["media"]), out, cfg)


def test_a_record_that_does_not_account_for_its_keys_fails_the_job(tmp_path):
    out = str(tmp_path)
    record = shards.ShardRecord("shard-000000", ["a", "b", "c"], written=["a", "b"])
    record.drop("b", "decode", "x")  # written AND dropped
    shards.commit_shard(out, record, [])
    with pytest.raises(JobFailed, match="do not account for exactly the keys"):
        shards.finalize(out, 3, "laion", planned={"shard-000000": ["a", "b", "c"]})
    with pytest.raises(JobFailed, match="do not match this run's plan"):
        shards.finalize(out, 3, "laion", planned={"shard-000001": ["a", "b", "c"]})
    good = shards.ShardRecord("shard-000000", ["a", "b", "c"], written=["a", "b"])
    good.drop("c", "decode", "x")
    shards.commit_shard(out, good, [])
    manifest = shards.finalize(out, 3, "laion", planned={"shard-000000": ["a", "b", "c"]})
    assert (manifest["written"], manifest["dropped"]) == (2, 1)
    assert json.loads((tmp_path / "manifest.json").read_text())["input"] == 3
