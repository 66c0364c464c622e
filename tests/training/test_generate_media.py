"""Writing generated sound: a waveform louder than full scale keeps its shape in the WAV and the MP4."""

import numpy as np
import pytest

from pipelines.toyworld_probes import read_audio
from training.generate_media import SAMPLE_RATE, full_scale, write_mp4, write_wav

TONE_HZ = 440.0


def tone(amplitude: float, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (amplitude * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    n = min(a.size, b.size)
    return float(np.corrcoef(a[:n], b[:n])[0, 1])


def test_full_scale_divides_only_what_exceeds_it():
    quiet, loud = tone(0.5), tone(2.0)
    np.testing.assert_array_equal(full_scale(quiet), quiet)
    np.testing.assert_allclose(full_scale(loud), loud / 2.0, atol=1e-6)
    assert full_scale(np.zeros(8, np.float32)).max() == 0.0


@pytest.mark.parametrize("amplitude", [0.5, 2.0])
def test_wav_keeps_a_loud_tone_sinusoidal(tmp_path, amplitude):
    # clipped at ±1, a sine of amplitude 2 flattens towards a square wave (correlation 0.974 with the sine,
    # odd harmonics); scaled, it stays a sine
    wave = tone(amplitude)
    back, rate = read_audio(write_wav(tmp_path / "loud.wav", wave))
    assert rate == SAMPLE_RATE
    assert correlation(back, wave) > 0.9999
    assert np.abs(back).max() == pytest.approx(min(amplitude, 1.0), abs=1e-3)
    spectrum = np.abs(np.fft.rfft(back))
    bin_of = lambda hz: int(round(hz * back.size / SAMPLE_RATE))  # noqa: E731
    assert spectrum[bin_of(3 * TONE_HZ)] < 1e-3 * spectrum[bin_of(TONE_HZ)]


def test_mp4_soundtrack_of_a_loud_tone_is_not_clipped(tmp_path):
    wave = tone(2.0, seconds=2.0)
    frames = np.zeros((8, 16, 16, 3), np.uint8)
    back, _ = read_audio(write_mp4(tmp_path / "loud.mp4", frames, 4.0, audio=wave))
    # AAC is lossy and delays the track: compare where the tone is steady, after aligning by lag
    lag = int(np.argmax(np.correlate(back[:4096], wave[:2048], mode="valid")))
    assert correlation(back[lag + 2000:lag + 28000], wave[2000:28000]) > 0.99
    assert np.abs(back).max() < 1.1
