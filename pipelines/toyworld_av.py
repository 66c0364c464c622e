"""The toy world in motion and sound, and one seeded writer for all four corpus styles.

Video: a coloured shape moving left/right/up/down at a speed on a plain background (H.264 MP4 via
PyAV), with its sound as the audio track. Audio: a tone whose pitch encodes the colour and whose pulse
rate encodes the motion (toyworld_spec.py has the table), as video tracks and as standalone WAVs.

    paths = write_toyworld("/tmp/toy", images=64, videos=16, sounds=16, seed=0)
    # paths["webvid"] == {"metadata": .../webvid/results.csv, "media": .../webvid/videos}, and the same
    # for "laion", "audioset" (+ "labels") and "audiocaps": ready for `codiray prepare STYLE`.
"""

from __future__ import annotations

import csv
import math
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pipelines.toyworld import draw_shape, write_laion_corpus
from pipelines.toyworld_media import encode_video, iso_duration, write_audio
from pipelines.toyworld_spec import (BACKGROUND, COLORS, DIRECTIONS, PITCHES, PULSE_DUTY, PULSE_RAMP_S, RHYTHMS,
                                     SHAPES, SPEEDS, TONE_AMPLITUDE, VIDEO_RADIUS, Clip, Sound)

VIDEO_SIZE = 48        # square frames: the prepare jobs' centre crop then keeps the whole path
VIDEO_FPS = 8.0
VIDEO_SECONDS = 2.0    # one 8-frame clip at CoDi's 4 fps
AUDIO_RATE = 16000     # CoDi's audio rate
SOUND_SECONDS = 2.0


def sample_clip(rng: random.Random) -> Clip:
    return Clip(rng.choice(sorted(COLORS)), rng.choice(SHAPES), rng.choice(sorted(DIRECTIONS)),
                rng.choice(sorted(SPEEDS)))


def sample_sound(rng: random.Random) -> Sound:
    return Sound(rng.choice(sorted(w for w, _ in PITCHES.values())),
                 rng.choice(sorted(w for w, _ in RHYTHMS.values())))


def centre_at(clip: Clip, t: float, seconds: float) -> tuple[float, float]:
    """The shape's centre at time ``t`` (fractions of the frame): a straight path at the clip's speed,
    centred on the frame at mid-clip (so it never leaves the frame for ``seconds`` <= 2.5)."""
    dx, dy = DIRECTIONS[clip.motion]
    travelled = SPEEDS[clip.speed] * (t - seconds / 2)
    return 0.5 + dx * travelled, 0.5 + dy * travelled


def render_frames(clip: Clip, size: int = VIDEO_SIZE, fps: float = VIDEO_FPS,
                  seconds: float = VIDEO_SECONDS) -> np.ndarray:
    """``uint8 (frames, size, size, 3)``: frame ``i`` shows the shape at ``centre_at(i / fps)``."""
    frames = []
    for index in range(int(round(seconds * fps))):
        image = Image.new("RGB", (size, size), BACKGROUND)
        fx, fy = centre_at(clip, index / fps, seconds)
        draw_shape(ImageDraw.Draw(image), clip.shape, clip.color, fx * size, fy * size, VIDEO_RADIUS * size)
        frames.append(np.asarray(image))
    return np.stack(frames)


def pulse_gate(t: np.ndarray, rate: float) -> np.ndarray:
    """1 while a pulse sounds (the first ``PULSE_DUTY`` of each period), 0 between, raised-cosine edges."""
    period = 1.0 / rate
    tau = np.mod(t, period)
    edge = np.clip(np.minimum(tau, PULSE_DUTY * period - tau) / PULSE_RAMP_S, 0.0, 1.0)
    return 0.5 - 0.5 * np.cos(np.pi * edge)


def synth_sound(sound: Sound, seconds: float = SOUND_SECONDS, rate: int = AUDIO_RATE) -> np.ndarray:
    """Mono float32 ``(n,)``: a sine at the pitch's frequency, gated at the rhythm's pulse rate."""
    t = np.arange(int(round(seconds * rate))) / rate
    wave = TONE_AMPLITUDE * np.sin(2 * math.pi * sound.frequency * t) * pulse_gate(t, sound.rate)
    return wave.astype(np.float32)


def write_clip(path: str | Path, clip: Clip, size: int = VIDEO_SIZE, fps: float = VIDEO_FPS,
               seconds: float = VIDEO_SECONDS, audio_rate: int = AUDIO_RATE, with_audio: bool = True) -> Path:
    """One toy video as a file (container from the extension), its sound muxed in as the audio track; the
    same bytes for the same clip in every run (``encode_video(reproducible=True)``)."""
    audio = synth_sound(clip.sound, seconds, audio_rate)[None] if with_audio else None
    return encode_video(path, render_frames(clip, size, fps, seconds), fps, (size, size), audio, audio_rate,
                        reproducible=True)


def write_sound(path: str | Path, sound: Sound, seconds: float = SOUND_SECONDS, rate: int = AUDIO_RATE) -> Path:
    """One toy sound as a file (codec from the extension: .wav is 16-bit PCM)."""
    return write_audio(path, rate=rate, samples=synth_sound(sound, seconds, rate)[None])


def _write_csv(path: Path, columns: list[str], rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows(rows)
    return path


def write_webvid_corpus(root: str | Path, num: int = 16, seed: int = 0, size: int = VIDEO_SIZE,
                        fps: float = VIDEO_FPS, seconds: float = VIDEO_SECONDS) -> dict[str, Path]:
    """WebVid's ``results.csv`` (videoid, contentUrl, duration, page_dir, name) + ``videos/001/<id>.mp4``."""
    root, rng = Path(root), random.Random(f"toyworld:{seed}:webvid")
    media = root / "videos"
    rows = []
    for index in range(num):
        clip, videoid = sample_clip(rng), f"toy{index:06d}"
        write_clip(media / "001" / f"{videoid}.mp4", clip, size, fps, seconds)
        rows.append((videoid, f"https://toyworld.codiray.invalid/{videoid}.mp4", iso_duration(seconds), "001",
                     clip.caption))
    metadata = _write_csv(root / "results.csv", ["videoid", "contentUrl", "duration", "page_dir", "name"], rows)
    return {"metadata": metadata, "media": media}


def audioset_labels() -> list[tuple[str, str]]:
    """The toy world's AudioSet ontology: one (MID, display name) per pitch ("low tone") and rhythm."""
    pitches = [(f"/t/toy_pitch_{w}", f"{w} tone") for w, _ in PITCHES.values()]
    return pitches + [(f"/t/toy_rhythm_{w}", w) for w, _ in RHYTHMS.values()]


def write_audioset_corpus(root: str | Path, num: int = 16, seed: int = 0,
                          seconds: float = SOUND_SECONDS, rate: int = AUDIO_RATE) -> dict[str, Path]:
    """AudioSet's segment CSV (three ``#`` lines, quoted MID lists: pitch then rhythm) beside
    ``class_labels_indices.csv`` under ``meta/``, and ``audio/<YTID>.wav`` (the segment itself)."""
    root, rng = Path(root), random.Random(f"toyworld:{seed}:audioset")
    media, meta = root / "audio", root / "meta"
    lines = ["# Segments csv created by the codiray toy world",
             f"# num_ytids={num}, num_segs={num}, num_unique_labels={len(audioset_labels())}, "
             f"num_positive_labels={2 * num}",
             "# YTID, start_seconds, end_seconds, positive_labels"]
    for index in range(num):
        sound, ytid = sample_sound(rng), f"toy{index:07d}"
        write_sound(media / f"{ytid}.wav", sound, seconds, rate)
        mids = f"/t/toy_pitch_{sound.pitch},/t/toy_rhythm_{sound.rhythm}"
        lines.append(f'{ytid}, 0.000, {seconds:.3f}, "{mids}"')
    meta.mkdir(parents=True, exist_ok=True)
    segments = meta / "balanced_train_segments.csv"
    segments.write_text("\n".join(lines) + "\n", encoding="utf-8")
    labels = _write_csv(meta / "class_labels_indices.csv", ["index", "mid", "display_name"],
                        [(i, mid, name) for i, (mid, name) in enumerate(audioset_labels())])
    return {"metadata": segments, "labels": labels, "media": media}


def write_audiocaps_corpus(root: str | Path, num: int = 16, seed: int = 0,
                           seconds: float = SOUND_SECONDS, rate: int = AUDIO_RATE) -> dict[str, Path]:
    """AudioCaps' ``meta/train.csv`` (audiocap_id, youtube_id, start_time, caption) + ``audio/<youtube_id>.wav``."""
    root, rng = Path(root), random.Random(f"toyworld:{seed}:audiocaps")
    media = root / "audio"
    rows = []
    for index in range(num):
        sound, youtube_id = sample_sound(rng), f"toycap{index:05d}"
        write_sound(media / f"{youtube_id}.wav", sound, seconds, rate)
        rows.append((str(100000 + index), youtube_id, 0, sound.caption))
    metadata = _write_csv(root / "meta" / "train.csv", ["audiocap_id", "youtube_id", "start_time", "caption"], rows)
    return {"metadata": metadata, "media": media}


def write_toyworld(root: str | Path, images: int = 64, videos: int = 16, sounds: int = 16, seed: int = 0,
                   image_size: int = 64, video_size: int = VIDEO_SIZE) -> dict[str, dict[str, Path]]:
    """All four corpora under ``root/<style>`` from one seed; each entry has ``metadata`` and ``media``
    (and ``labels`` for AudioSet) as ``codiray prepare STYLE`` takes them. No row is meant to be
    dropped (LAION's ``punsafe`` stays below every filter), so prepare writes every input."""
    root = Path(root)
    return {
        "laion": write_laion_corpus(root / "laion", num_samples=images, image_size=image_size, seed=seed,
                                    unsafe_fraction=0.0),
        "webvid": write_webvid_corpus(root / "webvid", videos, seed, video_size),
        "audioset": write_audioset_corpus(root / "audioset", sounds, seed),
        "audiocaps": write_audiocaps_corpus(root / "audiocaps", sounds, seed),
    }
