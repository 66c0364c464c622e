"""The toy world's four corpora are in the formats the prepare styles read (checked with the styles'
own metadata readers and media lookup, no Ray), deterministic by seed, and cover the world."""

from __future__ import annotations

import csv
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import audioset, laion, media, webvid
from pipelines.config import PrepareConfig
from pipelines.toyworld_av import write_toyworld
from pipelines.toyworld_probes import probe_file
from pipelines.toyworld_spec import parse_caption

CFG = PrepareConfig()


def digest(root: Path) -> dict[str, str]:
    """Each file's hash, over its bytes (the clips too: ``write_clip`` encodes reproducibly)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    return root, write_toyworld(root, images=12, videos=6, sounds=6, seed=1, image_size=32)


def rows_of(style: str, paths: dict) -> list[dict]:
    metadata = str(paths["metadata"])
    if style == "laion":
        return laion.read_metadata(metadata, CFG)
    if style == "webvid":
        return webvid.read_metadata(metadata, CFG)
    return audioset.read_audioset(metadata, CFG) if style == "audioset" else audioset.read_audiocaps(metadata, CFG)


CAPTION = {"laion": "TEXT", "webvid": "name", "audioset": "_caption", "audiocaps": "caption"}
CANDIDATES = {"laion": lambda r: media.simple_candidates([r["key"]], "{key}"), "webvid": webvid.media_candidates(CFG),
              "audioset": audioset.media_candidates("audioset", CFG),
              "audiocaps": audioset.media_candidates("audiocaps", CFG)}
EXTENSIONS = {"laion": media.IMAGE_EXTENSIONS, "webvid": media.VIDEO_EXTENSIONS, "audioset": media.AUDIO_EXTENSIONS,
              "audiocaps": media.AUDIO_EXTENSIONS}
MODALITY = {"laion": "image", "webvid": "video", "audioset": "audio", "audiocaps": "audio"}


@pytest.mark.parametrize("style", ["laion", "webvid", "audioset", "audiocaps"])
def test_each_corpus_reads_with_its_style_and_its_media_show_their_captions(world, style):
    _, corpora = world
    paths = corpora[style]
    rows = media.attach(rows_of(style, paths), media.index_media(str(paths["media"])), CANDIDATES[style],
                        str(paths["media"]))
    assert len(rows) == {"laion": 12}.get(style, 6)
    assert len({r["key"] for r in rows}) == len(rows)
    for row in rows:
        truth = parse_caption(row[CAPTION[style]])
        assert truth, row[CAPTION[style]]
        uri, _ = media.lookup(row, EXTENSIONS[style])
        found = probe_file(MODALITY[style], uri)
        if style == "webvid":  # the video's sound track carries the pitch and rhythm
            found.update(probe_file("audio", uri))
        assert found == {k: v for k, v in truth.items() if k in found} and set(found) <= set(truth)
        if style == "webvid":
            assert set(found) == set(truth)  # colour, shape, motion, speed, pitch, rhythm


def test_the_world_is_deterministic_by_seed(world, tmp_path):
    root, _ = world
    write_toyworld(tmp_path / "same", images=12, videos=6, sounds=6, seed=1, image_size=32)
    write_toyworld(tmp_path / "other", images=12, videos=6, sounds=6, seed=2, image_size=32)
    assert digest(tmp_path / "same") == digest(root)
    other = digest(tmp_path / "other")
    assert set(other) == set(digest(root)) and other != digest(root)


WRITE_CLIPS = """
import hashlib, sys
from pathlib import Path
from pipelines.toyworld_av import write_toyworld
media = write_toyworld(sys.argv[1], images=512, videos=int(sys.argv[2]), sounds=0, image_size=48)["webvid"]["media"]
print(" ".join(hashlib.sha256(p.read_bytes()).hexdigest()[:12] for p in sorted(Path(media).rglob("*.mp4"))))
"""


def test_the_clips_are_the_same_bytes_in_every_process(tmp_path):
    """x264's assembly wrote some clips as other streams in some processes: on a 2-core AVX-512 Xeon, after
    the world's images, 1-12 of 256 clips, decoding up to 34 levels apart, so two demo runs of one seed
    trained on different data. With x264's C code every process writes the same bytes. (With the
    assembly, this test failed 4 times in 4; with the C code it passed 6 times in 6.)"""
    runs = [subprocess.Popen([sys.executable, "-c", WRITE_CLIPS, str(tmp_path / f"run{i}"), "128"],
                             stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
            for i in range(4)]
    hashes = [run.communicate(timeout=120)[0].split() for run in runs]
    assert all(run.returncode == 0 for run in runs) and len(hashes[0]) == 128
    differing = [[i for i, (a, b) in enumerate(zip(hashes[0], other)) if a != b] for other in hashes[1:]]
    assert differing == [[], [], []], f"clips written differently in another process: {differing}"


def test_a_larger_world_covers_every_value(tmp_path):
    corpora = write_toyworld(tmp_path, images=0, videos=48, sounds=24, seed=0, video_size=16)
    seen: dict[str, set] = {}
    for path, column in [(corpora["webvid"]["metadata"], "name"), (corpora["audiocaps"]["metadata"], "caption")]:
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                for key, value in parse_caption(row[column]).items():
                    seen.setdefault(key, set()).add(value)
    assert {k: len(v) for k, v in seen.items()} == {"colour": 4, "shape": 3, "motion": 4, "speed": 2,
                                                    "pitch": 4, "rhythm": 4}
