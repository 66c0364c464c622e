"""Text-conditioned image diffuser = prompt encoder C_y + UNet ε_θ, saved as safetensors + config JSON.

The config is saved next to the weights (diffusers-style), so ``from_pretrained(dir)`` rebuilds the
exact architecture without the training config.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from common.config import from_dict, to_dict
from common.errors import UsageError
from models.diffusion.config import DiffusionConfig, conditioning_time
from models.text_encoder import CLIPTextEncoder, TextEncoderConfig
from models.unet import UNet, UNetConfig

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "model_config.json"


@dataclass
class TextToImageModelConfig:
    """The image diffuser of CoDi conditioned on the text prompt encoder (pixel space for now)."""

    image_size: int = 32
    unet: UNetConfig = field(default_factory=UNetConfig)
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    cond_drop_prob: float = 0.1  # captions replaced by "" this often, so classifier-free guidance works

    def __post_init__(self):
        if not 0.0 <= self.cond_drop_prob < 1.0:
            raise ValueError("cond_drop_prob must be in [0, 1)")


class TextToImageDiffuser(nn.Module):
    """ε_θ(z_t, t, C_y(y)) for image-shaped ``z_t`` (``b c h w``)."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.text_encoder = CLIPTextEncoder(cfg.text_encoder)
        if cfg.unet.context_dim != self.text_encoder.width:
            raise ValueError(f"unet.context_dim ({cfg.unet.context_dim}) must equal the text encoder "
                             f"width ({self.text_encoder.width})")
        self.unet = UNet(cfg.unet)

    def encode_text(self, captions: list[str]) -> torch.Tensor:
        tokens = self.text_encoder.tokenize(captions).to(next(self.unet.parameters()).device)
        return self.text_encoder(tokens)

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """``t`` is the schedule's timestep (index, or continuous t ∈ [0, 1]); the UNet sees ``conditioning_time``."""
        return self.unet(z_t, conditioning_time(self.cfg.diffusion, t), context)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Weights as safetensors + the config as JSON (diffusers-style, loadable without the run)."""
        return save_pretrained_state(directory, self.cfg, self.state_dict())

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str = "cpu",
                        weights_name: str = WEIGHTS_NAME) -> "TextToImageDiffuser":
        """The model saved in ``directory``; ``weights_name="ema.safetensors"`` loads the EMA weights."""
        directory = Path(directory)
        for name in (weights_name, CONFIG_NAME):
            if not (directory / name).is_file():
                raise UsageError(f"{directory}: no {name} — not a codiray model checkpoint")
        cfg = from_dict(TextToImageModelConfig, json.loads((directory / CONFIG_NAME).read_text()),
                        source=str(directory / CONFIG_NAME))
        # The text tower's weights are in the safetensors file: build the architecture only, so a
        # checkpoint trained from open_clip's pretrained tower loads offline.
        cfg.text_encoder.pretrained = None
        model = cls(cfg)
        try:
            model.load_state_dict(load_file(str(directory / weights_name), device=map_location))
        except Exception as err:  # safetensors' header errors, missing/unexpected/mis-shaped tensors
            problem = str(err).strip().splitlines()[0][:300]
            raise UsageError(f"{directory / weights_name}: cannot load weights ({type(err).__name__}: {problem})") from None
        return model


def save_pretrained_state(directory: str | Path, cfg: TextToImageModelConfig, state: dict[str, torch.Tensor],
                          weights_name: str = WEIGHTS_NAME) -> Path:
    """A ``TextToImageDiffuser`` state (keys ``unet.*``, ``text_encoder.*``) as safetensors + config JSON.

    The training engine holds the UNet and the text tower apart (the tower stays outside DeepSpeed)
    and writes their joined state here, in the layout ``from_pretrained`` reads.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(directory / weights_name))
    (directory / CONFIG_NAME).write_text(json.dumps(to_dict(cfg), indent=2))
    return directory
