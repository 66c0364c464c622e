"""Audio decoding against real files encoded with PyAV: wav, flac, ogg/vorbis, mp3, m4a/aac, opus,
and a video's audio track; resample, downmix, cut/pad, log-mel."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.audio import decode_segment, downmix, fit_length, frame_to_float, resample
from pipelines.config import AudioConfig
from pipelines.images import DropSample
from pipelines.toyworld_media import write_audio, write_video

CFG = AudioConfig(sample_rate=8000, seconds=2.0, mel=True, n_mels=16, n_fft=256, win_length=256,
                  hop_length=80, f_max=4000.0)


def dominant_hz(mono: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(mono.astype(np.float32)))
    return float(np.argmax(spectrum) * rate / len(mono))


def band_level(mono: np.ndarray, rate: int, hz: float) -> float:
    spectrum = np.abs(np.fft.rfft(mono))
    centre = int(round(hz * len(mono) / rate))
    return float(spectrum[centre - 3:centre + 4].max())


@pytest.mark.parametrize("ext, rate, channels", [
    (".wav", 44100, 2), (".flac", 22050, 1), (".ogg", 44100, 2), (".mp3", 44100, 1),
    (".m4a", 32000, 2), (".opus", 48000, 1),
])
def test_every_codec_decodes_resamples_and_downmixes(tmp_path, ext, rate, channels):
    path = write_audio(tmp_path / f"tone{ext}", seconds=1.5, rate=rate, channels=channels, freq=440.0)
    out = decode_segment(str(path), 0.0, 10.0, CFG)
    audio = out["audio"]
    assert audio.dtype == np.float16 and audio.shape == (CFG.num_samples,)  # padded to 2 s at 8 kHz
    signal = audio[: int(1.3 * 8000)].astype(np.float32)
    # channel c carries (c+1) * 440 Hz: the mono downmix holds both tones of a stereo file, equally
    at440, at880 = band_level(signal, 8000, 440.0), band_level(signal, 8000, 880.0)
    if channels == 1:
        assert abs(dominant_hz(signal, 8000) - 440.0) < 10.0 and at880 < 0.1 * at440
    else:
        assert 0.4 < at880 / at440 < 2.5  # (FFmpeg's experimental Vorbis encoder loses level at 880 Hz)
    assert np.sqrt((signal ** 2).mean()) > 0.1
    assert np.abs(audio[int(1.6 * 8000):].astype(np.float32)).max() < 0.02  # zero padding after the file's end
    assert out["mel"].dtype == np.float16 and out["mel"].shape == (16, CFG.num_samples // 80 + 1)


def test_audio_track_of_a_video(tmp_path):
    path = write_video(tmp_path / "clip.mp4", 1.5, 30.0, (64, 48), audio_rate=44100, audio_channels=1)
    out = decode_segment(str(path), 0.0, 10.0, CFG)
    assert abs(dominant_hz(out["audio"][:8000], 8000) - 440.0) < 10.0


def test_absolute_offsets_seek_into_a_long_recording(tmp_path):
    rate = 16000
    samples = np.zeros((1, 6 * rate), dtype=np.float32)
    samples[0, 3 * rate:5 * rate] = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(2 * rate) / rate)
    path = write_audio(tmp_path / "long.flac", rate=rate, samples=samples)
    out = decode_segment(str(path), 3.0, 5.0, CFG)  # "auto": the file reaches past 5 s -> absolute
    audio = out["audio"].astype(np.float32)
    assert np.sqrt((audio[400:-400] ** 2).mean()) > 0.3 and abs(dominant_hz(audio, 8000) - 1000) < 10
    silent = decode_segment(str(path), 0.0, 2.0, CFG)["audio"].astype(np.float32)
    assert np.abs(silent).max() < 0.01


def test_precut_clip_ignores_the_metadata_offset(tmp_path):
    path = write_audio(tmp_path / "clip.wav", seconds=2.0, rate=16000, channels=1)
    out = decode_segment(str(path), 30.0, 32.0, CFG)  # a 2 s file cannot hold 30-32 s: it is the clip
    assert np.sqrt((out["audio"].astype(np.float32) ** 2).mean()) > 0.2


def test_downmix_averages_channels_and_fit_length_cuts_or_pads():
    stereo = np.stack([np.ones(5, np.float32), np.zeros(5, np.float32)])
    assert np.allclose(downmix(stereo), 0.5)
    assert fit_length(np.arange(5.0), 3).tolist() == [0, 1, 2]
    assert fit_length(np.arange(2.0), 4).tolist() == [0, 1, 0, 0]


def test_resample_keeps_the_frequency():
    rate = 44100
    tone = np.sin(2 * np.pi * 1000 * np.arange(rate) / rate).astype(np.float32)
    out = resample(tone, rate, 16000)
    assert out.shape == (16000,) and abs(dominant_hz(out, 16000) - 1000) < 2


def test_int_sample_formats_are_scaled_to_unit_range():
    import av

    frame = av.AudioFrame.from_ndarray(np.array([[16384, -32768]], dtype=np.int16), format="s16", layout="mono")
    assert frame_to_float(frame).tolist() == [[0.5, -1.0]]


@pytest.mark.parametrize("data, stage, reason", [
    (b"RIFF\x00\x00\x00\x00WAVEjunk", "decode", "not a media file PyAV can open"),
    (b"\x00" * 2048, "decode", "not a media file PyAV can open"),
])
def test_corrupt_audio_is_dropped(tmp_path, data, stage, reason):
    path = tmp_path / "bad.wav"
    path.write_bytes(data)
    with pytest.raises(DropSample) as drop:
        decode_segment(str(path), 0.0, 10.0, CFG)
    assert drop.value.stage == stage and reason in drop.value.reason


def test_video_without_audio_track_is_dropped(tmp_path):
    path = write_video(tmp_path / "silent.mp4", 1.0, 30.0, (64, 48), audio_codec=None)
    with pytest.raises(DropSample) as drop:
        decode_segment(str(path), 0.0, 10.0, CFG)
    assert drop.value.reason == "file has no audio stream"


def test_too_little_audio_is_dropped(tmp_path):
    path = write_audio(tmp_path / "blip.wav", seconds=0.2, rate=16000, channels=1)
    with pytest.raises(DropSample) as drop:
        decode_segment(str(path), 0.0, 10.0, CFG)
    assert drop.value.stage == "duration" and "min_seconds" in drop.value.reason


def swept_sine(rate: int, seconds: float, f0: float, f1: float) -> np.ndarray:
    """A linear chirp from f0 to f1 Hz at amplitude 0.5."""
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * (f0 * t + (f1 - f0) / (2 * seconds) * t ** 2))).astype(np.float32)


def snr_db(reference: np.ndarray, other: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(reference ** 2) / max(np.sum((reference - other) ** 2), 1e-30)))


def test_resampler_agrees_with_torchaudio_on_a_swept_sine():
    """libswresample (what the stage runs, in its decode graph) against torchaudio's band-limited
    resample (the stage's previous resampler): 44.1 kHz -> 16 kHz on a 20 Hz - 7 kHz chirp, edges
    excluded. Measured: 47 dB (FFmpeg's default filter_size=32: 31 dB, 8: 23 dB)."""
    import torch
    import torchaudio.functional as AF

    sweep = swept_sine(44100, 4.0, 20.0, 7000.0)
    ours = resample(sweep, 44100, 16000)
    reference = AF.resample(torch.from_numpy(sweep), 44100, 16000).numpy()
    assert ours.shape == reference.shape == (64000,)
    assert snr_db(reference[800:-800], ours[800:-800]) > 40.0


def test_graph_decode_matches_decoding_frame_by_frame(tmp_path):
    """The stage (decode, cut, downmix and resample in one FFmpeg graph) against a reference built here
    from PyAV's frames: every frame to float in numpy, channels averaged, the segment cut by sample
    index, torchaudio.functional.resample. A stereo swept sine, 1-3 s of a 4 s recording. A wrong
    downmix gain (FFmpeg's default matrix) or a cut 10 ms off each fall below 15 dB."""
    import av
    import torch
    import torchaudio.functional as AF

    rate = 44100
    left, right = swept_sine(rate, 4.0, 50.0, 6000.0), swept_sine(rate, 4.0, 6000.0, 50.0)
    path = write_audio(tmp_path / "sweep.flac", rate=rate, samples=np.stack([left, right]))
    cfg = AudioConfig(sample_rate=16000, seconds=2.0)
    ours = decode_segment(str(path), 1.0, 3.0, cfg)["audio"].astype(np.float32)
    with av.open(str(path)) as container:
        whole = np.concatenate([frame_to_float(f) for f in container.decode(audio=0)], axis=1)
    segment = whole.mean(axis=0)[rate:3 * rate]
    reference = AF.resample(torch.from_numpy(np.ascontiguousarray(segment)), rate, 16000).numpy()
    assert ours.shape == reference.shape == (32000,)
    assert snr_db(reference[400:-400], ours[400:-400]) > 40.0  # the resamplers agree to 47 dB


def test_resampler_rejects_what_would_alias():
    """A 10 kHz tone is above the 8 kHz Nyquist of 16 kHz: it must not fold back to 6 kHz (measured:
    -49 dB; torchaudio -45 dB)."""
    tone = (0.5 * np.sin(2 * np.pi * 10000 * np.arange(44100 * 2) / 44100)).astype(np.float32)
    out = resample(tone, 44100, 16000)[800:-800]
    assert 20 * np.log10(np.sqrt(np.mean(out ** 2)) / (0.5 / np.sqrt(2))) < -40.0


def test_stored_mel_is_the_one_log_mel_definition():
    """The pipeline's mel is ``common.melspec.log_mel`` (what the audio autoencoder encodes), transposed to
    (n_mels, frames): checked against an independent NumPy STFT + Slaney mel of the same waveform."""
    import numpy as np

    from pipelines.audio import log_mel
    from pipelines.config import AudioConfig

    cfg = AudioConfig(sample_rate=16000, seconds=1.0, mel=True)
    t = np.arange(16000) / 16000
    wave = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    ours = log_mel(wave, cfg)
    n_fft, hop = 1024, 160
    padded = np.pad(wave.astype(np.float64), n_fft // 2, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)       # periodic Hann
    frames = np.stack([padded[i * hop:i * hop + n_fft] * window for i in range(len(wave) // hop + 1)])
    magnitude = np.abs(np.fft.rfft(frames, axis=1))                          # (frames, 513)

    def hz_to_mel(f):  # Slaney: linear below 1 kHz, logarithmic above
        f = np.asarray(f, dtype=np.float64)
        return np.where(f < 1000, 3 * f / 200, 15 + 27 * np.log(np.maximum(f, 1e-9) / 1000) / np.log(6.4))

    def mel_to_hz(m):
        return np.where(m < 15, 200 * m / 3, 1000 * np.exp(np.log(6.4) * (m - 15) / 27))

    edges = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(8000.0), 64 + 2))
    freqs = np.linspace(0, 8000, n_fft // 2 + 1)
    basis = np.zeros((64, n_fft // 2 + 1))
    for m in range(64):
        lo, mid, hi = edges[m], edges[m + 1], edges[m + 2]
        basis[m] = np.maximum(0, np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)))
        basis[m] *= 2 / (hi - lo)
    expected = np.log(np.maximum(basis @ magnitude.T, 1e-5))                 # (64, frames)
    assert ours.shape == expected.shape == (64, 101)
    # float32 STFT against float64: the largest gaps (~1.5e-3 in log) sit in near-silent bands
    assert np.abs(ours - expected).max() < 5e-3
