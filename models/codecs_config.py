"""Typed configs of CoDi's autoencoders and prompt encoders: ``released()`` sizes and a tiny ``debug()``.

Every piece has ``trainable`` (CoDi freezes all of them while training the diffusers; the toy world trains
small VAEs and aligns encoders from scratch, so the schedule flips these) and ``pretrained``: a local
directory in the library's own layout (diffusers ``AutoencoderKL``, transformers ``SpeechT5HifiGan``,
``CLIPModel``, ``ClapAudioModelWithProjection``) loaded with its ``from_pretrained``; when it is set the
architecture comes from that directory and the size fields here are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

CONTEXT_DIM = 768  # CoDi's shared prompt space (CLIP ViT-L/14 projection width)


@dataclass
class KLVAEConfig:
    """An LDM KL autoencoder (diffusers ``AutoencoderKL``); latent = posterior mean × ``scale``."""

    in_channels: int = 3
    latent_channels: int = 4
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)   # ch × ch_mult
    layers_per_block: int = 2
    norm_num_groups: int = 32
    scale: float = 0.18215
    trainable: bool = False
    pretrained: str | None = None

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


@dataclass
class VocoderConfig:
    """HiFi-GAN 16 kHz / 64 mel (transformers ``SpeechT5HifiGan``); hop = prod(upsample_rates)."""

    model_in_dim: int = 64
    upsample_initial_channel: int = 1024
    upsample_rates: tuple[int, ...] = (5, 4, 2, 2, 2)
    upsample_kernel_sizes: tuple[int, ...] = (16, 16, 8, 4, 4)
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    trainable: bool = False
    pretrained: str | None = None
    # what turns decoded mels into sound: the HiFi-GAN above (AudioLDM, CoDi), or Griffin-Lim phase
    # recovery (common/melspec.py: no weights, for toy worlds where no trained vocoder exists)
    decode_with: Literal["hifigan", "griffin_lim"] = "hifigan"
    griffin_lim_iters: int = 32


@dataclass
class AudioConfig:
    """AudioLDM: 16 kHz waveform -> log-mel (frames, 64) -> KL-VAE (8 channels) ; vocoder back."""

    vae: KLVAEConfig = field(default_factory=lambda: KLVAEConfig(
        in_channels=1, latent_channels=8, block_out_channels=(128, 256, 512), scale=0.9228))
    vocoder: VocoderConfig = field(default_factory=VocoderConfig)
    frames: int = 1024          # 1024 frames × 160 samples ≈ 10.24 s at 16 kHz
    peak: float = 0.5           # waveform peak after normalisation


@dataclass
class BertConfigLite:
    vocab_size: int = 28996
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512


@dataclass
class GPT2ConfigLite:
    vocab_size: int = 50260     # GPT-2's 50257 + <PAD>, <BOS>, <EOS>
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_positions: int = 1024


@dataclass
class OptimusConfig:
    """Optimus text VAE: BERT encoder -> (μ, log σ²) -> GPT-2 decoder fed the latent twice."""

    bert: BertConfigLite = field(default_factory=BertConfigLite)
    gpt2: GPT2ConfigLite = field(default_factory=GPT2ConfigLite)
    latent_size: int = 768
    scale: float = 4.3108
    max_length: int = 30        # greedy decoding stops after this many tokens (or at <EOS>)
    max_input_tokens: int = 512
    encoder_tokenizer: str | None = None   # a local BertTokenizer dir (vocab.txt)
    decoder_tokenizer: str | None = None   # a local GPT2Tokenizer dir (vocab.json + merges.txt)
    dropout: float = 0.1
    # what BERT hands the latent head: "cls" (Optimus: the pooler on the [CLS] state; the released
    # weights) or "mean" (masked mean of the last hidden states; for encoders trained from scratch at
    # toy sizes, whose [CLS] state never learned to gather the caption: after 500 steps it was the same
    # for every caption, and reconstructions kept only the last words)
    pooling: str = "cls"
    trainable: bool = False

    def __post_init__(self):
        if self.pooling not in ("cls", "mean"):
            raise ValueError(f"text.pooling must be 'cls' or 'mean', got {self.pooling!r}")


@dataclass
class ClipConfig:
    """CLIP (transformers ``CLIPModel``), ViT-L/14 in the release."""

    text_hidden_size: int = 768
    text_layers: int = 12
    text_heads: int = 12
    text_intermediate_size: int = 3072
    vocab_size: int = 49408
    max_position_embeddings: int = 77
    vision_hidden_size: int = 1024
    vision_layers: int = 24
    vision_heads: int = 16
    vision_intermediate_size: int = 4096
    image_size: int = 224
    patch_size: int = 14
    projection_dim: int = CONTEXT_DIM
    temporal: bool = False                  # CoDi's temporal attention in every vision layer (video prompts)
    tokenizer: str | None = None            # a local CLIPTokenizer dir
    trainable: bool = False
    pretrained: str | None = None


@dataclass
class ClapConfig:
    """CLAP audio branch (HTSAT, transformers ``ClapAudioModelWithProjection``), projection to 768."""

    patch_embeds_hidden_size: int = 256
    depths: tuple[int, ...] = (2, 2, 12, 2)
    num_attention_heads: tuple[int, ...] = (4, 8, 16, 32)
    window_size: int = 8
    spec_size: int = 256
    num_mel_bins: int = 64
    projection_dim: int = CONTEXT_DIM
    sample_rate: int = 48000
    seconds: float = 10.0
    hop_length: int = 480
    trainable: bool = False
    pretrained: str | None = None

    @property
    def hidden_size(self) -> int:
        return self.patch_embeds_hidden_size * 2 ** (len(self.depths) - 1)


@dataclass
class CodecsConfig:
    """Each piece is optional: ``None`` means the piece is absent (not built, not saved; using it is an
    error naming it). The defaults are the full release."""

    image: KLVAEConfig | None = field(default_factory=KLVAEConfig)      # image + video latents
    audio: AudioConfig | None = field(default_factory=AudioConfig)      # audio latents (VAE + vocoder)
    text: OptimusConfig | None = field(default_factory=OptimusConfig)   # text latents
    clip: ClipConfig | None = field(default_factory=ClipConfig)         # text/image/video prompts
    clap: ClapConfig | None = field(default_factory=ClapConfig)         # audio prompts
    sample_rate: int = 16000    # audio in and out of encode/decode

    def present(self) -> list[str]:
        return [name for name in PIECES if getattr(self, name) is not None]


PIECES = ("image", "audio", "text", "clip", "clap")


def only(**pieces) -> CodecsConfig:
    """A config holding just the given pieces, e.g. ``only(image=KLVAEConfig())``; the rest absent."""
    unknown = sorted(set(pieces) - set(PIECES))
    if unknown:
        raise ValueError(f"unknown codecs piece {unknown[0]!r} (pieces: {', '.join(PIECES)})")
    return CodecsConfig(**{name: pieces.get(name) for name in PIECES})


def released() -> CodecsConfig:
    """The released CoDi sizes (tokenizer directories must still be set to local copies); its CLIP carries
    the temporal attention layers of CoDi's video prompt encoder."""
    return CodecsConfig(clip=ClipConfig(temporal=True))


def debug() -> CodecsConfig:
    """Tiny sizes for CPU tests: every piece is the same architecture family, seconds to run."""
    return CodecsConfig(
        image=KLVAEConfig(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4),
        audio=AudioConfig(
            vae=KLVAEConfig(in_channels=1, latent_channels=8, block_out_channels=(8, 16), layers_per_block=1,
                            norm_num_groups=4, scale=0.9228),
            vocoder=VocoderConfig(upsample_initial_channel=32, resblock_kernel_sizes=(3,), resblock_dilation_sizes=((1, 3),)),
            frames=32),
        text=OptimusConfig(
            bert=BertConfigLite(vocab_size=128, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=64),
            gpt2=GPT2ConfigLite(vocab_size=640, n_embd=32, n_layer=2, n_head=2, n_positions=64),
            latent_size=16, max_length=30, max_input_tokens=64),
        clip=ClipConfig(text_hidden_size=32, text_layers=1, text_heads=2, text_intermediate_size=64,
                        vocab_size=600, max_position_embeddings=32, vision_hidden_size=32, vision_layers=1,
                        vision_heads=2, vision_intermediate_size=64, image_size=32, patch_size=8),
        clap=ClapConfig(patch_embeds_hidden_size=8, depths=(1, 1), num_attention_heads=(1, 2), window_size=4,
                        spec_size=64, num_mel_bins=16, seconds=1.0),
    )
