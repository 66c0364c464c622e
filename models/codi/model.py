"""``CoDi``: the latent diffusers of CoDi behind one call, ε for every generated modality.

    model = CoDi(CoDiConfig.released())              # or CoDi.from_pretrained(dir)
    eps = model({"video": z_v, "audio": z_a}, t, context)          # joint generation
    eps = model({"image": z_i}, t, context)                        # one modality: its UNet alone

``model.unets`` is an ``nn.ModuleDict`` keyed ``image`` (serves image and video), ``audio``,
``text``; each UNet carries its environment encoder V and its cross-modal attention sublayers.
The autoencoders and prompt encoders (``models.codecs.Codecs``) ride along as ``model.codecs`` when
the model has them (``CoDi(config, codecs)``, a converted release, or a folder with ``codecs/``):
``model.encode(m, data)`` → scaled latent, ``model.decode(m, latent)`` → data,
``model.condition(m, data)`` → (b, 1, 768). ``save_pretrained`` writes the UNets to
``model.safetensors`` and the codecs to their own ``codecs/`` folder (``Codecs.save_pretrained``).

Joint generation (CoDi Eq. 3): every generated modality A first gets V_A(z_t^A); then each UNet runs
with a cross-attention sublayer after its connector blocks. ``joint_context="paper"`` (default)
attends to the OTHER generated modalities' V outputs, interpolated (averaged) when there are
several (CoDi §3.4: "cross-attend with any group of co-generated modalities by interpolating the
representation's output by V"); ``"released"`` attends to the modality's OWN V output, as CoDi's
released code does — there the video output ignores the audio latent entirely. The connector
sublayers run after whole blocks and read only V outputs computed up front, so running the UNets
one after another equals CoDi's block-by-block lock-step exactly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Optional

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from common.config import from_dict, to_dict
from common.errors import UsageError

if TYPE_CHECKING:   # imported where needed: transformers/diffusers cost ~2 s at import
    from models.codecs import Codecs

from .config import LATENT_MODALITIES, CoDiConfig
from .unet import LatentUNet, UNet2D
from .unet_text import UNetText

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "codi_config.json"
CODECS_DIR = "codecs"
JointContext = Literal["paper", "released"]
LATENT_NDIM = {"image": 4, "video": 5, "audio": 4, "text": 2}


def unet_for(modality: str) -> str:
    """Which UNet serves a latent modality (video runs on the image UNet)."""
    return "image" if modality == "video" else modality


def joint_env(env: dict[str, Tensor], modality: str, mode: JointContext) -> Tensor:
    """The V outputs modality ``modality`` cross-attends to: the others' mean ("paper") or its own ("released")."""
    if mode == "released":
        return env[modality]
    if mode != "paper":
        raise ValueError(f"joint_context must be 'paper' or 'released', got {mode!r}")
    others = [v for name, v in env.items() if name != modality]
    return torch.stack(others).mean(0)


def build_unet(spec) -> LatentUNet:
    return UNetText(spec) if spec.kind == "text" else UNet2D(spec)


class CoDi(nn.Module):
    def __init__(self, config: CoDiConfig, codecs: Optional["Codecs"] = None):
        super().__init__()
        self.config = config
        self.unets = nn.ModuleDict({name: build_unet(spec) for name, spec in config.specs().items()})
        self.codecs = codecs
        self.set_gradient_checkpointing(config.gradient_checkpointing)

    # -- data <-> latents and prompts, through the codecs (CoDi §3.1-3.2) --
    def _codecs(self, what: str) -> "Codecs":
        if self.codecs is None:
            raise UsageError(f"this CoDi model has no autoencoders/prompt encoders to {what} with: convert a "
                             "release that carries them, or build it as CoDi(config, codecs)")
        return self.codecs

    def encode(self, modality: str, data) -> Tensor:
        """Data (uint8 images/videos, 16 kHz waveforms, strings) → the scaled latent this model diffuses."""
        return self._codecs("encode").encode(modality, data)

    def decode(self, modality: str, latent: Tensor):
        """A scaled latent → data (uint8 image/video, float waveform, list[str])."""
        return self._codecs("decode").decode(modality, latent)

    def condition(self, modality: str, data) -> Tensor:
        """A prompt of any modality → its unit (b, 1, 768) embedding in the shared space (CLIP/CLAP)."""
        return self._codecs("condition").condition(modality, data)

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each block's activations in backward instead of storing them (same gradients)."""
        self.config.gradient_checkpointing = enabled
        for unet in self.unets.values():
            unet.gradient_checkpointing = enabled

    def unet(self, modality: str) -> LatentUNet:
        name = unet_for(modality)
        if modality not in LATENT_MODALITIES:
            raise ValueError(f"unknown modality {modality!r} (expected one of {', '.join(LATENT_MODALITIES)})")
        if name not in self.unets:
            raise ValueError(f"this CoDi model has no {name} UNet (it holds: {', '.join(self.unets)})")
        if modality == "video" and not self.unets[name].spec.video:
            raise ValueError("this CoDi model's image UNet has no video layers")
        return self.unets[name]

    def forward(self, latents: dict[str, Tensor], t: Tensor, context: Tensor,
                joint_context: JointContext = "paper") -> dict[str, Tensor]:
        """ε_θ for each noisy latent in ``latents`` at timesteps ``t`` (b,), conditioned on ``context`` (b, n, d)."""
        if not latents:
            raise ValueError("latents is empty: name at least one modality to generate")
        if "image" in latents and "video" in latents:
            raise ValueError("image and video share one UNet: generate one of them at a time")
        for modality, z in latents.items():
            self.unet(modality)   # raises for an unknown modality or a UNet this model lacks
            if z.ndim != LATENT_NDIM[modality]:
                raise ValueError(f"{modality} latent must have {LATENT_NDIM[modality]} dims, got shape {tuple(z.shape)}")
        emb = {m: self.unet(m).embed_time(t, z.dtype) for m, z in latents.items()}
        if len(latents) == 1:
            (modality, z), = latents.items()
            return {modality: self.unet(modality)(z, emb[modality], context)}
        env = {m: self.unet(m).environment(z, emb[m], context) for m, z in latents.items()}
        return {m: self.unet(m)(z, emb[m], context, joint_env(env, m, joint_context)) for m, z in latents.items()}

    # -- persistence: safetensors + config JSON --
    def save_pretrained(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.unets.state_dict(prefix="unets.").items()}
        save_file(state, str(directory / WEIGHTS_NAME))
        (directory / CONFIG_NAME).write_text(json.dumps(to_dict(self.config), indent=2))
        if self.codecs is not None:
            self.codecs.save_pretrained(directory / CODECS_DIR)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str = "cpu") -> "CoDi":
        directory = Path(directory)
        for name in (WEIGHTS_NAME, CONFIG_NAME):
            if not (directory / name).is_file():
                raise UsageError(f"{directory}: no {name} — not a codiray CoDi model folder")
        config = from_dict(CoDiConfig, json.loads((directory / CONFIG_NAME).read_text()),
                           source=str(directory / CONFIG_NAME))
        with torch.device("meta"):
            model = cls(config)
        try:
            state = load_file(str(directory / WEIGHTS_NAME), device=map_location)
            model.load_state_dict(state, strict=True, assign=True)
        except Exception as err:  # safetensors header errors, missing/unexpected/mis-shaped tensors
            problem = str(err).strip().splitlines()[0][:300]
            raise UsageError(f"{directory / WEIGHTS_NAME}: cannot load weights ({type(err).__name__}: {problem})") from None
        if (directory / CODECS_DIR).is_dir():
            from models.codecs import Codecs

            model.codecs = Codecs.from_pretrained(directory / CODECS_DIR)
        return model
