"""The toy world's four corpora are in the formats the prepare styles read (checked with the styles'
own metadata readers and media lookup, no Ray), deterministic by seed, and cover the world."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import pytest

from pipelines import audioset, laion, media, webvid
from pipelines.config import PrepareConfig
from pipelines.toyworld_av import write_toyworld
from pipelines.toyworld_probes import probe_file, read_video
from pipelines.toyworld_spec import parse_caption

CFG = PrepareConfig()


def digest(root: Path) -> dict[str, str]:
    """Each file's hash; an MP4's over its decoded frames and sound (x264 can code a flat frame's
    blocks in different but equivalent ways from run to run, so its bytes are not reproducible)."""
    def content(path: Path) -> bytes:
        if path.suffix != ".mp4":
            return path.read_bytes()
        frames, fps, wave, rate = read_video(path)
        return frames.tobytes() + wave.tobytes() + f"{fps} {rate}".encode()

    return {str(p.relative_to(root)): hashlib.sha256(content(p)).hexdigest()
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
