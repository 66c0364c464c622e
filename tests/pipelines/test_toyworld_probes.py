"""The toy world's probes recover every attribute of the world's own media — as rendered, as encoded
files (JPEG, H.264 + AAC, WAV), and after the prepare jobs' decode/resize — and are not fooled: a
sample that shows something else is scored as showing something else.

Oracles: the scene each file was drawn from (never the probe's own output), and closed forms
(a sine's frequency, a gate's pulse rate, the shape's path).
"""

from __future__ import annotations

import io
import itertools
import random

import numpy as np
import pytest

from pipelines.audio import decode_segment
from pipelines.config import AudioConfig, ImageConfig, VideoConfig
from pipelines.images import decode_image
from pipelines.toyworld import all_scenes, render_image
from pipelines.toyworld_av import (AUDIO_RATE, VIDEO_FPS, VIDEO_SECONDS, pulse_gate, render_frames, synth_sound,
                                   write_clip, write_sound)
from pipelines.toyworld_probes import (audio_attributes, image_attributes, peak_frequency, probe_file, pulse_rate,
                                       read_audio, read_video, text_attributes, trajectory, video_attributes)
from pipelines.toyworld_spec import (COLORS, DIRECTIONS, PITCHES, RHYTHMS, SHAPES, SPEEDS, Clip, Scene, Sound,
                                     implied, parse_caption)

ALL_CLIPS = [Clip(c, s, d, v) for c, s, d, v in itertools.product(sorted(COLORS), SHAPES, sorted(DIRECTIONS),
                                                                  sorted(SPEEDS))]
ALL_SOUNDS = [Sound(p, r) for (p, _), (r, _) in itertools.product(PITCHES.values(), RHYTHMS.values())]
PREPARE_VIDEO = VideoConfig(size=32, fps=4.0, frames=4, threads=1)   # the prepare tests' small clips
PREPARE_AUDIO = AudioConfig(sample_rate=8000, seconds=10.0)          # resampled, zero-padded to 10 s


def accuracy(pairs) -> float:
    pairs = list(pairs)
    return sum(found == truth for found, truth in pairs) / len(pairs)


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    return {clip: write_clip(root / f"{i:03d}.mp4", clip) for i, clip in enumerate(ALL_CLIPS)}


@pytest.fixture(scope="module")
def sound_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("sounds")
    return {sound: write_sound(root / f"{i:02d}.wav", sound) for i, sound in enumerate(ALL_SOUNDS)}


def test_every_caption_parses_back_to_its_scene():
    for item in [*all_scenes(), *ALL_CLIPS, *ALL_SOUNDS]:
        assert parse_caption(item.caption) == item.attributes(), item.caption
    # AudioSet captions are label names joined by ", " (the toy ontology: "<pitch> tone", "<rhythm>")
    assert parse_caption("Shrill tone, Ticking") == {"pitch": "shrill", "rhythm": "ticking"}
    # generated text is rarely exact: case, spacing and surrounding words do not matter ...
    assert parse_caption("I see  A Red circle ON THE left.") == {"colour": "red", "shape": "circle",
                                                                 "position": "left"}
    # ... but only a whole grammatical phrase counts
    for text in ["red", "a circle on the left", "a purple circle on the left", "a red circle", ""]:
        assert parse_caption(text) == {}, text


def test_links_close_attributes_both_ways():
    clip = ALL_CLIPS[17]
    assert implied({"colour": clip.color, "motion": clip.motion}) == {
        "colour": clip.color, "motion": clip.motion, **clip.sound.attributes()}
    assert implied(clip.sound.attributes()) == {**clip.sound.attributes(), "colour": clip.color,
                                                "motion": clip.motion}


@pytest.mark.parametrize("size", [64, 24])
def test_image_probe_recovers_every_scene_after_jpeg_and_prepare_resize(size):
    pairs = []
    for scene in all_scenes():
        buf = io.BytesIO()
        render_image(scene, size, width=size * 4 // 3).save(buf, format="JPEG", quality=95)
        image = decode_image(buf.getvalue(), ImageConfig(size=size, min_size=8))  # the LAION job's centre crop
        pairs.append((image_attributes(image), scene.attributes()))
    assert accuracy(pairs) == 1.0, [p for p in pairs if p[0] != p[1]]


def test_video_probe_recovers_every_clip_from_the_mp4(clip_files):
    pairs = []
    for clip, path in clip_files.items():
        frames, fps, wave, rate = read_video(path)
        assert fps == VIDEO_FPS and rate == AUDIO_RATE and frames.shape[0] == VIDEO_SECONDS * VIDEO_FPS
        pairs.append(({**video_attributes(frames, fps), **audio_attributes(wave, rate)}, clip.attributes()))
    assert accuracy(pairs) == 1.0, [p for p in pairs if p[0] != p[1]]


def test_video_probe_recovers_every_clip_after_the_webvid_decode(clip_files):
    from pipelines.video import decode_clips

    pairs = []
    for clip, path in clip_files.items():
        clips = decode_clips(str(path), PREPARE_VIDEO, PREPARE_AUDIO)
        assert len(clips) == 2  # two 1 s clips of 4 frames at 4 fps, 32 px, with their audio
        for cut in clips:
            found = {**video_attributes(cut["frames"], cut["fps"]),
                     **audio_attributes(cut["audio"].astype(np.float32), PREPARE_AUDIO.sample_rate)}
            pairs.append((found, clip.attributes()))
    assert accuracy(pairs) == 1.0, [p for p in pairs if p[0] != p[1]]


def test_audio_probe_recovers_every_sound_from_wav_and_after_the_audio_decode(sound_files):
    pairs = []
    for sound, path in sound_files.items():
        pairs.append((audio_attributes(*read_audio(path)), sound.attributes()))
        pairs.append((probe_file("audio", path), sound.attributes()))
        segment = decode_segment(str(path), 0.0, 10.0, PREPARE_AUDIO)["audio"].astype(np.float32)
        pairs.append((audio_attributes(segment, PREPARE_AUDIO.sample_rate), sound.attributes()))
    assert accuracy(pairs) == 1.0, [p for p in pairs if p[0] != p[1]]


def test_probe_numerics_against_closed_forms():
    t = np.arange(2 * AUDIO_RATE) / AUDIO_RATE
    assert peak_frequency(np.sin(2 * np.pi * 523.0 * t), AUDIO_RATE) == pytest.approx(523.0, abs=0.6)
    for rate in (2.0, 3.0, 4.5, 8.0):
        gated = np.sin(2 * np.pi * 700.0 * t) * pulse_gate(t, rate)
        assert pulse_rate(gated, AUDIO_RATE) == pytest.approx(rate, rel=0.03)
        # a decoded tone's loudness wobbles inside its pulses (down to -15 dB): still the gate's rate
        wobble = 1.0 - 0.82 * (0.5 + 0.5 * np.cos(2 * np.pi * 11.0 * t))
        assert pulse_rate(gated * wobble, AUDIO_RATE) == pytest.approx(rate, rel=0.03)
    for clip in ALL_CLIPS[:8]:  # the shape's centre moves SPEEDS[speed] frame sides per second
        vx, vy = trajectory(render_frames(clip, size=64), VIDEO_FPS)
        dx, dy = DIRECTIONS[clip.motion]
        assert (vx, vy) == pytest.approx((dx * SPEEDS[clip.speed], dy * SPEEDS[clip.speed]), abs=0.02)


def test_probes_are_not_fooled():
    rng = random.Random(0)
    for scene in all_scenes():
        other = rng.choice([c for c in COLORS if c != scene.color])
        found = image_attributes(np.asarray(render_image(Scene(other, scene.shape, scene.position))))
        assert found["colour"] == other != scene.color
    for clip in ALL_CLIPS:
        frames = render_frames(clip)
        reversed_motion = video_attributes(frames[::-1], VIDEO_FPS)["motion"]
        assert reversed_motion != clip.motion and DIRECTIONS[reversed_motion] == tuple(
            -v for v in DIRECTIONS[clip.motion])
        # played twice as fast (or half as fast), the shape moves at the other speed
        played = VIDEO_FPS * 2 if clip.speed == "slowly" else VIDEO_FPS / 2
        assert video_attributes(frames, played)["speed"] == ({"slowly", "quickly"} - {clip.speed}).pop()
        assert video_attributes(np.repeat(frames[:1], len(frames), 0), VIDEO_FPS)["motion"] is None  # still
    for sound in ALL_SOUNDS:
        other = Sound(next(w for w, _ in PITCHES.values() if w != sound.pitch), sound.rhythm)
        assert audio_attributes(synth_sound(other), AUDIO_RATE)["pitch"] == other.pitch != sound.pitch
    steady = 0.5 * np.sin(2 * np.pi * 440.0 * np.arange(AUDIO_RATE) / AUDIO_RATE)
    assert audio_attributes(steady, AUDIO_RATE) == {"pitch": "low", "rhythm": None}  # no pulses, no rhythm
    tremolo = steady * (1.0 - 0.82 * (0.5 + 0.5 * np.cos(2 * np.pi * 8.0 * np.arange(AUDIO_RATE) / AUDIO_RATE)))
    assert pulse_rate(tremolo, AUDIO_RATE) is None  # -15 dB dips at 8/s, never silent: not rattling
    blank = np.full((32, 32, 3), 245, np.uint8)
    assert image_attributes(blank) == {"colour": None, "shape": None, "position": None}
    assert audio_attributes(np.zeros(AUDIO_RATE, np.float32), AUDIO_RATE) == {"pitch": None, "rhythm": None}
    assert text_attributes("a nice picture") == {}
