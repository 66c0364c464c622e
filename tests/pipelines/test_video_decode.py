"""Video decoding against real files encoded with PyAV: containers, codecs, frame rates, sizes, audio."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.config import AudioConfig, VideoConfig
from pipelines.images import DropSample
from pipelines.toyworld_media import write_video
from pipelines.video import FrameSelector, decode_clips

VCFG = VideoConfig(size=32, fps=4.0, frames=4, threads=1)
ACFG = AudioConfig(sample_rate=8000, seconds=2.0)

CASES = [  # (file name, seconds, fps, size, video codec, audio codec)
    ("h264_aac.mp4", 3.0, 30.0, (64, 48), None, "default"),
    ("h264_25fps.mov", 2.0, 25.0, (48, 64), None, "default"),
    ("mpeg4_opus.mkv", 2.0, 24.0, (64, 48), None, "default"),
    ("vp8_opus.webm", 2.0, 30.0, (80, 48), None, "default"),
    ("vp9_silent.webm", 2.0, 15.0, (64, 64), "libvpx-vp9", None),
    ("mjpeg_mp3.avi", 2.0, 10.0, (64, 48), None, "default"),
    ("h264_silent.mp4", 2.0, 30.0, (64, 48), None, None),
]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    return {name: write_video(root / name, seconds, fps, size, codec, audio)
            for name, seconds, fps, size, codec, audio in CASES}


def brightness_time(frame: np.ndarray) -> float:
    """The test videos encode time in the background's red level: 40 + 50 t (top-left corner)."""
    return (float(frame[:3, :3, 0].mean()) - 40.0) / 50.0


def test_frame_selector_skips_to_the_target_grid():
    selector = FrameSelector(fps=4.0, source_period=1 / 30)
    taken = [i for i in range(60) if selector.take(i / 30)]
    # grid 0, .25, .5, ... served by the nearest 30 fps frame (round(k * 7.5))
    assert taken == [0, 8, 15, 23, 30, 38, 45, 53]


def test_frame_selector_repeats_frames_of_a_slower_source():
    selector = FrameSelector(fps=4.0, source_period=1 / 2)
    assert [selector.take(i / 2) for i in range(4)] == [1, 2, 2, 2]


@pytest.mark.parametrize("name", [c[0] for c in CASES])
def test_clips_from_every_container_and_codec(videos, name):
    seconds, has_audio = next((c[1], c[5] is not None) for c in CASES if c[0] == name)
    clips = decode_clips(str(videos[name]), VCFG, ACFG)
    assert len(clips) == int(seconds * VCFG.fps) // VCFG.frames  # every whole 1 s clip, no partial one
    for index, clip in enumerate(clips):
        assert clip["frames"].shape == (4, 32, 32, 3) and clip["frames"].dtype == np.uint8
        assert np.array_equal(clip["image"], clip["frames"][2])  # the middle frame is the image prompt
        assert clip["start"] == pytest.approx(index * 1.0) and clip["end"] == pytest.approx(index + 1.0)
        # the frames are the ones at 0, .25, .5, .75 s of the clip (lossy codecs and full-range MJPEG: within 0.15 s, well under the 0.25 s grid step)
        times = [brightness_time(f) for f in clip["frames"]]
        assert times == pytest.approx([clip["start"] + k / 4 for k in range(4)], abs=0.15)
        assert ("audio" in clip) == has_audio
        if has_audio:
            audio = clip["audio"].astype(np.float32)
            assert clip["audio"].dtype == np.float16 and audio.shape == (8000,)  # 1 s at 8 kHz
            assert np.sqrt((audio[200:-200] ** 2).mean()) > 0.1  # the tone is there for the whole clip


def test_aligned_audio_is_the_clips_time_span(tmp_path):
    """Audio of clip i is the track's [i, i+1) s: a tone that starts at 1 s is silent in clip 0."""
    import av
    import fractions

    path = tmp_path / "late_tone.mp4"
    write_video(path, 2.0, 30.0, (64, 48), audio_codec=None)
    # remux with a PCM track that is silent for 1 s then a tone
    rate = 8000
    samples = np.zeros((1, 2 * rate), dtype=np.float32)
    samples[0, rate:] = 0.5 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate)
    out = tmp_path / "with_audio.mkv"
    with av.open(str(path)) as src, av.open(str(out), "w") as dst:
        vin = src.streams.video[0]
        vout = dst.add_stream_from_template(vin)
        aout = dst.add_stream("pcm_s16le", rate=rate)
        aout.layout = "mono"
        for packet in src.demux(vin):
            if packet.dts is not None:
                packet.stream = vout
                dst.mux(packet)
        frame = av.AudioFrame.from_ndarray((samples * 32767).astype(np.int16), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = rate, 0, fractions.Fraction(1, rate)
        dst.mux(aout.encode(frame))
        dst.mux(aout.encode(None))
    clips = decode_clips(str(out), VCFG, AudioConfig(sample_rate=8000))
    rms = [float(np.sqrt((c["audio"].astype(np.float32) ** 2).mean())) for c in clips]
    assert rms[0] < 0.01 and rms[1] > 0.3


def test_keep_ratio_pads_instead_of_cropping(videos):
    cfg = VideoConfig(size=32, fps=4.0, frames=4, resize_mode="keep_ratio")
    frame = decode_clips(str(videos["h264_aac.mp4"]), cfg, ACFG)[0]["frames"][0]
    # 64x48 -> 32x24, centred: 4 black rows above and below, picture in between
    assert frame[:4].max() == 0 and frame[-4:].max() == 0 and frame[4:28].mean() > 50


def test_max_clips_stops_early(videos):
    cfg = VideoConfig(size=32, fps=4.0, frames=4, max_clips=1)
    assert len(decode_clips(str(videos["h264_aac.mp4"]), cfg, ACFG)) == 1


def test_sixteen_frames_at_eight_fps_curriculum(videos):
    cfg = VideoConfig(size=16, fps=8.0, frames=16)
    clips = decode_clips(str(videos["h264_aac.mp4"]), cfg, ACFG)
    assert len(clips) == 1 and clips[0]["frames"].shape == (16, 16, 16, 3)


def test_video_shorter_than_a_clip_is_dropped(tmp_path):
    path = write_video(tmp_path / "short.mp4", 0.5, 30.0, (64, 48))
    with pytest.raises(DropSample) as drop:
        decode_clips(str(path), VCFG, ACFG)
    assert drop.value.stage == "duration" and "shorter than one clip" in drop.value.reason


def test_absurd_frame_size_is_dropped_before_decoding(videos):
    with pytest.raises(DropSample) as drop:
        decode_clips(str(videos["h264_aac.mp4"]), VideoConfig(size=32, max_pixels=1000), ACFG)
    assert drop.value.stage == "decode" and "exceeds max_pixels" in drop.value.reason


@pytest.mark.parametrize("data, reason", [
    (b"", "not a media file"),
    (b"\x00" * 4096, "not a media file"),
])
def test_garbage_is_dropped_with_a_reason(tmp_path, data, reason):
    path = tmp_path / "bad.mp4"
    path.write_bytes(data)
    with pytest.raises(DropSample) as drop:
        decode_clips(str(path), VCFG, ACFG)
    assert drop.value.stage == "decode" and reason in drop.value.reason


def test_truncated_file_is_dropped(videos, tmp_path):
    data = videos["h264_aac.mp4"].read_bytes()
    path = tmp_path / "truncated.mp4"
    path.write_bytes(data[: len(data) // 2])  # the moov index is at the end: nothing to play
    with pytest.raises(DropSample) as drop:
        decode_clips(str(path), VCFG, ACFG)
    assert drop.value.stage in ("decode", "duration")


def test_audio_only_file_has_no_video_stream(tmp_path):
    from pipelines.toyworld_media import write_audio

    path = write_audio(tmp_path / "sound.m4a", 2.0)
    with pytest.raises(DropSample) as drop:
        decode_clips(str(path), VCFG, ACFG)
    assert drop.value.reason == "file has no video stream"
