"""Autoencoder stages (toy/debug schedules, where no pretrained weights exist): the image/video KL-VAE,
the audio mel KL-VAE, the HiFi-GAN vocoder and the Optimus text VAE, each trained on its own.

    KL-VAE (LDM):   z = μ_φ(x) + σ_φ(x) ⊙ ε,  L = Σ|x − D_θ(z)| + β · KL(q_φ(z|x) ‖ N(0, I))    (β = 1e-6)
    vocoder:        L = mean |ℓ(G(M)) − ℓ(x)|,  ℓ = log(mel + 1e-5)   (HiFi-GAN's mel L1; no discriminators)
    Optimus:        L = −log p(x|z) + β · KL           (its β-VAE objective, as ``Optimus.loss``)

No perceptual or adversarial terms: enough for toy worlds, not a substitute for released weights.
Video trains the image VAE frame by frame (CoDi encodes video per frame with the image VAE).

Task shape: trainable = the piece (wrapped so that ONE forward takes the step's drawn noise);
frozen = none; ``batch_inputs`` prepares the piece's input (unit pixels, normalised log-mel, token
ids) and draws the posterior noise; ``loss`` as above. ``export_state`` names the weights as in
``Codecs`` (``image.vae.*``, ``audio.vae.*``, ``audio.vocoder.*``, ``text.*``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Mapping, Optional

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn

from common.melspec import AUDIOLDM, mel_basis, magnitude_stft
from models.audio import build_vocoder, fit_frames, fit_length, log_mel, normalize_waveform
from models.autoencoders.kl import build_kl_vae, uint8_to_unit
from models.codecs_config import AudioConfig, CodecsConfig
from models.optimus import Optimus, kl_divergence, load_tokenizers
from training.objectives import beta_vae_loss, l1_reconstruction
from training.tasks.base import strip_prefix
from training.tasks.batches import modality_data

Piece = Literal["image", "video", "audio", "vocoder", "text"]
DATA = {"image": "image", "video": "video", "audio": "audio", "vocoder": "audio", "text": "text"}
CODECS_PREFIX = {"image": "image.vae.", "video": "image.vae.", "audio": "audio.vae.", "vocoder": "audio.vocoder.",
                 "text": "text."}


@dataclass
class AutoencoderObjective:
    piece: Piece = "image"
    beta: float = 1e-6          # KL weight: LDM's 1e-6 for the KL-VAEs; Optimus' β for text (e.g. 1.0)
    shard_set: str = "data"

    def __post_init__(self):
        if self.piece not in DATA:
            raise ValueError(f"piece must be one of {', '.join(DATA)}, got {self.piece!r}")
        if self.beta < 0:
            raise ValueError("beta must be >= 0")


class KLVAEModule(nn.Module):
    """A diffusers ``AutoencoderKL`` whose forward takes the reparameterisation noise ε (drawn up front)."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, x: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        """(x̂, KL per example) with z = μ + σ ⊙ ε (diffusers' posterior and its ``kl()``)."""
        posterior = self.vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * noise.to(posterior.mean.dtype)
        return self.vae.decode(z).sample, posterior.kl()


def soft_log_mel(waveform: Tensor) -> Tensor:
    """``(b, n)`` → ``(b, frames, 64)`` log(mel + 1e-5): the codecs' log-mel with an additive floor in place of
    its clamp, so a near-silent output (a fresh HiFi-GAN emits ~1e-9) still gets a gradient."""
    x = waveform.float()
    return torch.log(mel_basis(AUDIOLDM).to(x.device) @ magnitude_stft(x) + AUDIOLDM.clamp).transpose(1, 2)


class VocoderModule(nn.Module):
    """HiFi-GAN ``G`` followed by the (parameter-free) soft log-mel of its waveform, cut to the input's frames."""

    def __init__(self, vocoder: nn.Module, frames: int):
        super().__init__()
        self.vocoder, self.frames = vocoder, frames

    def forward(self, mel: Tensor) -> Tensor:
        wav = self.vocoder(mel)
        wav = wav if wav.dim() == 2 else wav.unsqueeze(0)
        return fit_frames(soft_log_mel(wav), mel.shape[1])


class OptimusModule(nn.Module):
    """Optimus with ε as an input: per-example (−log p(x|z), KL), exactly ``Optimus.loss``'s terms."""

    def __init__(self, optimus: Optimus):
        super().__init__()
        self.optimus = optimus

    def forward(self, ids: Tensor, mask: Tensor, targets: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.optimus.encoder(ids, mask)
        z = mu + noise.to(mu.dtype) * (0.5 * logvar).exp()
        logits = self.optimus.decoder(z, targets[:, :-1]).logits
        pad = self.optimus.dec_tok.pad_token_id
        rec = F.cross_entropy(logits.transpose(1, 2), targets[:, 1:], ignore_index=pad, reduction="none").sum(1)
        return rec, kl_divergence(mu, logvar)


def fitted_waveform(waveform: Tensor, cfg: AudioConfig) -> Tensor:
    """AudioLDM's normalisation, cut/padded to ``frames · hop`` samples (the codec's input to its log-mel)."""
    return fit_length(normalize_waveform(waveform.float(), cfg.peak), cfg.frames * AUDIOLDM.hop_length)


def waveform_to_vae_mel(waveform: Tensor, cfg: AudioConfig) -> Tensor:
    """``(b, n)`` 16 kHz waveform → ``(b, frames, 64)`` normalised, fitted log-mel (``AudioCodec.waveform_to_mel``)."""
    return fit_frames(log_mel(fitted_waveform(waveform, cfg)), cfg.frames)


def optimus_tokens(tokenizers, texts: list[str], cfg) -> dict[str, Tensor]:
    """Encoder ids/mask (BERT) and decoder targets ``<BOS> tokens <EOS> <PAD>…`` (GPT-2), as ``Optimus`` makes them."""
    enc_tok, dec_tok = tokenizers
    enc = enc_tok(list(texts), padding=True, truncation=True, max_length=cfg.max_input_tokens, return_tensors="pt")
    rows = [[dec_tok.bos_token_id] + dec_tok(t, add_special_tokens=False)["input_ids"][: cfg.max_length]
            + [dec_tok.eos_token_id] for t in texts]
    width = max(len(r) for r in rows)
    rows = [r + [dec_tok.pad_token_id] * (width - len(r)) for r in rows]
    return {"ids": enc["input_ids"], "mask": enc["attention_mask"], "targets": torch.tensor(rows, dtype=torch.long)}


class AutoencoderTask:
    """The ``autoencoder`` stage kind, one piece per task (the pieces train in parallel stages)."""

    def __init__(self, objective: AutoencoderObjective, codecs: CodecsConfig):
        self.objective, self.cfg = objective, codecs
        self.tokenizers = load_tokenizers(codecs.text) if objective.piece == "text" else None

    @property
    def required(self) -> list[str]:
        return [DATA[self.objective.piece]]

    def shard_set_needs(self) -> tuple[list[str], list[str], list[str]]:
        """With a second shard set (the text VAE on image and audio captions): both carry the piece's data."""
        return self.required, self.required, []

    def vae_config(self):
        return self.cfg.audio.vae if self.objective.piece == "audio" else self.cfg.image

    def build_trainable(self) -> nn.Module:
        piece = self.objective.piece
        if piece == "vocoder":
            return VocoderModule(build_vocoder(self.cfg.audio.vocoder), self.cfg.audio.frames)
        if piece == "text":
            return OptimusModule(Optimus(self.cfg.text, tokenizers=self.tokenizers))
        return KLVAEModule(build_kl_vae(self.vae_config()))

    def build_frozen(self) -> Optional[nn.Module]:
        return None

    def batch_inputs(self, batch: Mapping, frozen_part, generator: torch.Generator,
                     device: torch.device) -> dict[str, Tensor]:
        o = self.objective
        data = modality_data(batch, DATA[o.piece], o.shard_set)
        if o.piece == "text":
            tokens = optimus_tokens(self.tokenizers, data, self.cfg.text)
            noise = torch.randn(len(data), self.cfg.text.latent_size, generator=generator)
            return {k: v.to(device) for k, v in {**tokens, "noise": noise}.items()}
        if o.piece in ("audio", "vocoder"):
            mel = waveform_to_vae_mel(data, self.cfg.audio)
            if o.piece == "vocoder":
                target = fit_frames(soft_log_mel(fitted_waveform(data, self.cfg.audio)), self.cfg.audio.frames)
                return {"mel": mel.to(device), "target": target.to(device)}
            x = mel.unsqueeze(1)
        else:
            x = uint8_to_unit(data if o.piece == "image" else data.flatten(0, 1))   # video: every frame an image
        vae = self.vae_config()
        f = 2 ** (len(vae.block_out_channels) - 1)
        noise = torch.randn(x.shape[0], vae.latent_channels, x.shape[2] // f, x.shape[3] // f, generator=generator)
        return {"x": x.to(device), "noise": noise.to(device)}

    def loss(self, module, inputs: Mapping[str, Tensor], dtype: torch.dtype = torch.float32) -> Tensor:
        piece, beta = self.objective.piece, self.objective.beta
        if piece == "vocoder":
            return (module(inputs["mel"].to(dtype)).float() - inputs["target"].float()).abs().mean()
        if piece == "text":
            rec, kl = module(inputs["ids"], inputs["mask"], inputs["targets"], inputs["noise"])
            return beta_vae_loss(rec, kl, beta)
        reconstruction, kl = module(inputs["x"].to(dtype), inputs["noise"])
        return beta_vae_loss(l1_reconstruction(inputs["x"], reconstruction), kl, beta)

    def export_state(self, trainable: dict[str, Tensor], frozen_part=None) -> dict[str, Tensor]:
        """The piece's weights under their ``Codecs`` names (merge into a ``Codecs`` state to save it)."""
        inner = {"vocoder": "vocoder.", "text": "optimus."}.get(self.objective.piece, "vae.")
        return {CODECS_PREFIX[self.objective.piece] + k: v for k, v in strip_prefix(trainable, inner).items()}

    def save_pretrained(self, directory: Path, state: dict[str, Tensor], weights_name: str) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(directory / weights_name))
