"""The text-to-image stage: its training step's loss, on the shared diffusion core (no Ray, no DeepSpeed here),
and ``TextToImageTask``, the stage as the training engine runs it (frozen text tower outside the engine).

CoDi Eq. 1: L = E_{z, ε, t} ‖ε − ε_θ(z_t, t, C(y))‖², with captions dropped to "" at rate
``cond_drop_prob`` so the same model serves as the unconditional branch of classifier-free guidance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from einops import rearrange

from models.diffusion.config import build_schedule, sample_noise
from models.diffusion.losses import diffusion_loss
from models.diffusion.process import q_sample
from models.diffusion.schedules import sample_timesteps
from models.text_encoder import CLIPTextEncoder
from models.text_to_image import TextToImageDiffuser, TextToImageModelConfig, save_pretrained_state
from models.unet import UNet


def images_to_x0(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 ``b h w 3`` -> float ``b 3 h w`` in [−1, 1] (the data space the diffuser works in)."""
    x = torch.as_tensor(np.asarray(images))
    return rearrange(x, "b h w c -> b c h w").float() / 127.5 - 1.0


def x0_to_images(x0: torch.Tensor) -> np.ndarray:
    """float ``b 3 h w`` in [−1, 1] -> uint8 ``b h w 3``."""
    x = ((x0.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return rearrange(x, "b c h w -> b h w c").cpu().numpy()


def drop_captions(captions: list[str], p: float, generator: torch.Generator) -> list[str]:
    """Replace each caption by the empty prompt with probability ``p`` (classifier-free guidance)."""
    keep = torch.rand(len(captions), generator=generator) >= p
    return [c if k else "" for c, k in zip(captions, keep.tolist())]


def noised_inputs(x0: torch.Tensor, context: torch.Tensor, diffusion, generator: torch.Generator,
                  schedule) -> dict[str, torch.Tensor]:
    """Everything random of a diffusion step drawn up front: t ~ U, ε ~ N, z_t = α_t x0 + σ_t ε (Eq. 1).

    What is left (``denoising_loss``) is a deterministic function of these inputs and the weights,
    so a batch can be split into micro-batches (gradient accumulation) without changing the draw.
    """
    device = x0.device
    t = sample_timesteps(schedule, x0.shape[0], generator=generator).to(device)
    eps = sample_noise(diffusion, x0.shape, generator=generator).to(device)
    alpha, sigma = schedule.alpha(t).float().to(device), schedule.sigma(t).float().to(device)
    return {"x0": x0, "eps": eps, "t": t, "alpha": alpha, "sigma": sigma,
            "z_t": q_sample(x0, eps, alpha, sigma), "context": context}


def denoising_loss(denoiser, inputs: dict[str, torch.Tensor], diffusion, dtype: torch.dtype) -> torch.Tensor:
    """Mean ‖target − ε_θ(z_t, t, c)‖² (with the prediction's target and min-SNR weight) of a batch.

    ``denoiser`` is the UNet or a DeepSpeed engine around it; ``dtype`` its weights' dtype (bf16
    engines hold bf16 weights): inputs are cast to it, the loss stays fp32.
    """
    output = denoiser(inputs["z_t"].to(dtype), inputs["t"], inputs["context"].to(dtype))
    return diffusion_loss(output, inputs["x0"], inputs["eps"], inputs["alpha"], inputs["sigma"],
                          diffusion.prediction, diffusion.min_snr_gamma).mean()


def encode_captions(encoder: CLIPTextEncoder, captions: list[str], device: torch.device) -> torch.Tensor:
    """C_y(y): token states of the frozen text tower, computed without autograd."""
    with torch.no_grad():
        return encoder(encoder.tokenize(captions).to(device))


def text_to_image_loss(model: TextToImageDiffuser, images, captions: list[str],
                       generator: torch.Generator, schedule=None) -> torch.Tensor:
    """Mean diffusion loss of a batch (uint8 images + captions) under the model's DiffusionConfig."""
    cfg = model.cfg
    schedule = schedule or build_schedule(cfg.diffusion)
    param = next(model.unet.parameters())
    x0 = images_to_x0(images).to(param.device)
    context = encode_captions(model.text_encoder, drop_captions(list(captions), cfg.cond_drop_prob, generator),
                              param.device)
    inputs = noised_inputs(x0, context, cfg.diffusion, generator, schedule)
    return denoising_loss(model.unet, inputs, cfg.diffusion, param.dtype)


class TextToImageTask:
    """The text-to-image stage on the training engine (training/task.py's ``StageTask``).

    Trainable: the UNet ε_θ (inside DeepSpeed). Frozen: the CLIP text tower C_y, outside DeepSpeed,
    whole on every worker; its token states are the UNet's cross-attention context.
    """

    def __init__(self, cfg: TextToImageModelConfig):
        self.cfg = cfg
        self.schedule = build_schedule(cfg.diffusion)

    def build_frozen(self) -> CLIPTextEncoder:
        encoder = CLIPTextEncoder(self.cfg.text_encoder)
        if encoder.width != self.cfg.unet.context_dim:
            raise ValueError(f"unet.context_dim ({self.cfg.unet.context_dim}) must equal the text encoder "
                             f"width ({encoder.width})")
        return encoder

    def build_trainable(self) -> UNet:
        return UNet(self.cfg.unet)

    def batch_inputs(self, batch: dict, frozen: CLIPTextEncoder, generator: torch.Generator,
                     device: torch.device) -> dict[str, torch.Tensor]:
        """Caption dropout, C_y(y) under no_grad, then t, ε and z_t — in the order of ``text_to_image_loss``."""
        x0 = images_to_x0(batch["image"]).to(device)
        captions = drop_captions([str(c) for c in batch["caption"]], self.cfg.cond_drop_prob, generator)
        return noised_inputs(x0, encode_captions(frozen, captions, device), self.cfg.diffusion, generator,
                             self.schedule)

    def loss(self, denoiser, inputs: dict[str, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        return denoising_loss(denoiser, inputs, self.cfg.diffusion, dtype)

    def export_state(self, trainable: dict[str, torch.Tensor], frozen: CLIPTextEncoder) -> dict[str, torch.Tensor]:
        """The ``TextToImageDiffuser`` layout of the weights: ``unet.*`` + ``text_encoder.*``."""
        return {**{f"unet.{k}": v for k, v in trainable.items()},
                **{f"text_encoder.{k}": v.detach().cpu() for k, v in frozen.state_dict().items()}}

    def save_pretrained(self, directory: Path, state: dict[str, torch.Tensor], weights_name: str) -> None:
        save_pretrained_state(directory, self.cfg, state, weights_name)
