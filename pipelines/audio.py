"""Audio decode (any container/codec FFmpeg reads), downmix, resample, cut/pad, log-mel.

An audio file's segment is decoded, cut, downmixed and resampled inside FFmpeg in one filter graph
(``amovie`` -> ``atrim`` -> ``aresample`` -> ``aformat`` -> one output frame): no Python runs per
decoded frame, which is what held the stage to half the decode-only floor (each frame's Python work
cost as much as decoding it). Resampling is libswresample's windowed sinc (``RESAMPLE``);
its agreement with torchaudio's band-limited resample is measured on a swept sine (tests, and
``codiray bench prepare``). The video pipeline reuses the steps for a clip's audio track:
``frame_to_float``, ``downmix``, ``resample``, ``fit_length``, ``log_mel``.
"""

from __future__ import annotations

import contextlib
import fractions
import os
import tempfile

import av
import numpy as np
import torch

from common import melspec
from common.melspec import MelSpec
from pipelines.config import AudioConfig
from pipelines.images import DropSample

# integer sample formats -> full-scale value (to map onto [-1, 1])
_INT_SCALE = {"u8": 128.0, "s16": 32768.0, "s32": 2147483648.0, "s64": 9223372036854775808.0}


def to_float(data: np.ndarray, fmt: str, planar: bool, channels: int) -> np.ndarray:
    """Raw samples (``to_ndarray`` of one frame, or many concatenated along the last axis) as float32
    ``(channels, samples)``, whatever the sample format or packing."""
    if not planar:  # packed: one row of interleaved samples
        data = data.reshape(-1, channels).T
    base = fmt.rstrip("p")
    if base == "u8":
        return (data.astype(np.float32) - 128.0) / 128.0
    if base in _INT_SCALE:
        return data.astype(np.float32) / _INT_SCALE[base]
    return data.astype(np.float32, copy=False)


def frame_to_float(frame: av.AudioFrame) -> np.ndarray:
    """A decoded frame as float32 ``(channels, samples)``."""
    return to_float(frame.to_ndarray(), frame.format.name, frame.format.is_planar, len(frame.layout.channels))


class single_thread:
    """Run torch ops on one thread. Resampling/mel of one clip is a few MFLOPs: torch's intra-op
    thread pool costs more than it saves (measured 52 ms vs 1.4 ms for 10 s on 2 busy cores), and
    parallelism comes from running several pipeline workers instead."""

    def __enter__(self):
        self.before = torch.get_num_threads()
        if self.before != 1:
            torch.set_num_threads(1)

    def __exit__(self, *exc):
        if self.before != 1:
            torch.set_num_threads(self.before)


def downmix(samples: np.ndarray) -> np.ndarray:
    """``(channels, n)`` -> mono ``(n,)`` by averaging channels (keeps level for correlated channels)."""
    return samples.mean(axis=0) if samples.shape[0] > 1 else samples[0]


# libswresample settings, in one place. Downmix first (fewer samples to resample), with the matrix
# normalised to unit gain (rematrix_maxval=1: stereo -> (L + R) / 2, the channel average); then the
# windowed-sinc resample with filter_size=16 (FFmpeg's default is 32). Measured on a 44.1 -> 16 kHz
# swept sine against torchaudio's band-limited resample, the stage's previous resampler: SNR 47 dB
# between them (31 dB with the default 32, whose passband differs more), and a 10 kHz tone folds
# back at -49 dB (torchaudio: -45 dB). tests/pipelines/test_audio_decode.py holds both to 40 dB.
DOWNMIX = "rematrix_maxval=1"
RESAMPLE = "filter_size=16"


def _to_mono_float(graph: av.filter.Graph, source, rate: int, seconds: float,
                   trim: tuple[float, float] | None = None):
    """Link ``source`` -> [atrim] -> downmix -> resample to ``rate`` -> float32 -> sink, the segment
    (``seconds`` long) gathered into one frame; returns the sink."""
    chain = [source]
    if trim is not None:
        chain.append(graph.add("atrim", f"start={float(trim[0]):.6f}:end={float(trim[1]):.6f}"))
    chain += [graph.add("aresample", DOWNMIX), graph.add("aformat", "sample_fmts=fltp:channel_layouts=mono"),
              graph.add("aresample", f"{rate}:{RESAMPLE}"), graph.add("aformat", "sample_fmts=flt"),
              graph.add("asetnsamples", f"n={int(seconds * rate) + 64}:p=0"), graph.add("abuffersink")]
    for a, b in zip(chain, chain[1:]):
        a.link_to(b)
    graph.configure()
    return chain[-1]


def _drain(sink, out: list | None = None) -> list[np.ndarray]:
    """Every frame the sink gives, as mono arrays, appended to ``out`` (kept if decoding fails midway)."""
    out = [] if out is None else out
    while True:
        try:
            out.append(sink.pull().to_ndarray()[0])
        except (av.BlockingIOError, av.EOFError):
            return out


def resample(mono: np.ndarray, orig: int, new: int) -> np.ndarray:
    """Band-limited resampling of a mono float signal with libswresample (no-op when rates match)."""
    if orig == new or mono.size == 0:
        return mono.astype(np.float32, copy=False)
    graph = av.filter.Graph()
    source = graph.add_abuffer(format="fltp", sample_rate=orig, layout="mono", time_base=fractions.Fraction(1, orig))
    sink = _to_mono_float(graph, source, new, mono.size / orig)
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(mono, dtype=np.float32)[None], format="fltp", layout="mono")
    frame.sample_rate, frame.pts, frame.time_base = orig, 0, fractions.Fraction(1, orig)
    source.push(frame)
    source.push(None)
    return np.concatenate(_drain(sink))


def fit_length(mono: np.ndarray, num_samples: int) -> np.ndarray:
    """Cut to ``num_samples`` or zero-pad at the end (CoDi trains on fixed 10 s segments)."""
    if mono.shape[0] >= num_samples:
        return mono[:num_samples]
    return np.pad(mono, (0, num_samples - mono.shape[0]))


def mel_spec(cfg: AudioConfig) -> MelSpec:
    """The stage's settings as the one log-mel definition's (``common.melspec``: AudioLDM's TacotronSTFT)."""
    return MelSpec(sample_rate=cfg.sample_rate, n_fft=cfg.n_fft, win_length=cfg.win_length,
                   hop_length=cfg.hop_length, n_mels=cfg.n_mels, f_min=cfg.f_min,
                   f_max=cfg.f_max if cfg.f_max is not None else cfg.sample_rate / 2)


def log_mel(mono: np.ndarray, cfg: AudioConfig) -> np.ndarray:
    """``(n_mels, frames)``: ``common.melspec.log_mel`` (log of the clamped magnitude mel, TacotronSTFT's
    reflect padding and frame count) — the same definition the audio autoencoder encodes with."""
    with torch.inference_mode(), single_thread():
        mel = melspec.log_mel(torch.from_numpy(np.ascontiguousarray(mono, dtype=np.float32))[None], mel_spec(cfg))
    return mel[0].T.numpy()


def finish(chunks: list[np.ndarray], rate: int, cfg: AudioConfig, what: str) -> dict[str, np.ndarray]:
    """Decoded ``(channels, n)`` chunks at ``rate`` -> the stored tensors (``audio``, ``mel``), float16."""
    if not chunks:
        raise DropSample("decode", f"no audio decoded from the {what}")
    mono = downmix(np.concatenate(chunks, axis=1))
    if not np.isfinite(mono).all():
        raise DropSample("decode", f"non-finite audio samples in the {what}")
    return store(resample(mono, rate, cfg.sample_rate), cfg, what)


def store(mono: np.ndarray, cfg: AudioConfig, what: str) -> dict[str, np.ndarray]:
    """Mono float32 at ``cfg.sample_rate`` -> the stored tensors (``audio``, ``mel``), float16."""
    if mono.shape[0] < cfg.min_seconds * cfg.sample_rate:
        raise DropSample("duration", f"only {mono.shape[0] / cfg.sample_rate:.2f} s of audio in the {what} "
                                     f"(< min_seconds {cfg.min_seconds})")
    if not np.isfinite(mono).all():
        raise DropSample("decode", f"non-finite audio samples in the {what}")
    mono = fit_length(mono, cfg.num_samples)
    out = {}
    if cfg.keep_waveform:
        out["audio"] = mono.astype(np.float16)
    if cfg.mel:
        out["mel"] = log_mel(mono, cfg).astype(np.float16)
    return out


def slice_chunk(samples: np.ndarray, chunk_start: float, rate: int, start: float, end: float) -> np.ndarray | None:
    """The part of a chunk beginning at ``chunk_start`` s that falls inside ``[start, end)``."""
    first = max(0, int(round((start - chunk_start) * rate)))
    last = min(samples.shape[1], int(round((end - chunk_start) * rate)))
    return samples[:, first:last] if last > first else None


# What a file holds, as recorded per input in the manifest's notes ("audio file holds").
WHOLE = "the whole recording (segment cut at start)"
SEGMENT = "only the segment (read from 0)"
UNKNOWN = "unknown duration (metadata positions used as given)"
SLACK_S = 0.5  # container durations are rounded; a whole recording may end this much before `end`


def placement(duration: float | None, start: float, end: float, offsets: str = "auto") -> tuple[str, float, float]:
    """(what the file holds, segment start, segment end in the file).

    A downloaded AudioSet/AudioCaps clip is the segment itself: it is shorter than ``end``, so the
    metadata's ``start`` cannot be a position in it; a whole recording reaches (about) to ``end``."""
    if offsets == "absolute":
        return WHOLE, start, end
    if offsets == "clip":
        return SEGMENT, 0.0, end - start
    if duration is None:
        return UNKNOWN, start, end
    if duration + SLACK_S < end:
        return SEGMENT, 0.0, end - start
    return WHOLE, start, end


def probe(path: str) -> float | None:
    """The file's duration in seconds (None if the container does not say); DropSample if it is not
    a media file or has no audio stream."""
    try:
        container = av.open(path, metadata_errors="ignore")
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as err:
        raise DropSample("decode", f"not a media file PyAV can open ({type(err).__name__}: {err})") from None
    with container:
        if not container.streams.audio:
            raise DropSample("decode", "file has no audio stream")
        stream = container.streams.audio[0]
        if container.duration:
            return container.duration / av.time_base
        return float(stream.duration * stream.time_base) if stream.duration and stream.time_base else None


@contextlib.contextmanager
def local_path(source):
    """A path FFmpeg can open: the path itself, or a temporary copy of an in-memory object (S3)."""
    if isinstance(source, (str, os.PathLike)):
        yield str(source)
        return
    with tempfile.NamedTemporaryFile(prefix="codiray-audio-") as tmp:
        tmp.write(source.getvalue() if hasattr(source, "getvalue") else source.read())
        tmp.flush()
        yield tmp.name


def read_segment(source, start: float, end: float, cfg: AudioConfig) -> tuple[dict[str, np.ndarray], str]:
    """Decode ``[start, end)`` s of a file's audio (path or file object) -> (stored tensors, what the
    file holds: ``WHOLE``, ``SEGMENT`` or ``UNKNOWN``)."""
    with local_path(source) as path:
        held, start, end = placement(probe(path), start, end, cfg.offsets)
        if end <= start:
            raise DropSample("metadata", f"segment end {end:g} s is not after start {start:g} s")
        graph = av.filter.Graph()
        movie = graph.add("amovie", filename=path, seek_point=f"{start:.6f}") if start > 0 else \
            graph.add("amovie", filename=path)
        chunks: list[np.ndarray] = []
        try:
            _drain(_to_mono_float(graph, movie, cfg.sample_rate, end - start, (start, end)), chunks)
        except av.FFmpegError as err:
            if not chunks:
                raise DropSample("decode", f"undecodable audio ({type(err).__name__}: {err})") from None
            # a truncated tail: keep what decoded; store() still enforces min_seconds
    what = f"segment {start:g}-{end:g} s"
    if not chunks:
        raise DropSample("decode", f"no audio decoded from the {what}")
    return store(np.concatenate(chunks), cfg, what), held


def decode_segment(source, start: float, end: float, cfg: AudioConfig) -> dict[str, np.ndarray]:
    """Decode ``[start, end)`` s of the first audio stream of a file (path or file object)."""
    return read_segment(source, start, end, cfg)[0]
