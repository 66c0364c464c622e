"""``Codecs``: every CoDi autoencoder and prompt encoder in one module, behind three verbs.

    encode(modality, data)    -> scaled latent (posterior mean × scale factor)
    decode(modality, latent)  -> data
    condition(modality, data) -> (b, 1, 768) unit prompt embedding
Data layouts: image uint8 (b, h, w, 3); video uint8 (b, f, h, w, 3); audio float32 (b, n) at 16 kHz;
text list[str]. Latents: image (b, 4, h/8, w/8); video (b, 4, f, h/8, w/8); audio (b, 8, frames/4, 16);
text (b, 768). ``save_pretrained``/``from_pretrained`` write/read config.json + model.safetensors
(+ tokenizers/ copies), nothing else. Every piece is optional (``None`` in the config = absent: not built,
not saved, and a verb that needs it raises one ``UsageError`` naming the piece and the modality).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from common.config import from_dict, to_dict
from common.errors import ConfigError, UsageError
from models.audio import AudioCodec
from models.autoencoders.kl import ImageCodec
from models.codecs_config import CodecsConfig
from models.encoders.clap import ClapEncoder
from models.encoders.clip import ClipEncoder
from models.optimus import Optimus

MODALITIES = ("image", "video", "audio", "text")
CONFIG_FILE, WEIGHTS_FILE, TOKENIZERS_DIR = "config.json", "model.safetensors", "tokenizers"


def sync_sizes(cfg: CodecsConfig, codecs: "Codecs") -> None:
    """Copy the sizes of pieces loaded from a library ``pretrained`` dir back into ``cfg``, so that a
    saved config rebuilds the same architectures from model.safetensors alone (absent pieces skipped)."""
    vaes = []
    if cfg.image is not None:
        vaes.append((cfg.image, codecs.image.vae))
    if cfg.audio is not None:
        vaes.append((cfg.audio.vae, codecs.audio.vae))
    for vae_cfg, vae in vaes:
        c = vae.config
        vae_cfg.in_channels, vae_cfg.latent_channels = c.in_channels, c.latent_channels
        vae_cfg.block_out_channels = tuple(c.block_out_channels)
        vae_cfg.layers_per_block, vae_cfg.norm_num_groups = c.layers_per_block, c.norm_num_groups
    if cfg.audio is not None:
        v = codecs.audio.vocoder.config
        cfg.audio.vocoder.model_in_dim, cfg.audio.vocoder.upsample_initial_channel = (
            v.model_in_dim, v.upsample_initial_channel)
        cfg.audio.vocoder.upsample_rates, cfg.audio.vocoder.upsample_kernel_sizes = (
            tuple(v.upsample_rates), tuple(v.upsample_kernel_sizes))
        cfg.audio.vocoder.resblock_kernel_sizes = tuple(v.resblock_kernel_sizes)
        cfg.audio.vocoder.resblock_dilation_sizes = tuple(tuple(d) for d in v.resblock_dilation_sizes)
    if cfg.clip is not None:
        t, vi = codecs.clip.model.config.text_config, codecs.clip.model.config.vision_config
        c = cfg.clip
        c.text_hidden_size, c.text_layers, c.text_heads = t.hidden_size, t.num_hidden_layers, t.num_attention_heads
        c.text_intermediate_size, c.vocab_size, c.max_position_embeddings = (
            t.intermediate_size, t.vocab_size, t.max_position_embeddings)
        c.vision_hidden_size, c.vision_layers, c.vision_heads = (
            vi.hidden_size, vi.num_hidden_layers, vi.num_attention_heads)
        c.vision_intermediate_size, c.image_size, c.patch_size = vi.intermediate_size, vi.image_size, vi.patch_size
        c.projection_dim = codecs.clip.model.config.projection_dim
    if cfg.clap is not None:
        a = codecs.clap.model.config
        k = cfg.clap
        k.patch_embeds_hidden_size, k.depths, k.num_attention_heads = (
            a.patch_embeds_hidden_size, tuple(a.depths), tuple(a.num_attention_heads))
        k.window_size, k.spec_size, k.num_mel_bins, k.projection_dim = (
            a.window_size, a.spec_size, a.num_mel_bins, a.projection_dim)


# (verb, modality) -> the piece that serves it, and what that piece is (for the absent-piece error)
SERVES = {("code", "image"): "image", ("code", "video"): "image", ("code", "audio"): "audio",
          ("code", "text"): "text", ("condition", "text"): "clip", ("condition", "image"): "clip",
          ("condition", "video"): "clip", ("condition", "audio"): "clap"}
WHAT = {"image": "image VAE", "audio": "audio VAE + vocoder", "text": "Optimus text VAE",
        "clip": "CLIP prompt encoder", "clap": "CLAP prompt encoder"}


class Codecs(nn.Module):
    def __init__(self, cfg: CodecsConfig):
        super().__init__()
        self.cfg = cfg
        self.image = ImageCodec(cfg.image) if cfg.image is not None else None
        self.audio = AudioCodec(cfg.audio) if cfg.audio is not None else None
        self.text = Optimus(cfg.text) if cfg.text is not None else None
        self.clip = ClipEncoder(cfg.clip) if cfg.clip is not None else None
        self.clap = ClapEncoder(cfg.clap, input_rate=cfg.sample_rate) if cfg.clap is not None else None
        sync_sizes(cfg, self)
        for module, trainable in self.pieces():
            module.requires_grad_(trainable)
        self.train(False)

    def pieces(self) -> list[tuple[nn.Module, bool]]:
        """(module, trainable) per piece: each is trained or frozen as a whole."""
        c, out = self.cfg, []
        if self.image is not None:
            out.append((self.image, c.image.trainable))
        if self.audio is not None:
            out += [(self.audio.vae, c.audio.vae.trainable), (self.audio.vocoder, c.audio.vocoder.trainable)]
        for name in ("text", "clip", "clap"):
            if getattr(self, name) is not None:
                out.append((getattr(self, name), getattr(c, name).trainable))
        return out

    def train(self, mode: bool = True) -> "Codecs":
        """Frozen pieces stay in eval mode (no dropout) whatever the mode."""
        super().train(mode)
        for module, trainable in self.pieces():
            module.train(mode and trainable)
        return self

    @staticmethod
    def _modality(modality: str) -> str:
        if modality not in MODALITIES:
            raise ValueError(f"unknown modality {modality!r} (known: {', '.join(MODALITIES)})")
        return modality

    def _serve(self, verb: str, modality: str) -> str:
        """The modality, after checking the piece that serves ``verb`` for it is present."""
        m = self._modality(modality)
        piece = SERVES[("condition" if verb in ("condition", "null") else "code", m)]
        if getattr(self, piece) is None:
            raise UsageError(f"cannot {verb} {m!r}: these codecs have no {WHAT[piece]} (config {piece}: null; "
                             f"present: {', '.join(self.cfg.present()) or 'none'})")
        return m

    def encode(self, modality: str, data):
        """Data -> scaled diffusion latent."""
        m = self._serve("encode", modality)
        if m == "image":
            return self.image.encode_image(data)
        if m == "video":
            return self.image.encode_video(data)
        if m == "audio":
            return self.audio.encode(data)
        return self.text.encode(data)

    def decode(self, modality: str, latent: torch.Tensor):
        """Scaled latent -> data (uint8 image/video, float waveform, list[str])."""
        m = self._serve("decode", modality)
        if m == "image":
            return self.image.decode_image(latent)
        if m == "video":
            return self.image.decode_video(latent)
        if m == "audio":
            return self.audio.decode(latent)
        return self.text.decode(latent)

    def condition(self, modality: str, data) -> torch.Tensor:
        """Prompt -> ``(b, 1, 768)`` unit embedding (CLIP for text/image/video, CLAP for audio)."""
        m = self._serve("condition", modality)
        if m == "text":
            return self.clip.text(data)
        if m == "image":
            return self.clip.image(data)
        if m == "video":
            return self.clip.video(data)
        return self.clap.audio(data)

    def null(self, modality: str, batch: int) -> torch.Tensor:
        """The unconditional embedding: CLIP of "" / of an all-zero image or 1-frame video; CLAP of silence."""
        m = self._serve("null", modality)
        if m == "text":
            return self.condition("text", [""] * batch)
        if m in ("image", "video"):
            size = self.clip.image_size
            frame = (1,) if m == "video" else ()
            return self.condition(m, torch.zeros(batch, *frame, size, size, 3, dtype=torch.uint8))
        samples = (self.audio.samples if self.audio is not None
                   else int(round(self.cfg.clap.seconds * self.cfg.sample_rate)))
        return self.condition("audio", torch.zeros(batch, samples))

    # ---- persistence -------------------------------------------------------------------------------

    def tokenizers(self) -> dict[str, object]:
        """The tokenizers the present pieces hold (None where a present piece has none)."""
        out = {}
        if self.text is not None:
            out.update(bert=self.text.enc_tok, gpt2=self.text.dec_tok)
        if self.clip is not None:
            out["clip"] = self.clip.tokenizer
        return out

    def save_pretrained(self, directory: str | Path) -> Path:
        """config.json (tokenizer paths point into ``tokenizers/``), model.safetensors, tokenizers/."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        cfg = to_dict(self.cfg)     # absent pieces stay null
        for piece in ("image", "clip", "clap"):
            if cfg[piece] is not None:
                cfg[piece]["pretrained"] = None
        if cfg["audio"] is not None:
            cfg["audio"]["vae"]["pretrained"] = cfg["audio"]["vocoder"]["pretrained"] = None
        tokenizers = self.tokenizers()
        for name, tok in tokenizers.items():
            if tok is not None:
                tok.save_pretrained(str(directory / TOKENIZERS_DIR / name))
        saved = lambda name: f"{TOKENIZERS_DIR}/{name}" if tokenizers.get(name) is not None else None
        if cfg["text"] is not None:
            cfg["text"]["encoder_tokenizer"], cfg["text"]["decoder_tokenizer"] = saved("bert"), saved("gpt2")
        if cfg["clip"] is not None:
            cfg["clip"]["tokenizer"] = saved("clip")
        (directory / CONFIG_FILE).write_text(json.dumps(cfg, indent=2), encoding="utf-8")
        save_model(self, str(directory / WEIGHTS_FILE))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "Codecs":
        directory = Path(directory)
        path = directory / CONFIG_FILE
        if not path.is_file():
            raise ConfigError(str(path), "", "no codecs config here (expected config.json from save_pretrained)")
        data = json.loads(path.read_text(encoding="utf-8"))
        cfg = from_dict(CodecsConfig, data, source=str(path))
        for obj, attr in ((cfg.text, "encoder_tokenizer"), (cfg.text, "decoder_tokenizer"), (cfg.clip, "tokenizer")):
            if obj is not None and getattr(obj, attr):
                setattr(obj, attr, str(directory / getattr(obj, attr)))
        model = cls(cfg)
        weights = directory / WEIGHTS_FILE
        if not weights.is_file():
            raise ConfigError(str(weights), "", "weights file missing")
        missing, unexpected = load_model(model, str(weights), strict=False)
        if missing or unexpected:
            raise ConfigError(str(weights), (missing or unexpected)[0],
                              f"{len(missing)} missing and {len(unexpected)} unexpected tensors "
                              "(saved with a different config?)")
        return model

