"""The one log-mel definition: AudioLDM's TacotronSTFT (CoDi's audio front end), in pure torch.

    S(t, f) = | Σ_n x_pad[t·hop + n] · w[n] · e^{-2πi f n / N} |        (magnitude STFT, Hann window w)
    M(t, m) = Σ_f B[m, f] · S(t, f)                                    (Slaney mel filterbank B)
    log-mel = log(max(M, 1e-5))                                       (dynamic-range compression, C = 1)

x_pad is x reflect-padded by N/2 on both sides, so a waveform of n samples gives n // hop + 1 frames.
No normalisation happens here: the autoencoder's ``encode`` removes the mean and peak-normalises first.
Used by models/audio.py and (once switched over) by the data pipeline; imports nothing of ours.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torchaudio.functional as AF


@dataclass(frozen=True)
class MelSpec:
    """TacotronSTFT settings; the defaults are AudioLDM's (16 kHz, 64 Slaney mels to 8 kHz, hop 10 ms)."""

    sample_rate: int = 16000
    n_fft: int = 1024
    win_length: int = 1024
    hop_length: int = 160
    n_mels: int = 64
    f_min: float = 0.0
    f_max: float = 8000.0
    clamp: float = 1e-5


AUDIOLDM = MelSpec()


def frame_count(n_samples: int, spec: MelSpec = AUDIOLDM) -> int:
    """Frames of a centred (reflect-padded by n_fft/2) STFT of ``n_samples`` samples."""
    return n_samples // spec.hop_length + 1


def mel_basis(spec: MelSpec = AUDIOLDM) -> torch.Tensor:
    """``(n_mels, n_fft//2 + 1)`` Slaney-scale, Slaney-normalised triangular filters (librosa's default)."""
    fb = AF.melscale_fbanks(spec.n_fft // 2 + 1, spec.f_min, spec.f_max, spec.n_mels, spec.sample_rate,
                            norm="slaney", mel_scale="slaney")
    return fb.T.contiguous()


def magnitude_stft(waveform: torch.Tensor, spec: MelSpec = AUDIOLDM) -> torch.Tensor:
    """``(b, n)`` -> ``(b, n_fft//2 + 1, frames)`` |STFT| with a periodic Hann window, reflect padding."""
    window = torch.hann_window(spec.win_length, periodic=True, dtype=waveform.dtype, device=waveform.device)
    stft = torch.stft(waveform, spec.n_fft, hop_length=spec.hop_length, win_length=spec.win_length,
                      window=window, center=True, pad_mode="reflect", return_complex=True)
    return stft.abs()


def log_mel(waveform: torch.Tensor, spec: MelSpec = AUDIOLDM) -> torch.Tensor:
    """``(b, n)`` float waveform -> ``(b, n // hop + 1, n_mels)`` natural-log magnitude mel spectrogram."""
    if waveform.dim() != 2:
        raise ValueError(f"log_mel expects a (batch, samples) waveform, got shape {tuple(waveform.shape)}")
    if waveform.shape[1] <= spec.n_fft // 2:
        raise ValueError(f"log_mel needs more than {spec.n_fft // 2} samples for reflect padding, "
                         f"got {waveform.shape[1]}")
    x = waveform.float()
    mel = mel_basis(spec).to(x.device) @ magnitude_stft(x, spec)
    return torch.log(torch.clamp(mel, min=spec.clamp)).transpose(1, 2).to(waveform.dtype)


def mel_to_magnitude(log_mel_spec: torch.Tensor, spec: MelSpec = AUDIOLDM, iters: int = 100) -> torch.Tensor:
    """``(b, t, m)`` log-mel -> ``(b, n_fft//2 + 1, t)`` magnitude Ŝ ≥ 0 with B Ŝ ≈ M = exp(log-mel):
    ``iters`` multiplicative updates Ŝ ← Ŝ ⊙ BᵀM / BᵀBŜ (Lee & Seung's for ‖BŜ − M‖², from Ŝ = BᵀM). They
    keep Ŝ non-negative and concentrate each band's energy on few bins, where the minimum-norm
    solution spreads it over the band (beating partials: an envelope that flickers)."""
    mel = log_mel_spec.float().exp().transpose(1, 2)                        # (b, m, t)
    basis = mel_basis(spec).to(mel.device)                                  # (m, f)
    numerator = basis.T @ mel
    magnitude = numerator.clone()
    gram = basis.T @ basis
    for _ in range(iters):
        magnitude = magnitude * numerator / (gram @ magnitude).clamp(min=1e-12)
    return magnitude


def griffin_lim(log_mel_spec: torch.Tensor, spec: MelSpec = AUDIOLDM, iters: int = 32) -> torch.Tensor:
    """``(b, t, m)`` log-mel -> ``(b, t · hop)`` waveform by Griffin-Lim phase recovery (torchaudio's, with
    momentum 0.99) on the least-squares magnitude: a vocoder with no weights."""
    magnitude = mel_to_magnitude(log_mel_spec, spec)
    window = torch.hann_window(spec.win_length, periodic=True, device=magnitude.device)
    n = log_mel_spec.shape[1] * spec.hop_length
    wave = AF.griffinlim(magnitude, window, spec.n_fft, spec.hop_length, spec.win_length, power=1.0, n_iter=iters,
                         momentum=0.99, length=None, rand_init=False)
    return torch.nn.functional.pad(wave, (0, max(0, n - wave.shape[-1])))[..., :n]
