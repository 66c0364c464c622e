"""CLAP audio prompt encoder (LAION-CLAP's HTSAT branch as transformers ``ClapAudioModelWithProjection``).

16 kHz waveform -> resampled to 48 kHz, first ``seconds`` kept, repeat-padded -> 64-bin log-mel at hop 480
(transformers' ``ClapFeatureExtractor``, LAION's fmin 50 / fmax 14000) -> HTSAT -> Linear-ReLU-Linear
projection to 768 -> L2 norm -> ``(b, 1, 768)``.
"""

from __future__ import annotations

import torch
import torchaudio.functional as AF
from torch import nn
from transformers import ClapAudioConfig, ClapAudioModelWithProjection, ClapFeatureExtractor

from models.codecs_config import ClapConfig
from models.encoders.clip import unit


def build_clap(cfg: ClapConfig) -> ClapAudioModelWithProjection:
    if cfg.pretrained:
        return ClapAudioModelWithProjection.from_pretrained(cfg.pretrained)
    return ClapAudioModelWithProjection(ClapAudioConfig(
        patch_embeds_hidden_size=cfg.patch_embeds_hidden_size, hidden_size=cfg.hidden_size,
        depths=list(cfg.depths), num_attention_heads=list(cfg.num_attention_heads), window_size=cfg.window_size,
        spec_size=cfg.spec_size, num_mel_bins=cfg.num_mel_bins, projection_dim=cfg.projection_dim,
        projection_hidden_act="relu", enable_fusion=False))


class ClapEncoder(nn.Module):
    def __init__(self, cfg: ClapConfig, input_rate: int = 16000):
        super().__init__()
        self.cfg, self.input_rate = cfg, input_rate
        self.model = build_clap(cfg)
        mel_bins = self.model.config.num_mel_bins
        self.features = ClapFeatureExtractor(
            feature_size=mel_bins, sampling_rate=cfg.sample_rate, hop_length=cfg.hop_length,
            max_length_s=cfg.seconds, fft_window_size=1024, frequency_min=50, frequency_max=14000,
            truncation="rand_trunc", padding="repeatpad")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def audio(self, waveform: torch.Tensor) -> torch.Tensor:
        """float ``(b, n)`` at 16 kHz -> ``(b, 1, 768)`` unit CLAP embedding."""
        if waveform.dim() != 2 or not waveform.is_floating_point():
            raise ValueError(f"audio must be a float (b, samples) waveform, got {waveform.dtype} "
                             f"{tuple(waveform.shape)}")
        x = AF.resample(waveform.float().cpu(), self.input_rate, self.cfg.sample_rate)
        n = int(round(self.cfg.seconds * self.cfg.sample_rate))
        x = x[:, :n]                                   # a deterministic cut (LAION crops at random)
        feats = self.features([row.numpy() for row in x], sampling_rate=self.cfg.sample_rate, max_length=n,
                              return_tensors="pt")["input_features"]
        out = self.model(input_features=feats.to(self.device, self.model.dtype))
        return unit(out.audio_embeds).unsqueeze(1)
