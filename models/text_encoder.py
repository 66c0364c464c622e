"""The text prompt encoder C_y: open_clip's CLIP text tower, returning per-token states for cross-attention.

CoDi conditions its image diffuser on CLIP ViT-L/14 text tokens. With ``model_name`` set this loads
the real tower (``open_clip.create_model(name, pretrained=tag)``); without it, a random-init
``TextTransformer`` of the same architecture at the configured (tiny) size, for tests and demos.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn


@dataclass
class TextEncoderConfig:
    model_name: Optional[str] = None   # open_clip architecture, e.g. "ViT-L-14"
    pretrained: Optional[str] = None   # open_clip pretrained tag or local .safetensors/.bin path
    width: int = 64
    heads: int = 2
    layers: int = 2
    context_length: int = 32
    vocab_size: int = 49408            # CLIP's BPE vocabulary (the tokenizer ships with open_clip)
    freeze: bool = True                # CoDi keeps prompt encoders frozen while training diffusers


def token_states(tower: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Final-layer-normed token states ``(b, n, width)`` of a CLIP text tower (before pooling)."""
    x = tower.token_embedding(tokens) + tower.positional_embedding[: tokens.shape[1]]
    x = tower.transformer(x, attn_mask=tower.attn_mask[: tokens.shape[1], : tokens.shape[1]])
    return tower.ln_final(x)


class CLIPTextEncoder(nn.Module):
    """Captions -> token states; owns its tokenizer so callers pass plain strings."""

    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        import open_clip

        self.cfg = cfg
        if cfg.model_name:
            model = open_clip.create_model(cfg.model_name, pretrained=cfg.pretrained)
            model.visual = None  # only the text tower is used
            self.tower = model
            self.tokenizer = open_clip.get_tokenizer(cfg.model_name)
            self.width = model.transformer.width
        else:
            from open_clip.tokenizer import SimpleTokenizer
            from open_clip.transformer import TextTransformer

            self.tower = TextTransformer(context_length=cfg.context_length, vocab_size=cfg.vocab_size,
                                         width=cfg.width, heads=cfg.heads, layers=cfg.layers,
                                         output_dim=cfg.width)
            self.tokenizer = SimpleTokenizer(context_length=cfg.context_length)
            self.width = cfg.width
        if cfg.freeze:
            self.tower.requires_grad_(False)

    def tokenize(self, captions: list[str]) -> torch.Tensor:
        return self.tokenizer(list(captions))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.cfg.freeze:
            with torch.no_grad():
                return token_states(self.tower, tokens)
        return token_states(self.tower, tokens)
