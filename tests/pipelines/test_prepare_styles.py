"""Each style end to end on local storage through Ray Data: shards, manifest, ledger reasons, per-stage
reconciliation, determinism, re-run skipping, and the round trip through the reader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from corpora import LAION_BAD, audiocaps_corpus, audioset_corpus, laion_corpus, webvid_corpus
from pipeline_helpers import assert_reconciles, read_ledger, read_manifest, small_config

from codiray.cli import main as codiray_main
from pipelines.audio import SEGMENT, WHOLE
from pipelines.cli import prepare
from pipelines.reader import read_shards
from pipelines.toyworld_media import write_audio, write_audioset_metadata

pytestmark = [pytest.mark.ray, pytest.mark.slow]


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


@pytest.mark.timeout(180)
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


@pytest.mark.timeout(240)
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


@pytest.mark.timeout(180)
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


@pytest.mark.timeout(180)
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


@pytest.mark.timeout(180)
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


OPENAI_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)  # CLIP's published
OPENAI_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)   # pixel statistics


def independent_similarities(model, images: np.ndarray, captions: list[str], side: int) -> np.ndarray:
    """Cosine similarity computed here, not by the shipped ``similarities()``: PIL bicubic resize of the
    shorter side to the model's input and centre crop, CLIP's mean/std, open_clip's tokenizer, the
    model's raw ``encode_image``/``encode_text`` embeddings and the cosine in numpy."""
    import open_clip
    import torch
    from PIL import Image

    pixels = []
    for image in images:
        pil = Image.fromarray(image)
        scale = side / min(pil.size)
        pil = pil.resize((round(pil.width * scale), round(pil.height * scale)), Image.Resampling.BICUBIC)
        left, top = (pil.width - side) // 2, (pil.height - side) // 2
        array = np.asarray(pil.crop((left, top, left + side, top + side)), dtype=np.float32) / 255.0
        pixels.append(((array - OPENAI_MEAN) / OPENAI_STD).transpose(2, 0, 1))
    with torch.no_grad():
        u = model.encode_image(torch.from_numpy(np.stack(pixels))).numpy().astype(np.float64)
        v = model.encode_text(open_clip.tokenize(captions)).numpy().astype(np.float64)
    return (u * v).sum(-1) / (np.linalg.norm(u, axis=-1) * np.linalg.norm(v, axis=-1))


@pytest.mark.timeout(240)
def test_clip_filter_drops_what_the_model_scores_low(ray_local, tmp_path):
    """Tiny random-init CLIP (no download): the job's scores, its drops and the similarities it writes
    equal a cosine similarity computed independently from the model's embeddings."""
    import re

    from pipelines.clipfilter import load_clip

    corpus = laion_corpus(tmp_path / "laion", num=16)
    unfiltered = str(tmp_path / "all")
    prepare("laion", str(corpus["metadata"]), str(corpus["media"]), unfiltered, small_config())
    data = read_all(unfiltered)
    cfg = small_config()
    cfg.caption.clip.enabled, cfg.caption.clip.tiny_random = True, True
    model = load_clip(cfg.caption.clip)[0]  # the seeded weights every actor loads
    sims = independent_similarities(model, data["image"], data["caption"].tolist(), side=32)
    expected = dict(zip(data["key"].tolist(), sims))
    cfg.caption.clip.threshold = float(np.median(sims))
    out = str(tmp_path / "filtered")
    manifest = prepare("laion", str(corpus["metadata"]), str(corpus["media"]), out, cfg)
    ledger = read_ledger(out)
    clip_drops = {k for k, (stage, _) in ledger.items() if stage == "clip_score"}
    assert clip_drops == {k for k, s in expected.items() if s < cfg.caption.clip.threshold}
    assert 0 < len(clip_drops) < len(sims)
    for key in clip_drops:  # the score in the ledger reason is the independent one
        score = float(re.search(r"CLIP similarity (-?[\d.]+) <", ledger[key][1]).group(1))
        assert score == pytest.approx(expected[key], abs=2e-3)
    kept = [json.loads(v) for k, v in tar_members(Path(out)).items() if k.endswith(".json")]
    assert {m["key"] for m in kept} == set(expected) - clip_drops
    for meta in kept:  # and so is the one written next to each kept sample
        assert meta["clip_similarity"] == pytest.approx(expected[meta["key"]], abs=2e-3)
    assert_reconciles(manifest, ledger)


def audioset_naming_corpus(root: Path) -> dict:
    """One row per naming convention; ids with '_' and '-'; a row whose bare-id file is silent while
    its exact segment file holds the tone; a row with two spellings of its segment (ambiguous)."""
    media = root / "audio"
    write_audio(media / "int_id-1_30.wav", 1.5, 16000, 1)                 # {ytid}_{start}, a 10 s segment file
    write_audio(media / "Ydec-id_2_5.000_15.000.flac", 1.5, 22050, 2)     # Y{ytid}_{start}_{end}
    write_audio(media / "part2/ms_id-3_12000.m4a", 1.5, 44100, 2)         # milliseconds, in a sub-folder
    write_audio(media / "whole_id-4.flac", 4.0, 16000, 1)                 # a whole recording: 1-3 s is cut
    silent = np.zeros((1, 16000 * 3), dtype=np.float32)
    write_audio(media / "pref_id-5.wav", rate=16000, samples=silent)      # the bare id: silent
    write_audio(media / "pref_id-5_0.wav", 1.5, 16000, 1)                 # the exact segment: the tone
    write_audio(media / "amb_id-6_0.wav", 1.5, 16000, 1)
    write_audio(media / "amb_id-6_0.000.wav", 1.5, 16000, 1)
    rows = [("int_id-1", 30.0, 40.0, ["/m/09x0r"]), ("dec-id_2", 5.0, 15.0, ["/m/09x0r"]),
            ("ms_id-3", 12.0, 22.0, ["/m/09x0r"]), ("whole_id-4", 1.0, 3.0, ["/m/09x0r"]),
            ("pref_id-5", 0.0, 10.0, ["/m/09x0r"]), ("amb_id-6", 0.0, 10.0, ["/m/09x0r"])]
    return {**write_audioset_metadata(root / "meta", rows), "media": media}


@pytest.mark.timeout(180)
def test_audioset_naming_conventions_end_to_end(ray_local, tmp_path):
    corpus = audioset_naming_corpus(tmp_path / "corpus")
    out = str(tmp_path / "out")
    manifest = prepare("audioset", str(corpus["metadata"]), str(corpus["media"]), out, small_config())
    ledger = read_ledger(out)
    assert set(ledger) == {"amb_id-6"} and ledger["amb_id-6"][0] == "fetch"
    assert "ambiguous media: 2 files match (amb_id-6_0.000.wav, amb_id-6_0.wav)" in ledger["amb_id-6"][1]
    data = read_all(out)
    assert sorted(data["key"].tolist()) == ["dec-id_2", "int_id-1", "ms_id-3", "pref_id-5", "whole_id-4"]
    rms = np.sqrt((data["audio"].astype(np.float32)[:, :8000] ** 2).mean(axis=1))
    assert (rms > 0.1).all()  # every segment holds the tone: pref_id-5 took its segment file, not the silent one
    assert manifest["notes"]["media naming"] == {"Y{ytid}_{start}_{end}": 1, "{ytid}": 1, "{ytid}_{start}": 3}
    assert manifest["notes"]["audio file holds"] == {SEGMENT: 4, WHOLE: 1}
    assert read_manifest(out)["notes"] == manifest["notes"]


@pytest.mark.timeout(180)
def test_a_job_that_drops_everything_fails_with_one_line(ray_local, tmp_path, capsys):
    corpus = audiocaps_corpus(tmp_path / "corpus")
    empty = tmp_path / "empty_media"
    empty.mkdir()
    out = tmp_path / "out"
    code = codiray_main(["prepare", "audiocaps", "--metadata", str(corpus["metadata"]), "--media", str(empty),
                         "--out", str(out)])
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 1 and len(err.splitlines()) == 1, err  # one line: no Ray Data progress bars either
    assert err.startswith("codiray: error: 4 of 4 inputs dropped at fetch: media file missing (looked for ")
    assert f"under {empty}" in err and f"see {out}/dropped.parquet" in err and "e.g. key 101" in err
    # the shards, ledger and manifest are still written, and the summary lists every stage's top reason
    assert (out / "dropped.parquet").is_file() and (out / "manifest.json").is_file()
    assert len(read_ledger(str(out))) == 7
    summary = captured.out
    assert "prepared 0 of 7 inputs" in summary
    for stage, reason in (("metadata", "start_time is not a number"), ("caption", "caption is"),
                          ("fetch", "media file missing")):
        assert any(stage in line and reason in line for line in summary.splitlines()), (stage, summary)


