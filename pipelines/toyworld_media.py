"""Real, small media for tests and the benchmark, encoded with PyAV (no downloads, deterministic).

Videos show a toy-world shape moving left to right over a frame-numbered gradient, so a decoded
frame's content tells which source frame it was; audio is a sine whose pitch is known, so resampling
and alignment can be checked. Writers for the three corpus styles' metadata are here as well.

    write_video("a.mp4", seconds=3, fps=30, size=(64, 48), codec="libx264", audio_codec="aac")
    write_webvid_corpus(root, [VideoSpec("v1", ...), ...])  # -> results.csv + videos/<page_dir>/<id>.mp4
"""

from __future__ import annotations

import csv
import fractions
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import av
import numpy as np

# container by extension -> (default video codec, default audio codec, pixel format)
CONTAINERS = {
    ".mp4": ("libx264", "aac", "yuv420p"),
    ".mov": ("libx264", "aac", "yuv420p"),
    ".mkv": ("mpeg4", "libopus", "yuv420p"),
    ".webm": ("libvpx", "libopus", "yuv420p"),
    ".avi": ("mjpeg", "libmp3lame", "yuvj420p"),
}
AUDIO_CODECS = {".wav": "pcm_s16le", ".flac": "flac", ".ogg": "vorbis", ".mp3": "libmp3lame",
                ".m4a": "aac", ".opus": "libopus"}


_TEXTURES: dict = {}


def _texture(width: int, height: int) -> np.ndarray:
    """A fixed noise pattern (seeded) twice the frame's width, scrolled to give the codec real work."""
    if (width, height) not in _TEXTURES:
        rng = np.random.default_rng(0)
        small = rng.integers(0, 256, (height // 4 + 1, width // 2 + 1, 3), dtype=np.uint8)
        _TEXTURES[(width, height)] = np.repeat(np.repeat(small, 4, 0), 4, 1)[:height, : 2 * width]
    return _TEXTURES[(width, height)]


def frame_image(index: int, width: int, height: int, fps: float, textured: bool = False) -> np.ndarray:
    """RGB frame ``index``: background brightness encodes the time, a red square moves with it.

    ``textured`` scrolls a noise pattern under it: benchmark files then cost what real footage costs
    to decode, where a flat background would make decoding unrealistically cheap.
    """
    t = index / fps
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[...] = (int(40 + 50 * t) % 256, 120, 200)
    if textured:
        shift = (2 * index) % width
        image = (image // 2 + _texture(width, height)[:, shift:shift + width] // 2).astype(np.uint8)
    side = max(2, min(width, height) // 4)
    x = int((width - side) * ((t % 2.0) / 2.0))
    y = (height - side) // 2
    image[y:y + side, x:x + side] = (230, 30, 30)
    return image


def tone(seconds: float, rate: int, channels: int, freq: float = 440.0) -> np.ndarray:
    """A ``(channels, samples)`` float32 sine at ``freq`` Hz, 0.5 amplitude (channel i at freq*(i+1))."""
    t = np.arange(int(round(seconds * rate))) / rate
    return np.stack([0.5 * np.sin(2 * np.pi * freq * (c + 1) * t) for c in range(channels)]).astype(np.float32)


def _add_audio_stream(container, codec: str, rate: int, channels: int):
    stream = container.add_stream(codec, rate=rate)
    if codec == "vorbis":  # FFmpeg's native Vorbis encoder is marked experimental
        stream.codec_context.options = {"strict": "experimental"}
    stream.layout = "mono" if channels == 1 else "stereo"
    return stream


def _encode_audio(container, stream, samples: np.ndarray, rate: int) -> None:
    """Encode float samples via a resampler to whatever the encoder accepts (s16, fltp, ...)."""
    layout = "mono" if samples.shape[0] == 1 else "stereo"
    fmt = stream.codec_context.format.name if stream.codec_context.format else "fltp"
    resampler = av.AudioResampler(format=fmt, layout=layout, rate=rate)
    block = 1024
    for start in range(0, samples.shape[1], block):
        chunk = np.ascontiguousarray(samples[:, start:start + block])
        frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
        frame.sample_rate = rate
        frame.pts = start
        frame.time_base = fractions.Fraction(1, rate)
        for out in resampler.resample(frame):
            container.mux(stream.encode(out))
    for out in resampler.resample(None):
        container.mux(stream.encode(out))
    container.mux(stream.encode(None))


def write_video(path: str | Path, seconds: float = 3.0, fps: float = 30.0, size: tuple[int, int] = (64, 48),
                codec: Optional[str] = None, audio_codec: Optional[str] = "default", audio_rate: int = 44100,
                audio_channels: int = 2, textured: bool = False) -> Path:
    """Encode a test video; container from the extension, ``audio_codec=None`` for no audio track."""
    width, height = size
    frames = (frame_image(index, width, height, fps, textured) for index in range(int(round(seconds * fps))))
    if audio_codec == "default":
        audio_codec = CONTAINERS[Path(path).suffix][1]
    audio_rate = 48000 if audio_codec and "opus" in audio_codec else audio_rate  # Opus only runs at 48 kHz
    samples = tone(seconds, audio_rate, audio_channels) if audio_codec is not None else None
    return encode_video(path, frames, fps, size, samples, audio_rate, codec, audio_codec)


def encode_video(path: str | Path, frames, fps: float, size: tuple[int, int],
                 audio: Optional[np.ndarray] = None, audio_rate: int = 16000, codec: Optional[str] = None,
                 audio_codec: Optional[str] = "default", reproducible: bool = False) -> Path:
    """Encode RGB ``frames`` (uint8 ``h w 3`` each, any iterable) at ``fps``, with ``audio`` (float
    ``(channels, n)`` at ``audio_rate``) muxed in when given; container and codecs from the extension.

    ``reproducible``: the same frames give the same bytes in every process. x264's assembly does not
    guarantee that. On a 2-core Intel Xeon (AVX-512), processes that wrote the toy world's images and then
    its 256 clips wrote 1-12 of the clips as other streams, decoding up to 34 levels apart, in 4 of 8
    processes (10 of 10 in another batch). x264's C code (``asm=0``) wrote the same bytes in 8 of 8, at the
    same PSNR and 12 % slower on 48-pixel clips.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    default_video, default_audio, pix_fmt = CONTAINERS[path.suffix]
    width, height = size
    rate = fractions.Fraction(fps).limit_denominator(1001)
    with av.open(str(path), "w") as container:
        video = container.add_stream(codec or default_video, rate=rate)
        video.width, video.height, video.pix_fmt = width, height, pix_fmt
        if (codec or default_video) == "libx264":
            video.options = {"preset": "veryfast", **({"x264-params": "asm=0"} if reproducible else {})}
        else:  # the other encoders' default bitrates are too low to keep the time-coded brightness
            video.bit_rate = 4_000_000
        stream = None
        if audio is not None and audio_codec is not None:
            audio_codec = default_audio if audio_codec == "default" else audio_codec
            stream = _add_audio_stream(container, audio_codec, audio_rate, audio.shape[0])
        for index, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = index
            frame.time_base = 1 / rate
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if stream is not None:
            _encode_audio(container, stream, audio, audio_rate)
    return path


def write_audio(path: str | Path, seconds: float = 3.0, rate: int = 44100, channels: int = 2,
                freq: float = 440.0, codec: Optional[str] = None, samples: Optional[np.ndarray] = None) -> Path:
    """Encode a sine tone (or the given ``(channels, n)`` float ``samples``); codec from the extension."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    codec = codec or AUDIO_CODECS[path.suffix]
    rate = 48000 if "opus" in codec else rate  # Opus only runs at 48 kHz
    if samples is None:
        samples = tone(seconds, rate, channels, freq)
    with av.open(str(path), "w") as container:
        stream = _add_audio_stream(container, codec, rate, samples.shape[0])
        _encode_audio(container, stream, samples, rate)
    return path


@dataclass
class VideoSpec:
    """One WebVid row and the file behind it (``ext=None``: a row whose file is missing)."""

    videoid: str
    caption: str
    seconds: float = 3.0
    fps: float = 30.0
    size: tuple[int, int] = (64, 48)
    ext: Optional[str] = ".mp4"
    codec: Optional[str] = None
    audio_codec: Optional[str] = "default"
    page_dir: str = "001"
    raw: Optional[bytes] = None  # write these bytes instead of encoding (corrupt-file fixtures)


def iso_duration(seconds: float) -> str:
    """WebVid's duration format: ``PT00H00M17S``."""
    s = int(round(seconds))
    return f"PT{s // 3600:02d}H{s % 3600 // 60:02d}M{s % 60:02d}S"


def write_webvid_corpus(root: str | Path, specs: list[VideoSpec]) -> dict[str, Path]:
    """``results.csv`` in WebVid's columns + ``videos/<page_dir>/<videoid><ext>``."""
    root = Path(root)
    media = root / "videos"
    rows = []
    for spec in specs:
        if spec.ext is not None:
            target = media / spec.page_dir / f"{spec.videoid}{spec.ext}"
            if spec.raw is not None:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(spec.raw)
            else:
                write_video(target, spec.seconds, spec.fps, spec.size, spec.codec, spec.audio_codec)
        rows.append({"videoid": spec.videoid, "contentUrl": f"https://webvid.invalid/{spec.videoid}.mp4",
                     "duration": iso_duration(spec.seconds), "page_dir": spec.page_dir, "name": spec.caption})
    media.mkdir(parents=True, exist_ok=True)
    metadata = root / "results.csv"
    with open(metadata, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["videoid", "contentUrl", "duration", "page_dir", "name"])
        writer.writeheader()
        writer.writerows(rows)
    return {"metadata": metadata, "media": media}


AUDIOSET_LABELS = [("/m/09x0r", "Speech"), ("/m/04rlf", "Music"), ("/m/0jbk", "Animal"), ("/m/07yv9", "Vehicle")]


def write_audioset_metadata(root: str | Path, rows: list[tuple[str, float, float, list[str]]]) -> dict[str, Path]:
    """AudioSet's segment CSV (3 ``#`` header lines, quoted MID lists) + ``class_labels_indices.csv``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    segments = root / "balanced_train_segments.csv"
    lines = ["# Segments csv created Sun Mar  5 10:54:31 2017",
             "# num_ytids=%d, num_segs=%d, num_unique_labels=4, num_positive_labels=%d"
             % (len(rows), len(rows), sum(len(r[3]) for r in rows)),
             "# YTID, start_seconds, end_seconds, positive_labels"]
    lines += [f'{ytid}, {start:.3f}, {end:.3f}, "{",".join(mids)}"' for ytid, start, end, mids in rows]
    segments.write_text("\n".join(lines) + "\n", encoding="utf-8")
    labels = root / "class_labels_indices.csv"
    with open(labels, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "mid", "display_name"])
        writer.writerows([(i, mid, name) for i, (mid, name) in enumerate(AUDIOSET_LABELS)])
    return {"metadata": segments, "labels": labels}


def write_audiocaps_metadata(root: str | Path, rows: list[tuple[str, str, float, str]]) -> Path:
    """AudioCaps' ``audiocap_id,youtube_id,start_time,caption`` CSV."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / "train.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["audiocap_id", "youtube_id", "start_time", "caption"])
        writer.writerows(rows)
    return path
