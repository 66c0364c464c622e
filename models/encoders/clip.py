"""CLIP prompt encoder (transformers ``CLIPModel``): text, image and video -> one unit token ``(b, 1, d)``.

text:   pooled EOS state -> text projection -> L2 norm
image:  CLIP preprocessing -> vision tower -> CLS -> post-LN -> visual projection -> L2 norm
video:  every frame through the vision tower, last hidden states averaged over frames, then as image
        (so a 1-frame video conditions exactly like its frame); with ``temporal`` (CoDi's release), the
        tower has CoDi's temporal attention between each layer's self-attention and MLP
        (``models.encoders.clip_temporal``) for videos of more than one frame
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

from models.codecs_config import ClipConfig
from models.encoders.clip_temporal import TemporalBlock, vision_hidden_with_time

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def unit(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit L2 norm."""
    return x / x.norm(dim=-1, keepdim=True)


def clip_preprocess(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 ``(n, h, w, 3)`` -> normalised ``(n, 3, size, size)``: shorter side to ``size`` (bicubic,
    antialiased), centre crop, CLIP mean/std — CLIPImageProcessor's steps, in torch."""
    x = images.permute(0, 3, 1, 2).float() / 255.0
    h, w = x.shape[-2:]
    # the shorter side becomes ``size``, the longer int(size · long / short), as CLIPImageProcessor does
    nh, nw = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
    top, left = (nh - size) // 2, (nw - size) // 2
    x = x[..., top: top + size, left: left + size].clamp(0, 1)
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def build_clip(cfg: ClipConfig, tokenizer: CLIPTokenizer | None) -> CLIPModel:
    if cfg.pretrained:
        return CLIPModel.from_pretrained(cfg.pretrained)
    special = {}
    if tokenizer is not None:
        special = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id)
    config = CLIPConfig(
        text_config=dict(vocab_size=cfg.vocab_size, hidden_size=cfg.text_hidden_size,
                         num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
                         intermediate_size=cfg.text_intermediate_size,
                         max_position_embeddings=cfg.max_position_embeddings, projection_dim=cfg.projection_dim,
                         **special),
        vision_config=dict(hidden_size=cfg.vision_hidden_size, num_hidden_layers=cfg.vision_layers,
                           num_attention_heads=cfg.vision_heads, intermediate_size=cfg.vision_intermediate_size,
                           image_size=cfg.image_size, patch_size=cfg.patch_size, projection_dim=cfg.projection_dim),
        projection_dim=cfg.projection_dim)
    return CLIPModel(config)


class ClipEncoder(nn.Module):
    def __init__(self, cfg: ClipConfig, tokenizer: CLIPTokenizer | None = None):
        super().__init__()
        self.cfg = cfg
        if tokenizer is None and cfg.tokenizer:
            tokenizer = CLIPTokenizer.from_pretrained(cfg.tokenizer)
        self.tokenizer = tokenizer
        self.model = build_clip(cfg, tokenizer)
        vision = self.model.config.vision_config
        self.temporal = (nn.ModuleList(TemporalBlock(vision.hidden_size, vision.num_attention_heads)
                                       for _ in range(vision.num_hidden_layers)) if cfg.temporal else None)

    @property
    def device(self) -> torch.device:
        return self.model.text_projection.weight.device

    @property
    def image_size(self) -> int:
        return self.model.config.vision_config.image_size

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """``(b, max_position_embeddings)`` token ids (padded, truncated) on the CPU."""
        if self.tokenizer is None:
            raise ValueError("clip.tokenizer must name a local CLIPTokenizer directory to condition on text")
        length = self.model.config.text_config.max_position_embeddings
        return self.tokenizer(list(texts), padding="max_length", max_length=length, truncation=True,
                              return_tensors="pt")["input_ids"]

    def text_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids -> ``(b, 1, proj)``: pooled EOS state, text projection, L2 norm."""
        pooled = self.model.text_model(input_ids=ids.to(self.device)).pooler_output
        return unit(self.model.text_projection(pooled)).unsqueeze(1)

    def text(self, texts: list[str]) -> torch.Tensor:
        return self.text_ids(self.tokenize(texts))

    def _project_cls(self, hidden: torch.Tensor) -> torch.Tensor:
        """Last hidden states ``(n, tokens, d)`` -> unit ``(n, 1, proj)`` via CLS, post-LN, projection."""
        cls = self.model.vision_model.post_layernorm(hidden[:, 0])
        return unit(self.model.visual_projection(cls)).unsqueeze(1)

    def _pixels(self, frames: torch.Tensor) -> torch.Tensor:
        return clip_preprocess(frames.to(self.device), self.image_size).to(self.model.dtype)

    def _frames_hidden(self, frames: torch.Tensor) -> torch.Tensor:
        return self.model.vision_model(pixel_values=self._pixels(frames)).last_hidden_state

    def image(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(b, h, w, 3)`` -> ``(b, 1, proj)``."""
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"image must be uint8 (b, h, w, 3), got {images.dtype} {tuple(images.shape)}")
        return self._project_cls(self._frames_hidden(images))

    def video(self, video: torch.Tensor) -> torch.Tensor:
        """uint8 ``(b, f, h, w, 3)`` -> ``(b, 1, proj)``: hidden states averaged over frames."""
        if video.dtype != torch.uint8 or video.dim() != 5:
            raise ValueError(f"video must be uint8 (b, f, h, w, 3), got {video.dtype} {tuple(video.shape)}")
        b, f = video.shape[:2]
        if self.temporal is not None and f > 1:      # CoDi encodes a 1-frame video as an image
            hidden = vision_hidden_with_time(self.model.vision_model, self.temporal,
                                             self._pixels(video.flatten(0, 1)), f)
        else:
            hidden = self._frames_hidden(video.flatten(0, 1)).unflatten(0, (b, f))
        return self._project_cls(hidden.mean(dim=1))
