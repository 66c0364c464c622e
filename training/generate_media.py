"""Media in and out of `codiray generate`: reading prompt files, writing PNG / MP4 / WAV / TXT and a contact sheet.

Inputs are read into the layouts ``Codecs.condition`` takes (image uint8 ``h w 3``, video uint8
``f h w 3``, audio float32 mono at 16 kHz, text str); an unreadable file is one ``UsageError``
naming it. Outputs: PNG per image, H.264 MP4 per video (with the audio muxed in when given), 16 kHz
16-bit WAV per audio, UTF-8 TXT per text, and one contact sheet (a row per sample).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import av
import numpy as np
from PIL import Image, ImageDraw

from common.errors import UsageError
from pipelines.toyworld_media import encode_video, write_audio

SAMPLE_RATE = 16000   # CoDi's audio rate in and out (AudioLDM)
TILE = 96             # contact-sheet tile height in pixels
INPUT_MODALITIES = ("text", "image", "audio", "video")


def read_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except Exception as err:  # PIL raises many types for unreadable files
        raise UsageError(f"--input image={path}: cannot read image ({type(err).__name__}: {err})") from None


def read_audio(path: Path, rate: int = SAMPLE_RATE) -> np.ndarray:
    """The first audio stream as mono float32 at ``rate`` (FFmpeg's resampler)."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise ValueError("no audio stream")
            resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
            chunks = [out.to_ndarray().reshape(-1) for frame in container.decode(container.streams.audio[0])
                      for out in resampler.resample(frame)]
            chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    except Exception as err:
        raise UsageError(f"--input audio={path}: cannot read audio ({type(err).__name__}: {err})") from None
    if not chunks or sum(len(c) for c in chunks) == 0:
        raise UsageError(f"--input audio={path}: no audio samples")
    return np.concatenate(chunks).astype(np.float32)


def read_video(path: Path, frames: int) -> np.ndarray:
    """``frames`` evenly spaced RGB frames (uint8 ``f h w 3``) of the first video stream."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError("no video stream")
            decoded = [f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])]
    except Exception as err:
        raise UsageError(f"--input video={path}: cannot read video ({type(err).__name__}: {err})") from None
    if not decoded:
        raise UsageError(f"--input video={path}: no video frames")
    index = np.linspace(0, len(decoded) - 1, min(frames, len(decoded))).round().astype(int)
    return np.stack([decoded[i] for i in index])


def read_input(modality: str, value: str, frames: int = 8):
    """One prompt in the layout ``Codecs.condition`` takes (text is the string itself)."""
    if modality == "text":
        return value
    path = Path(value).expanduser()
    if not path.is_file():
        raise UsageError(f"--input {modality}={value}: file not found")
    if modality == "image":
        return read_image(path)
    if modality == "audio":
        return read_audio(path)
    if modality == "video":
        return read_video(path, frames)
    raise UsageError(f"--input {modality}=...: unknown modality (one of {', '.join(INPUT_MODALITIES)})")


def even(frames: np.ndarray) -> np.ndarray:
    """Pad ``… h w 3`` frames by edge replication to even sides (H.264's 4:2:0 needs them)."""
    h, w = frames.shape[-3:-1]
    pad = [(0, 0)] * (frames.ndim - 3) + [(0, h % 2), (0, w % 2), (0, 0)]
    return np.pad(frames, pad, mode="edge") if h % 2 or w % 2 else frames


def write_png(path: Path, image: np.ndarray) -> Path:
    Image.fromarray(image).save(path)
    return path


def full_scale(wave: np.ndarray) -> np.ndarray:
    """A float waveform within [−1, 1] for PCM or AAC: divided by its peak where that exceeds 1, else as
    it is. A generated mel can decode louder than full scale (in the demo's text->video+audio files of
    session 13, 11-14 % of the samples lay past ±1); clipping them squares off the tone."""
    wave = np.asarray(wave, dtype=np.float32)
    peak = float(np.abs(wave).max(initial=0.0))
    return wave / peak if peak > 1.0 else wave


def write_wav(path: Path, wave: np.ndarray, rate: int = SAMPLE_RATE) -> Path:
    """16-bit PCM mono WAV of a float waveform (scaled into [−1, 1] by ``full_scale``)."""
    return write_audio(path, rate=rate, samples=full_scale(wave)[None])


def write_mp4(path: Path, video: np.ndarray, fps: float, audio: Optional[np.ndarray] = None,
              rate: int = SAMPLE_RATE) -> Path:
    """H.264 MP4 of uint8 ``f h w 3`` frames; with ``audio`` (mono float) muxed in as AAC."""
    frames = even(video)
    track = None if audio is None else full_scale(audio)[None]
    return encode_video(path, list(frames), fps, (frames.shape[2], frames.shape[1]), audio=track, audio_rate=rate)


def write_txt(path: Path, text: str) -> Path:
    path.write_text(text + "\n", encoding="utf-8")
    return path


# ---- contact sheet --------------------------------------------------------------------------------

def fit(image: np.ndarray, height: int = TILE) -> Image.Image:
    h, w = image.shape[:2]
    return Image.fromarray(image).resize((max(1, round(w * height / h)), height), Image.NEAREST)


def spectrogram(wave: np.ndarray, height: int = TILE, width: int = 2 * TILE) -> np.ndarray:
    """A log-magnitude spectrogram as a grey uint8 image (low frequencies at the bottom)."""
    n_fft = 256
    wave = np.pad(wave.astype(np.float64), (0, max(0, n_fft - len(wave))))
    hop = max(1, (len(wave) - n_fft) // max(1, width - 1))
    starts = range(0, len(wave) - n_fft + 1, hop)
    frames = np.stack([wave[s:s + n_fft] * np.hanning(n_fft) for s in starts])
    mag = np.log10(np.abs(np.fft.rfft(frames, axis=1)) + 1e-6).T[::-1]
    span = mag.max() - mag.min()
    grey = ((mag - mag.min()) / (span if span > 0 else 1.0) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(grey).resize((width, height)).convert("RGB"))


def text_tile(text: str, width: int = 3 * TILE, height: int = TILE) -> Image.Image:
    tile = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(tile)
    words, lines, line = text.split(), [], ""
    for word in words:
        if len(line) + len(word) + 1 > width // 7 and line:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    for i, row in enumerate(lines[: height // 12]):
        draw.text((4, 4 + 12 * i), row, fill="black")
    return tile


def sample_tiles(sample: dict, max_frames: int = 8) -> list[Image.Image]:
    """One sample's tiles: its inputs (text, image) then its outputs."""
    tiles = []
    for modality, value in sample.items():
        if modality == "image":
            tiles.append(fit(value))
        elif modality == "video":
            index = np.linspace(0, len(value) - 1, min(max_frames, len(value))).round().astype(int)
            tiles += [fit(value[i]) for i in index]
        elif modality == "audio":
            tiles.append(Image.fromarray(spectrogram(value)))
        elif modality == "text":
            tiles.append(text_tile(value))
    return tiles


def contact_sheet(rows: list[dict], path: Path, gap: int = 4) -> Path:
    """One PNG, a row per sample: ``rows[i]`` maps a label/modality to the decoded data."""
    tiled = [sample_tiles(row) for row in rows]
    width = max((sum(t.width + gap for t in tiles) for tiles in tiled), default=TILE) + gap
    sheet = Image.new("RGB", (width, len(tiled) * (TILE + gap) + gap), (230, 230, 230))
    for r, tiles in enumerate(tiled):
        x = gap
        for tile in tiles:
            sheet.paste(tile, (x, gap + r * (TILE + gap)))
            x += tile.width + gap
    sheet.save(path)
    return path
