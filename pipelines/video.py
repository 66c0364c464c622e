"""Video -> fixed-length clips: PyAV threaded decode, frame-skipping to a target fps, scaling in the
decoder's scaler (swscale), the clip's middle frame as image prompt and its aligned audio segment.

Why it is shaped this way (measured on a 10 s 640x360 H.264 file, see the README's benchmark section):
- every frame must be decoded (inter-frame codecs), but a frame not on the target fps grid is never
  converted to RGB: at 30 -> 4 fps that skips 87% of the colour conversion and scaling;
- one ``VideoReformatter`` is reused for the whole file, so swscale builds its filter tables once
  (a fresh one per frame, what ``frame.to_ndarray(width=..)`` does, cost ~20% at 256 px);
- centre crop happens *before* scaling, in a libavfilter ``crop`` (a pointer offset, no copy), so
  swscale only scales pixels that are kept (scale-then-crop wastes 44% of the work on 16:9);
- video and audio packets are demuxed in one pass, so the clip's audio comes at no extra read.
"""

from __future__ import annotations

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from pipelines.audio import finish, frame_to_float, slice_chunk
from pipelines.config import AudioConfig, VideoConfig
from pipelines.images import DropSample


def open_container(source):
    """``av.open`` with every failure to even parse the file turned into a ledger reason."""
    try:
        return av.open(source, metadata_errors="ignore")
    except (av.FFmpegError, UnicodeDecodeError, ValueError, OSError) as err:
        raise DropSample("decode", f"not a media file PyAV can open ({type(err).__name__}: {err})") from None


class FrameSelector:
    """Frame-skipping to ``fps``: each grid time ``t0 + k/fps`` is served by the nearest source frame.

    ``take(t)`` says how many grid slots the frame at ``t`` fills: 0 (skip it, never converted), 1, or
    more when the source is slower than the target (the frame is repeated, like ffmpeg's fps filter).
    """

    def __init__(self, fps: float, source_period: float):
        self.step, self.half = 1.0 / fps, source_period / 2
        self.t0: float | None = None
        self.k = 0

    def take(self, t: float) -> int:
        if self.t0 is None:
            self.t0 = t
        count = 0
        # grid time t_k is closer to this frame than to the next one (at ~t + period)
        while self.t0 + self.k * self.step < t + self.half:
            self.k += 1
            count += 1
        return count


def _fit(width: int, height: int, size: int) -> tuple[int, int]:
    """Size that fits inside ``size`` x ``size`` keeping the ratio (even dims: chroma subsampling)."""
    scale = size / max(width, height)
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


class FrameScaler:
    """Decoded frame -> ``uint8 (size, size, 3)`` in swscale: crop-then-scale or fit-then-pad."""

    def __init__(self, cfg: VideoConfig):
        self.cfg = cfg
        self.reformatter = VideoReformatter()  # reused: swscale's context is cached across frames
        self.graph, self.graph_key = None, None

    def _crop_graph(self, frame: av.VideoFrame):
        side = min(frame.width, frame.height)
        graph = av.filter.Graph()
        src = graph.add_buffer(width=frame.width, height=frame.height, format=frame.format.name,
                               time_base=frame.time_base or av.time_base)
        crop = graph.add("crop", f"{side}:{side}:{(frame.width - side) // 2}:{(frame.height - side) // 2}")
        sink = graph.add("buffersink")
        src.link_to(crop)
        crop.link_to(sink)
        graph.configure()
        return graph

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        size, interp = self.cfg.size, self.cfg.interpolation
        if self.cfg.resize_mode == "center_crop":
            key = (frame.width, frame.height, frame.format.name)
            if key != self.graph_key:  # resolution changes mid-stream happen (adaptive streams)
                self.graph, self.graph_key = self._crop_graph(frame), key
            self.graph.push(frame)
            square = self.graph.pull()
            return self.reformatter.reformat(square, size, size, "rgb24", interpolation=interp).to_ndarray()
        width, height = _fit(frame.width, frame.height, size)
        fitted = self.reformatter.reformat(frame, width, height, "rgb24", interpolation=interp).to_ndarray()
        canvas = np.zeros((size, size, 3), dtype=np.uint8)
        top, left = (size - height) // 2, (size - width) // 2
        canvas[top:top + height, left:left + width] = fitted
        return canvas


def _source_period(stream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return 1.0 / float(rate) if rate else 1.0 / 30


def _check_stream(container, cfg: VideoConfig):
    if not container.streams.video:
        raise DropSample("decode", "file has no video stream")
    stream = container.streams.video[0]
    width, height = stream.codec_context.width, stream.codec_context.height
    if width * height > cfg.max_pixels:
        raise DropSample("decode", f"frame size {width}x{height} exceeds max_pixels {cfg.max_pixels}")
    if width <= 0 or height <= 0:
        raise DropSample("decode", "video stream has no frame size (undecodable stream)")
    return stream


class ClipCutter:
    """Accumulates selected frames into clips of ``cfg.frames`` (non-overlapping, from the start)."""

    def __init__(self, cfg: VideoConfig):
        self.cfg = cfg
        self.frames: list[np.ndarray] = []
        self.clips: list[np.ndarray] = []

    @property
    def full(self) -> bool:
        return self.cfg.max_clips is not None and len(self.clips) >= self.cfg.max_clips

    def add(self, image: np.ndarray, count: int) -> None:
        for _ in range(count):
            if self.full:
                return
            self.frames.append(image)
            if len(self.frames) == self.cfg.frames:
                self.clips.append(np.stack(self.frames))
                self.frames = []


def decode_clips(source, vcfg: VideoConfig, acfg: AudioConfig) -> list[dict]:
    """A video file -> ``[{"frames", "image", "start", "end", "fps", "audio"?, "mel"?}, ...]``."""
    container = open_container(source)
    with container:
        stream = _check_stream(container, vcfg)
        stream.thread_type = "AUTO"  # frame + slice threads: decoding is the floor, so use the cores
        if vcfg.threads:
            stream.codec_context.thread_count = vcfg.threads
        audio = container.streams.audio[0] if (vcfg.keep_audio and container.streams.audio) else None
        selector, scaler, cutter = FrameSelector(vcfg.fps, _source_period(stream)), FrameScaler(vcfg), ClipCutter(vcfg)
        audio_chunks: list[tuple[float, np.ndarray]] = []
        audio_rate = audio.codec_context.sample_rate if audio is not None else 0
        last_time = None
        streams = [stream] + ([audio] if audio is not None else [])
        try:
            for packet in container.demux(*streams):
                if packet.stream is audio:
                    for frame in packet.decode():
                        if frame.time is not None:
                            audio_rate = frame.sample_rate
                            audio_chunks.append((frame.time, frame_to_float(frame)))
                    continue
                for frame in packet.decode():
                    if cutter.full:
                        break
                    t = frame.time if frame.time is not None else (last_time or 0.0) + _source_period(stream)
                    last_time = t
                    count = selector.take(t)
                    if count:
                        cutter.add(scaler(frame), count)
                if cutter.full and (audio is None or _audio_covers(audio_chunks, selector, vcfg)):
                    break
        except av.FFmpegError as err:
            raise DropSample("decode", f"corrupt video stream ({type(err).__name__}: {err})") from None
    if not cutter.clips:
        seen = 0.0 if selector.t0 is None else (last_time - selector.t0 + _source_period(stream))
        if selector.t0 is None:
            raise DropSample("decode", "no video frame could be decoded")
        raise DropSample("duration", f"video shorter than one clip ({seen:.2f} s < {vcfg.clip_seconds:g} s)")
    return [_clip_record(i, frames, selector.t0, audio_chunks, audio_rate, vcfg, acfg)
            for i, frames in enumerate(cutter.clips)]


def _audio_covers(chunks, selector: FrameSelector, cfg: VideoConfig) -> bool:
    """Has the audio been demuxed past the end of the last clip? (then decoding can stop early)"""
    end = selector.t0 + cfg.max_clips * cfg.clip_seconds
    return bool(chunks) and chunks[-1][0] >= end


def _clip_record(index: int, frames: np.ndarray, t0: float, audio_chunks: list, audio_rate: int,
                 vcfg: VideoConfig, acfg: AudioConfig) -> dict:
    """One clip's tensors; its audio is the track's samples in the clip's own time span."""
    start = t0 + index * vcfg.clip_seconds
    end = start + vcfg.clip_seconds
    record = {"frames": frames, "image": frames[len(frames) // 2], "start": start, "end": end, "fps": vcfg.fps}
    if audio_chunks:
        parts = [p for t, chunk in audio_chunks
                 if (p := slice_chunk(chunk, t, audio_rate, start, end)) is not None]
        clip_cfg = AudioConfig(**{**acfg.__dict__, "seconds": vcfg.clip_seconds, "min_seconds": 0.0})
        try:
            record.update(finish(parts, audio_rate, clip_cfg, "clip"))
        except DropSample:
            pass  # no audio samples under this clip (track ends early): the clip keeps its frames
    return record
