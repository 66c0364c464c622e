"""Audio codec (AudioLDM): 16 kHz waveform <-> log-mel <-> KL-VAE latent; HiFi-GAN vocoder back to sound.

encode:  x <- x - mean(x);  x <- 0.5 · x / max|x|;  cut/zero-pad to frames·hop samples;
         M = log_mel(x)[:frames];  z = s · μ_φ(M)                 -> (b, 8, frames/4, 16) at released size
decode:  M̂ = D_θ(z / s);  ŵ = HiFiGAN(M̂)                          -> (b, frames·hop) waveform
``log_mel`` is the single definition in common/melspec.py (TacotronSTFT), shared with the data pipeline.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

from common.melspec import AUDIOLDM, MelSpec, frame_count, griffin_lim
from common.melspec import log_mel as _log_mel
from models.autoencoders.kl import build_kl_vae, kl_decode, kl_encode
from models.codecs_config import AudioConfig, VocoderConfig


def log_mel(waveform: torch.Tensor, spec: MelSpec = AUDIOLDM) -> torch.Tensor:
    """``(b, n)`` waveform -> ``(b, n // 160 + 1, 64)``: TacotronSTFT's log-mel, no normalisation."""
    return _log_mel(waveform, spec)


def normalize_waveform(waveform: torch.Tensor, peak: float = 0.5) -> torch.Tensor:
    """AudioLDM's normalisation: remove the mean, scale the peak to ``peak`` (1e-8 guards silence)."""
    x = waveform - waveform.mean(dim=1, keepdim=True)
    return peak * x / (x.abs().amax(dim=1, keepdim=True) + 1e-8)


def fit_length(waveform: torch.Tensor, n: int) -> torch.Tensor:
    """Cut to, or zero-pad at the end to, ``n`` samples."""
    if waveform.shape[1] >= n:
        return waveform[:, :n]
    return torch.nn.functional.pad(waveform, (0, n - waveform.shape[1]))


def fit_frames(mel: torch.Tensor, frames: int) -> torch.Tensor:
    """``(b, t, m)`` cut to, or zero-padded to, ``frames`` frames (AudioLDM's ``_pad_spec``)."""
    if mel.shape[1] >= frames:
        return mel[:, :frames]
    return torch.nn.functional.pad(mel, (0, 0, 0, frames - mel.shape[1]))


def build_vocoder(cfg: VocoderConfig) -> SpeechT5HifiGan:
    """HiFi-GAN as transformers' ``SpeechT5HifiGan`` (no input normalisation, as AudioLDM)."""
    if cfg.pretrained:
        return SpeechT5HifiGan.from_pretrained(cfg.pretrained)
    config = SpeechT5HifiGanConfig(
        model_in_dim=cfg.model_in_dim, sampling_rate=AUDIOLDM.sample_rate,
        upsample_initial_channel=cfg.upsample_initial_channel, upsample_rates=list(cfg.upsample_rates),
        upsample_kernel_sizes=list(cfg.upsample_kernel_sizes),
        resblock_kernel_sizes=list(cfg.resblock_kernel_sizes),
        resblock_dilation_sizes=[list(d) for d in cfg.resblock_dilation_sizes], normalize_before=False)
    return SpeechT5HifiGan(config)


class AudioCodec(nn.Module):
    """AudioLDM's mel KL-VAE plus the HiFi-GAN vocoder."""

    def __init__(self, cfg: AudioConfig, spec: MelSpec = AUDIOLDM):
        super().__init__()
        self.cfg, self.spec = cfg, spec
        self.vae = build_kl_vae(cfg.vae)
        self.vocoder = build_vocoder(cfg.vocoder)
        hop = 1
        for r in self.vocoder.config.upsample_rates:
            hop *= r
        if hop != spec.hop_length:
            raise ValueError(f"vocoder upsamples by {hop}, the mel hop is {spec.hop_length}")

    @property
    def samples(self) -> int:
        return self.cfg.frames * self.spec.hop_length

    def waveform_to_mel(self, waveform: torch.Tensor) -> torch.Tensor:
        """``(b, n)`` -> normalised, fitted ``(b, frames, 64)`` log-mel (the VAE's input, before channels)."""
        if waveform.dim() != 2 or not waveform.is_floating_point():
            raise ValueError(f"audio must be a float (b, samples) waveform, got {waveform.dtype} "
                             f"{tuple(waveform.shape)}")
        x = fit_length(normalize_waveform(waveform.float(), self.cfg.peak), self.samples)
        mel = log_mel(x, self.spec)
        assert mel.shape[1] == frame_count(self.samples, self.spec)
        return fit_frames(mel, self.cfg.frames)

    def encode(self, waveform: torch.Tensor) -> torch.Tensor:
        """``(b, n)`` 16 kHz waveform -> ``(b, 8, frames/f, mels/f)`` scaled latent."""
        mel = self.waveform_to_mel(waveform.to(self.vae.device))
        return kl_encode(self.vae, mel.unsqueeze(1).to(self.vae.dtype), self.cfg.vae.scale)

    def decode_mel(self, z: torch.Tensor) -> torch.Tensor:
        """Latent -> ``(b, frames, 64)`` log-mel."""
        return kl_decode(self.vae, z.to(self.vae.dtype), self.cfg.vae.scale).squeeze(1)

    def vocode(self, mel: torch.Tensor) -> torch.Tensor:
        """``(b, frames, 64)`` log-mel -> ``(b, frames · hop)`` waveform (HiFi-GAN, or Griffin-Lim per the config)."""
        if self.cfg.vocoder.decode_with == "griffin_lim":
            return griffin_lim(mel.float(), self.spec, self.cfg.vocoder.griffin_lim_iters)
        wav = self.vocoder(mel.to(self.vocoder.dtype))
        wav = wav if wav.dim() == 2 else wav.unsqueeze(0)
        # HiFi-GAN's first transposed conv (k 16, stride 5, pad 5) adds a sample: 160·frames + 32 come out.
        return wav[:, : mel.shape[1] * self.spec.hop_length]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vocode(self.decode_mel(z)).float()
