"""The schedule engine on a Ray cluster of three nodes on this machine (tests/ray_nodes.py): a head
that runs no stage workers (0 CPUs), node A with plain CPUs and node B carrying the custom resource
``accelerator_type:L40S`` that GPU-pool stages request (``scaling.worker.accelerator_type``): a stage
that fits no node is refused before anything is placed, per-stage resources place stages on their
nodes, and data and storage named relative to the driver's folder reach every node. Storage here is
one local folder (every node runs on this machine); ``codi_debug`` runs on such a cluster with S3
storage in the session's demo run (tests/conftest.py, asserted in test_schedule_codi.py).
"""

from __future__ import annotations

import datetime
import json
import time
from pathlib import Path

import pytest
import torch
import yaml

from common.errors import UsageError
from models.text_to_image import TextToImageDiffuser
from pipelines.config import ImageConfig, PrepareConfig, ShardConfig
from pipelines.laion import prepare_laion
from pipelines.toyworld import write_laion_corpus
from ray_nodes import L40S, placements, ray_nodes, train_worker_nodes
from training.orchestrator import run_schedule
from training.schedules import engine_debug, one_worker_t2i_debug

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def at(iso: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(iso)


@pytest.fixture()
def three_nodes():
    """Head (0 CPUs), node A (4 CPUs), node B (2 CPUs + L40S); the driver connected to the head."""
    with ray_nodes({"num_cpus": 4}, {"num_cpus": 2, "resources": {L40S: 1}}) as nodes:
        yield {"head": nodes["head"], "A": nodes["nodes"][0], "B": nodes["nodes"][1]}


@pytest.mark.timeout(600)  # 71-127 s measured on the shared 2-core machine
def test_engine_debug_on_three_nodes_places_the_l40s_stage_on_its_node_and_shares_storage(three_nodes, tmp_path, monkeypatch):
    nodes = three_nodes
    cfg = one_worker_t2i_debug()
    corpus = write_laion_corpus(tmp_path / "raw", num_samples=24, image_size=20, seed=3)
    shards = str(tmp_path / "shards")
    prepare_laion(str(corpus["metadata"]), str(corpus["media"]), shards,
                  PrepareConfig(image=ImageConfig(size=cfg.model.image_size, min_size=8), shards=ShardConfig(samples_per_shard=8)))
    # The driver moves to tmp_path after the nodes started (their tasks work in the old folder) and
    # names data and storage relative to it: the schedule must hand its stages paths valid on every node.
    monkeypatch.chdir(tmp_path)
    data = {"laion": "shards"}
    steps = ["max_steps=2", "checkpoint_every=2", "log_every=1"]

    # An accelerator no node has: one line before anything is placed or written.
    refused = tmp_path / "refused"
    began = time.monotonic()
    with pytest.raises(UsageError) as err:
        run_schedule(engine_debug, "exp", "refused", data=data,
                     overrides=[*steps, "b:scaling.worker.accelerator_type=H100"])
    assert time.monotonic() - began < 30
    assert str(err.value).startswith("stage 'b' can never run: it needs 1 worker(s) x "
                                     "{CPU=1, accelerator_type:H100=0.001} but no node of the cluster holds one worker")
    assert not refused.exists() and placements() == []

    # a asks for 3 CPUs (only node A has them); b for the L40S resource (only node B has it); c is
    # plain. Each node keeps a CPU free for Ray Data's reads.
    runs = tmp_path / "runs"
    records = run_schedule(engine_debug, "exp", "runs", data=data,
                           overrides=[*steps, "a:scaling.worker.cpus=3", "b:scaling.worker.accelerator_type=L40S"])
    assert [r["status"] for r in records.values()] == ["done"] * 3, records
    for stage in ("a", "b", "c"):  # what each stage's task was handed (launch.train saves it first)
        assert yaml.safe_load((runs / "exp" / stage / "train_config.yaml").read_text())["data"]["path"] == shards

    placed = placements()
    on = {"a": [n for b, n in placed if b.get("CPU") == 3],
          "b": [n for b, n in placed if L40S in b],
          "c": [n for b, n in placed if b.get("CPU") == 1 and L40S not in b]}
    print("placement:", {s: [name for name, i in nodes.items() if i in ids] for s, ids in on.items()})
    assert len(placed) == 3, placed  # one single-worker group per stage, no retries
    assert on["a"] == [nodes["A"]] and on["b"] == [nodes["B"]], (on, nodes)
    assert on["b"][0] != on["a"][0] and on["c"][0] in (nodes["A"], nodes["B"])
    assert on["b"] == [n for b, n in placed if b.get(L40S) == 0.001]  # the bundle asked for exactly the marker
    workers = train_worker_nodes()
    assert sorted(workers) == sorted([on["a"][0], on["b"][0], on["c"][0]]), (workers, nodes)
    assert nodes["head"] not in workers

    record = json.loads((runs / "exp" / "schedule.json").read_text())
    stages = {r["name"]: r for r in record["stages"]}
    a, b, c = stages["a"], stages["b"], stages["c"]
    assert b["resources"]["per_worker"] == {"CPU": 1.0, L40S: 0.001}
    assert a["resources"]["per_worker"] == {"CPU": 3.0}
    # a (node A) and b (node B) trained at the same time; c only after both
    assert at(a["started"]) < at(b["finished"]) and at(b["started"]) < at(a["finished"])
    assert at(c["started"]) >= max(at(a["finished"]), at(b["finished"]))

    # Workers on A and on B wrote into the one shared storage folder; every checkpoint loads and trained.
    torch.manual_seed(cfg.seed)  # the loop's initial weights
    init = dict(TextToImageDiffuser(cfg.model).unet.named_parameters())
    for r in (a, b, c):
        checkpoint = Path(r["checkpoint"])
        assert checkpoint.parent == runs / "exp" / r["name"]
        assert json.loads((checkpoint / "ranks" / "rank_0.json").read_text())["step"] == 2
        trained = dict(TextToImageDiffuser.from_pretrained(checkpoint).unet.named_parameters())
        changed = [n for n in init if not torch.equal(init[n], trained[n])]
        assert {"conv_in.weight", "out.2.weight"} <= set(changed), changed
        assert r["metrics"]["step"] == 2
