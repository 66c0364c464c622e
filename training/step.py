"""One text-to-image training step's loss, on the shared diffusion core (no Ray, no DeepSpeed here).

CoDi Eq. 1: L = E_{z, ε, t} ‖ε − ε_θ(z_t, t, C(y))‖², with captions dropped to "" at rate
``cond_drop_prob`` so the same model serves as the unconditional branch of classifier-free guidance.
"""

from __future__ import annotations

import numpy as np
import torch
from einops import rearrange

from models.diffusion.config import build_schedule, sample_noise
from models.diffusion.losses import diffusion_loss
from models.diffusion.process import q_sample
from models.diffusion.schedules import sample_timesteps
from models.text_to_image import TextToImageDiffuser


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


def text_to_image_loss(model: TextToImageDiffuser, images, captions: list[str],
                       generator: torch.Generator, schedule=None) -> torch.Tensor:
    """Mean diffusion loss of a batch (uint8 images + captions) under the model's DiffusionConfig."""
    cfg = model.cfg
    schedule = schedule or build_schedule(cfg.diffusion)
    param = next(model.unet.parameters())
    device = param.device
    x0 = images_to_x0(images).to(device)
    context = model.encode_text(drop_captions(list(captions), cfg.cond_drop_prob, generator)).to(param.dtype)
    t = sample_timesteps(schedule, x0.shape[0], generator=generator).to(device)
    eps = sample_noise(cfg.diffusion, x0.shape, generator=generator).to(device)
    alpha, sigma = schedule.alpha(t).float(), schedule.sigma(t).float()
    z_t = q_sample(x0, eps, alpha, sigma)
    output = model(z_t.to(param.dtype), t, context)  # bf16 engines hold bf16 weights; the loss stays fp32
    return diffusion_loss(output, x0, eps, alpha, sigma, cfg.diffusion.prediction,
                          cfg.diffusion.min_snr_gamma).mean()
