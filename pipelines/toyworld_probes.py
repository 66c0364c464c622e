"""Classical attribute probes for the toy world (no learned models): media in, attribute dict out.

- colour: the peak of the hue histogram of the saturated foreground, nearest colour hue;
- position: the foreground's centroid, nearest position centre;
- shape: from the foreground's moments: an upright triangle's centroid sits 1/6 of its height below
  its box's middle; square and circle are told apart by extent (area / box area: 1 vs pi/4);
- motion and speed: a least-squares line through the per-frame centroids (frame sides per second);
- pitch: the spectral peak, nearest pitch on a log scale;
- rhythm: the pulse period (median interval between successive rising, and falling, envelope edges);
- text: the caption grammar (toyworld_spec.parse_caption).

An attribute a probe cannot decode (a blank image, a still video, a steady tone) is ``None``, which
scores as wrong. The foreground is whatever differs from the background, taken as the median border
colour, so generated images need not reproduce the exact background.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
from PIL import Image

from pipelines.toyworld_spec import (COLORS, DIRECTIONS, PITCHES, POSITIONS, RHYTHMS, SPEEDS, parse_caption)

FOREGROUND_DISTANCE = 80      # summed |RGB - background| above this is foreground
MIN_SATURATION = 0.3          # hue is only read from pixels at least this saturated
MIN_PIXELS = 4                # fewer foreground pixels: nothing is there
SQUARE_EXTENT = 0.89          # extent (area / box area) above this: square (1), below: circle (pi/4)
TRIANGLE_SKEW = 0.065         # centroid this far below the box middle (box heights): triangle (ideal 1/6;
                              # rasterised 9 px triangles lose their tip and measure ~0.1)
MIN_SPEED = 0.5 * min(SPEEDS.values())       # slower than this is standing still
PITCH_BAND = (100.0, 4000.0)  # Hz searched for the spectral peak
ENVELOPE_WINDOW_S = 0.005     # RMS window of the pulse envelope
ENVELOPE_SMOOTH_S = 0.02      # moving average over the envelope (shorter than the 8/s rhythm's 62 ms gaps)
# A pulse starts where the envelope rises above PULSE_ON_DB and ends where it falls below PULSE_OFF_DB (dB
# under its 95th percentile). A pulse's gap is silence (the world's gated tones: -100 dB); a decoded tone
# wobbles inside a pulse (Griffin-Lim's phase, the mel VAE's ripple: down to -15 dB), which must not read as
# more pulses. Chosen on ground truth only: 128 AudioCaps clips of the toy world read 128/128 straight, after
# the toy Griffin-Lim (mel -> wave) and after the demo's mel VAE + Griffin-Lim at -10/-20; at linear 0.6/0.4
# of the level (-4.4/-8 dB, the thresholds before) 128, 119 and 61 of 128.
PULSE_ON_DB, PULSE_OFF_DB = -10.0, -20.0



def hue(rgb: np.ndarray) -> np.ndarray:
    """Hue in turns [0, 1) of float RGB rows (the opponent-axis angle: red 0, green 1/3, blue 2/3)."""
    r, g, b = np.moveaxis(np.asarray(rgb, dtype=np.float64), -1, 0)
    return (np.arctan2(np.sqrt(3) * (g - b), 2 * r - g - b) / (2 * np.pi)) % 1.0


_HUES = {name: float(hue(np.array(rgb))) for name, rgb in COLORS.items()}


def _nearest(value: float, table: dict[str, float], log: bool = False) -> str:
    key = (lambda v: np.log(v)) if log else (lambda v: v)
    return min(table, key=lambda name: abs(key(table[name]) - key(value)))


def background(rgb: np.ndarray) -> np.ndarray:
    """The median colour of the border pixels (of every frame when ``rgb`` is a stack)."""
    rgb = rgb.reshape((-1,) + rgb.shape[-3:])
    border = np.concatenate([rgb[:, 0], rgb[:, -1], rgb[:, :, 0], rgb[:, :, -1]], axis=1)
    return np.median(border.reshape(-1, 3), axis=0)


def foreground(rgb: np.ndarray, bg: np.ndarray) -> np.ndarray:
    return np.abs(rgb.astype(np.float32) - bg).sum(axis=-1) > FOREGROUND_DISTANCE


def colour_of(pixels: np.ndarray) -> str | None:
    """The colour whose hue is nearest the peak of the pixels' hue histogram (36 bins of 10 degrees)."""
    rgb = pixels.reshape(-1, 3).astype(np.float32) / 255
    high, low = rgb.max(axis=1), rgb.min(axis=1)
    saturated = (high > 0.15) & ((high - low) / np.maximum(high, 1e-6) >= MIN_SATURATION)
    if saturated.sum() < MIN_PIXELS:
        return None
    counts, edges = np.histogram(hue(rgb[saturated]), bins=36, range=(0.0, 1.0))
    peak = (edges[counts.argmax()] + edges[counts.argmax() + 1]) / 2
    return min(_HUES, key=lambda name: min(abs(_HUES[name] - peak), 1 - abs(_HUES[name] - peak)))


def shape_features(mask: np.ndarray) -> tuple[float, float] | None:
    """(extent, skew) of a mask from its moments: area over bounding-box area, and how far the
    centroid sits below the box's middle, in box heights (an upright triangle's: 1/6; symmetric: 0)."""
    ys, xs = np.nonzero(mask)
    if ys.size < MIN_PIXELS:
        return None
    top, height = ys.min(), ys.max() - ys.min() + 1
    extent = ys.size / (height * (xs.max() - xs.min() + 1))
    return float(extent), float((ys.mean() + 0.5 - top) / height - 0.5)


def shape_of(mask: np.ndarray) -> str | None:
    """Triangle when the centroid sits low (skew), else square or circle by extent (1 vs pi/4)."""
    features = shape_features(mask)
    if features is None:
        return None
    extent, skew = features
    return "triangle" if skew > TRIANGLE_SKEW else "square" if extent > SQUARE_EXTENT else "circle"


def centroid(mask: np.ndarray) -> tuple[float, float] | None:
    """(x, y) of the mask's centre of mass as fractions of the width and height (pixel centres)."""
    ys, xs = np.nonzero(mask)
    if ys.size < MIN_PIXELS:
        return None
    return (xs.mean() + 0.5) / mask.shape[1], (ys.mean() + 0.5) / mask.shape[0]


def image_attributes(rgb: np.ndarray) -> dict:
    """``uint8 (h, w, 3)`` -> {"colour", "shape", "position"} (each None when undecodable)."""
    mask = foreground(rgb, background(rgb))
    centre = centroid(mask)
    position = None if centre is None else min(
        POSITIONS, key=lambda p: np.hypot(POSITIONS[p][0] - centre[0], POSITIONS[p][1] - centre[1]))
    return {"colour": colour_of(rgb[mask]), "shape": shape_of(mask), "position": position}


def trajectory(frames: np.ndarray, fps: float) -> tuple[float, float] | None:
    """Least-squares velocity (vx, vy) of the foreground centroid, in frame sides per second."""
    masks = foreground(frames, background(frames))
    points = [(i / fps, c) for i, m in enumerate(masks) if (c := centroid(m)) is not None]
    if len(points) < 2:
        return None
    t = np.array([p[0] for p in points])
    xy = np.array([p[1] for p in points])
    return float(np.polyfit(t, xy[:, 0], 1)[0]), float(np.polyfit(t, xy[:, 1], 1)[0])


def video_attributes(frames: np.ndarray, fps: float) -> dict:
    """``uint8 (f, h, w, 3)`` at ``fps`` -> {"colour", "shape", "motion", "speed"}."""
    masks = foreground(frames, background(frames))
    shapes = [s for m in masks if (s := shape_of(m)) is not None]
    velocity = trajectory(frames, fps)
    motion = speed = None
    if velocity is not None and max(abs(v) for v in velocity) >= MIN_SPEED:
        axis = int(abs(velocity[1]) > abs(velocity[0]))
        step = np.sign(velocity[axis])
        motion = next(d for d, v in DIRECTIONS.items() if v[axis] == step)
        speed = _nearest(abs(velocity[axis]), SPEEDS, log=True)
    return {"colour": colour_of(frames[masks]),
            "shape": max(set(shapes), key=shapes.count) if shapes else None,
            "motion": motion, "speed": speed}


def peak_frequency(wave: np.ndarray, rate: int) -> float | None:
    """The frequency (Hz) of the largest Hann-windowed spectrum bin inside ``PITCH_BAND``."""
    if wave.size < 16 or not np.any(wave):
        return None
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(wave.size)))
    freqs = np.fft.rfftfreq(wave.size, 1 / rate)
    band = (freqs >= PITCH_BAND[0]) & (freqs <= min(PITCH_BAND[1], rate / 2))
    return float(freqs[band][spectrum[band].argmax()]) if band.any() else None


def pulse_rate(wave: np.ndarray, rate: int) -> float | None:
    """Pulses per second: 1 / the median interval between successive rising (and falling) edges of the
    RMS envelope (5 ms frames, smoothed over ``ENVELOPE_SMOOTH_S``), in dB under its 95th percentile,
    switched on above ``PULSE_ON_DB`` and off below ``PULSE_OFF_DB`` (hysteresis: a pulse ends in near
    silence; a decoded tone's loudness wobbles inside one). None for a steady or silent signal."""
    hop = max(1, int(round(ENVELOPE_WINDOW_S * rate)))
    frames = wave[: wave.size // hop * hop].reshape(-1, hop)
    envelope = np.sqrt((frames.astype(np.float64) ** 2).mean(axis=1))
    width = max(1, int(round(ENVELOPE_SMOOTH_S / ENVELOPE_WINDOW_S)))
    envelope = np.convolve(envelope, np.ones(width) / width, mode="same")
    level = np.percentile(envelope, 95) if envelope.size else 0.0
    if level <= 1e-4:
        return None
    decibels = 20.0 * np.log10(np.maximum(envelope / level, 1e-12))
    on, edges = bool(decibels[0] > (PULSE_ON_DB + PULSE_OFF_DB) / 2), {1: [], -1: []}
    for index, value in enumerate(decibels):
        if not on and value > PULSE_ON_DB:
            on = True
            edges[1].append(index)
        elif on and value < PULSE_OFF_DB:
            on = False
            edges[-1].append(index)
    intervals = np.concatenate([np.diff(edges[1]), np.diff(edges[-1])])
    if intervals.size == 0:
        return None
    return rate / (hop * float(np.median(intervals)))


def audio_attributes(wave: np.ndarray, rate: int) -> dict:
    """Mono float ``(n,)`` at ``rate`` -> {"pitch", "rhythm"}."""
    frequency, pulses = peak_frequency(wave, rate), pulse_rate(wave, rate)
    pitches = {word: hz for word, hz in PITCHES.values()}
    rhythms = {word: hz for word, hz in RHYTHMS.values()}
    return {"pitch": None if frequency is None else _nearest(frequency, pitches, log=True),
            "rhythm": None if pulses is None else _nearest(pulses, rhythms, log=True)}


def text_attributes(text: str) -> dict:
    """A caption's attributes by the grammar ({} when no grammatical phrase is in it)."""
    return parse_caption(text)


def read_image(path: str | Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def read_video(path: str | Path) -> tuple[np.ndarray, float, np.ndarray | None, int]:
    """Every frame (``uint8 (f, h, w, 3)``), the frame rate, and the first audio track (mono float, its
    rate; None, 0 without one)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or stream.base_rate)
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
    wave, rate = read_audio(path) if _has_audio(path) else (None, 0)
    return frames, fps, wave, rate


def _has_audio(path) -> bool:
    with av.open(str(path)) as container:
        return bool(container.streams.audio)


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """The first audio stream, downmixed to mono float32 by FFmpeg's resampler, at its own rate."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate
        mono = av.AudioResampler(format="flt", layout="mono", rate=rate)
        chunks = [out.to_ndarray().reshape(-1) for frame in container.decode(stream) for out in mono.resample(frame)]
        chunks += [out.to_ndarray().reshape(-1) for out in mono.resample(None)]
    return np.concatenate(chunks).astype(np.float32), rate


def probe_file(modality: str, path: str | Path) -> dict:
    """The attributes of one media file read as ``modality`` (image, video, audio or text)."""
    path = Path(path)
    if modality == "image":
        return image_attributes(read_image(path))
    if modality == "video":
        frames, fps, _, _ = read_video(path)
        return video_attributes(frames, fps)
    if modality == "audio":
        return audio_attributes(*read_audio(path))
    if modality == "text":
        return text_attributes(path.read_text(encoding="utf-8"))
    raise ValueError(f"unknown modality {modality!r} (image, video, audio, text)")
