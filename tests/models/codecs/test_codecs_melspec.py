"""log-mel = TacotronSTFT's definition, checked against an independent NumPy computation (STFT + Slaney
mel written out here), on a real WAV file written by the test."""

from __future__ import annotations

import wave

import numpy as np
import pytest
import torch

from common.melspec import AUDIOLDM, frame_count
from models.audio import log_mel


def slaney_hz_to_mel(f):
    f = np.asarray(f, dtype=np.float64)
    lin = f / (200.0 / 3)
    log = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(f >= 1000.0, log, lin)


def slaney_mel_to_hz(m):
    m = np.asarray(m, dtype=np.float64)
    lin = m * (200.0 / 3)
    log = 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0))
    return np.where(m >= 15.0, log, lin)


def numpy_mel_basis(sr=16000, n_fft=1024, n_mels=64, fmin=0.0, fmax=8000.0):
    """librosa.filters.mel(htk=False, norm='slaney') written out: triangles on the Slaney mel scale."""
    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    edges = slaney_mel_to_hz(np.linspace(slaney_hz_to_mel(fmin), slaney_hz_to_mel(fmax), n_mels + 2))
    weights = np.zeros((n_mels, len(freqs)))
    for m in range(n_mels):
        lo, mid, hi = edges[m], edges[m + 1], edges[m + 2]
        rising = (freqs - lo) / (mid - lo)
        falling = (hi - freqs) / (hi - mid)
        weights[m] = np.maximum(0.0, np.minimum(rising, falling)) * 2.0 / (hi - lo)
    return weights


def numpy_log_mel(x: np.ndarray, n_fft=1024, hop=160) -> np.ndarray:
    """Reflect-pad n_fft/2, periodic Hann frames every hop, |rfft|, mel, log(max(·, 1e-5)) -> (frames, 64)."""
    padded = np.pad(x.astype(np.float64), n_fft // 2, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    frames = 1 + (len(padded) - n_fft) // hop
    spec = np.stack([np.abs(np.fft.rfft(padded[t * hop: t * hop + n_fft] * window)) for t in range(frames)])
    return np.log(np.maximum(spec @ numpy_mel_basis().T, 1e-5))


def write_wav(path, samples: np.ndarray, rate=16000) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())


def read_wav(path) -> np.ndarray:
    with wave.open(str(path), "rb") as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768.0


@pytest.mark.parametrize("n", [16000, 12345])
def test_log_mel_matches_numpy_definition(tmp_path, n):
    rng = np.random.default_rng(n)
    t = np.arange(n) / 16000
    chirp = 0.4 * np.sin(2 * np.pi * (200 + 3000 * t) * t) + 0.05 * rng.standard_normal(n)
    write_wav(tmp_path / "chirp.wav", chirp)
    x = read_wav(tmp_path / "chirp.wav")
    ours = log_mel(torch.from_numpy(x)[None]).numpy()[0]
    ref = numpy_log_mel(x)
    assert ours.shape == ref.shape == (n // 160 + 1, 64) == (frame_count(n), AUDIOLDM.n_mels)
    assert np.abs(ours - ref).max() <= 1e-4


def test_log_mel_silence_is_the_floor_and_batches_independently():
    x = torch.zeros(2, 3200)
    x[1] = torch.sin(torch.arange(3200) * 2 * np.pi * 440 / 16000)
    out = log_mel(x)
    assert torch.allclose(out[0], torch.full_like(out[0], float(np.log(1e-5))))
    assert torch.allclose(out[1], log_mel(x[1:])[0], atol=1e-6)
    # the 440 Hz tone lands in the mel band that contains 440 Hz
    band = int(np.argmax(numpy_mel_basis()[:, round(440 / 16000 * 1024)]))
    assert int(out[1, 10].argmax()) == band


def test_log_mel_refuses_wrong_layouts():
    with pytest.raises(ValueError, match="batch, samples"):
        log_mel(torch.zeros(16000))
    with pytest.raises(ValueError, match="samples"):
        log_mel(torch.zeros(1, 100))


def test_mel_inversion_is_a_non_negative_fit_that_concentrates_a_tone():
    from common.melspec import mel_basis, mel_to_magnitude

    t = torch.arange(16000) / 16000
    tone = (0.5 * torch.sin(2 * torch.pi * 990.0 * t))[None]
    mel = log_mel(tone)
    magnitude = mel_to_magnitude(mel)
    assert magnitude.min() >= 0
    target = mel.exp().transpose(1, 2)
    assert (mel_basis() @ magnitude - target).norm() < 0.02 * target.norm()      # reproduces the mel it came from
    from common.melspec import magnitude_stft

    bins = magnitude[0, :, 50]
    assert abs(int(bins.argmax()) * 16000 / 1024 - 990.0) < 16000 / 1024          # the tone's bin is the peak
    width = lambda x: int((x > 0.1 * x.max()).sum())  # noqa: E731 — bins above 10 % of the peak
    min_norm = (torch.linalg.pinv(mel_basis()) @ target).clamp(min=0)[0, :, 50]
    assert width(bins) <= width(magnitude_stft(tone)[0, :, 50]) + 1 < width(min_norm)   # 5, true 4; pinv 7


def test_griffin_lim_decoder_keeps_every_toy_sound_s_pitch_and_rhythm():
    """The toy codecs' vocoder (``decode_with: griffin_lim``): mel -> waveform that the classical probes,
    not our code, read back as the sound's pitch and rhythm."""
    import dataclasses

    from models.audio import AudioCodec
    from models.codecs_config import debug
    from pipelines.toyworld_av import synth_sound
    from pipelines.toyworld_probes import audio_attributes
    from pipelines.toyworld_spec import PITCHES, RHYTHMS, Sound

    cfg = debug().audio
    cfg = dataclasses.replace(cfg, frames=128, vocoder=dataclasses.replace(cfg.vocoder, decode_with="griffin_lim"))
    codec = AudioCodec(cfg)
    sounds = [Sound(p, r) for p, _ in PITCHES.values() for r, _ in RHYTHMS.values()]
    waves = torch.stack([torch.from_numpy(synth_sound(s)).float() for s in sounds])
    out = codec.vocode(codec.waveform_to_mel(waves))
    assert out.shape == (len(sounds), 128 * 160)
    found = [audio_attributes(w.numpy(), 16000) for w in out]
    pitch = np.mean([f["pitch"] == s.pitch for f, s in zip(found, sounds)])
    rhythm = np.mean([f["rhythm"] == s.rhythm for f, s in zip(found, sounds)])
    assert pitch == 1.0 and rhythm == 1.0, (pitch, rhythm, found)
