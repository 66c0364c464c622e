"""Each style end to end on local storage through Ray Data: shards, manifest, ledger reasons, per-stage
reconciliation, determinism, re-run skipping, and the round trip through the reader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from corpora import LAION_BAD, audiocaps_corpus, audioset_corpus, laion_corpus, webvid_corpus
from pipeline_helpers import assert_reconciles, read_ledger, small_config

from pipelines.cli import prepare
from pipelines.reader import read_shards

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpora")
    return {"webvid": webvid_corpus(root / "webvid"), "audioset": audioset_corpus(root / "audioset"),
            "audiocaps": audiocaps_corpus(root / "audiocaps")}


def check_ledger(ledger: dict, expected: dict) -> None:
    assert set(ledger) == set(expected)
    for key, (stage, phrase) in expected.items():
        assert ledger[key][0] == stage, (key, ledger[key])
        assert phrase in ledger[key][1], (key, ledger[key])


def read_all(out: str) -> dict:
    batches = list(read_shards(out).iter_batches(batch_size=1000, batch_format="numpy"))
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def tar_members(out: Path) -> dict[str, bytes]:
    import tarfile

    members = {}
    for tar_path in sorted(out.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for m in tar:
                members[f"{tar_path.name}/{m.name}"] = tar.extractfile(m).read()
    return members


def test_webvid_end_to_end(ray_local, corpora, tmp_path):
    corpus = corpora["webvid"]
    out = str(tmp_path / "out")
    manifest = prepare("webvid", str(corpus["metadata"]), str(corpus["media"]), out, small_config())
    ledger = read_ledger(out)
    check_ledger(ledger, corpus["drops"])
    assert manifest["input"] == corpus["input"] and manifest["written"] == len(corpus["good"])
    assert manifest["samples"] == sum(corpus["good"].values())
    assert_reconciles(manifest, ledger)

    data = read_all(out)
    expected_keys = sorted(f"{v}_{i:03d}" for v, n in corpus["good"].items() for i in range(n))
    assert sorted(data["key"].tolist()) == expected_keys
    assert data["frames"].shape == (len(expected_keys), 4, 32, 32, 3) and data["frames"].dtype == np.uint8
    assert np.array_equal(data["image"], data["frames"][:, 2])
    assert data["audio"].dtype == np.float16 and data["audio"].shape[1] == 8000  # 1 s at 8 kHz
    assert data["mel"].dtype == np.float16 and data["mel"].shape[1] == 16
    has_audio = dict(zip(data["key"].tolist(), data["has_audio"].tolist()))
    assert has_audio["v_mp4_000"] and not has_audio["v_webm_000"]  # the webm was encoded without sound
    caption = dict(zip(data["key"].tolist(), data["caption"].tolist()))
    assert caption["v_mov_001"] == "a portrait quicktime clip"

    meta = json.loads(next(v for k, v in tar_members(Path(out)).items() if k.endswith("v_mp4_001.json")))
    assert meta["start"] == pytest.approx(1.0) and meta["end"] == pytest.approx(2.0)
    assert meta["fps"] == 4.0 and meta["sample_rate"] == 8000 and meta["source"].endswith("v_mp4.mp4")


def test_webvid_is_deterministic_and_skips_done_shards(ray_local, corpora, tmp_path):
    corpus = corpora["webvid"]
    cfg = small_config(concurrency=1)
    first = tmp_path / "a"
    prepare("webvid", str(corpus["metadata"]), str(corpus["media"]), str(first), cfg)
    second = tmp_path / "b"
    prepare("webvid", str(corpus["metadata"]), str(corpus["media"]), str(second), small_config(concurrency=2))
    assert tar_members(first) == tar_members(second)  # same keys, same shards, same bytes
    # a re-run into a complete --out redoes nothing: the committed records are left untouched
    stamps = {p.name: p.stat().st_mtime_ns for p in (first / "_parts").iterdir()}
    manifest = prepare("webvid", str(corpus["metadata"]), str(corpus["media"]), str(first), cfg)
    assert {p.name: p.stat().st_mtime_ns for p in (first / "_parts").iterdir()} == stamps
    assert manifest["written"] == len(corpus["good"])


def test_shards_split_by_sample_count_and_bytes(ray_local, corpora, tmp_path):
    corpus = corpora["webvid"]
    cfg = small_config()
    cfg.shards.max_shard_bytes = 16_000  # less than one 1 s clip (4x32x32x3 frames + image [+ audio, mel])
    out = tmp_path / "out"
    manifest = prepare("webvid", str(corpus["metadata"]), str(corpus["media"]), str(out), cfg)
    assert all(s["samples"] == 1 for s in manifest["shards"])
    assert len(manifest["shards"]) == manifest["samples"] == 6
    assert any("_p1.tar" in s["name"] for s in manifest["shards"])
    for shard in manifest["shards"]:
        assert (out / shard["name"]).stat().st_size == shard["bytes"]


@pytest.mark.parametrize("style", ["audioset", "audiocaps"])
def test_audio_styles_end_to_end(ray_local, corpora, tmp_path, style):
    corpus = corpora[style]
    out = str(tmp_path / "out")
    manifest = prepare(style, str(corpus["metadata"]), str(corpus["media"]), out, small_config())
    ledger = read_ledger(out)
    check_ledger(ledger, corpus["drops"])
    assert_reconciles(manifest, ledger)
    data = read_all(out)
    assert sorted(data["key"].tolist()) == sorted(corpus["good"])
    assert data["audio"].shape == (len(corpus["good"]), 16000) and data["audio"].dtype == np.float16
    assert data["mel"].shape[:2] == (len(corpus["good"]), 16) and data["mel"].dtype == np.float16
    rms = np.sqrt((data["audio"].astype(np.float32)[:, :8000] ** 2).mean(axis=1))
    assert (rms > 0.1).all()  # every segment holds the tone (AudioSet's a_mp3: 1-3 s of a 4 s file)
    captions = dict(zip(data["key"].tolist(), data["caption"].tolist()))
    if style == "audioset":
        assert captions["a_flac"] == "Music, Speech"  # MIDs -> display names, in the row's order
    else:
        assert captions["102"] == "the same tone, another caption"


def test_laion_from_img2dataset_tars_keep_ratio(ray_local, tmp_path):
    corpus = laion_corpus(tmp_path / "laion", as_tars=True)
    cfg = small_config()
    cfg.image.size, cfg.image.resize_mode = 32, "keep_ratio"
    out = str(tmp_path / "out")
    manifest = prepare("laion", str(corpus["metadata"]), str(corpus["media"]), out, cfg)
    rows = pq.read_table(corpus["metadata"]).to_pylist()
    expected = {r["key"]: ("metadata", "punsafe") for r in rows if r["punsafe"] > 0.5}
    expected.update({k: v for k, v in LAION_BAD.items() if k not in expected})
    ledger = read_ledger(out)
    check_ledger(ledger, expected)
    assert_reconciles(manifest, ledger)
    data = read_all(out)
    assert sorted(data["key"].tolist()) == sorted(r["key"] for r in rows if r["key"] not in expected)
    # 64x48 (4:3) -> 32x24 centred: black bars of 4 rows top and bottom
    assert data["image"].shape[1:] == (32, 32, 3)
    assert data["image"][:, :4].max() == 0 and data["image"][:, 4:28].mean() > 100


def test_clip_filter_drops_what_the_model_scores_low(ray_local, tmp_path):
    """Tiny random-init CLIP (no download): the job's drops equal the scores computed here."""
    from pipelines.clipfilter import load_clip, similarities

    corpus = laion_corpus(tmp_path / "laion", num=16)
    unfiltered = str(tmp_path / "all")
    prepare("laion", str(corpus["metadata"]), str(corpus["media"]), unfiltered, small_config())
    data = read_all(unfiltered)
    cfg = small_config()
    cfg.caption.clip.enabled, cfg.caption.clip.tiny_random = True, True
    model, preprocess, tokenizer = load_clip(cfg.caption.clip)
    sims = similarities(model, preprocess, tokenizer, list(data["image"]), data["caption"].tolist())
    cfg.caption.clip.threshold = float(np.median(sims))
    out = str(tmp_path / "filtered")
    manifest = prepare("laion", str(corpus["metadata"]), str(corpus["media"]), out, cfg)
    ledger = read_ledger(out)
    clip_drops = {k for k, (stage, _) in ledger.items() if stage == "clip_score"}
    assert clip_drops == {k for k, s in zip(data["key"].tolist(), sims) if s < cfg.caption.clip.threshold}
    assert 0 < len(clip_drops) < len(sims)
    assert all("CLIP similarity" in ledger[k][1] for k in clip_drops)
    assert_reconciles(manifest, ledger)
