"""Progressive distillation and stage one of guidance distillation — Imagen Video §2.7.

Stage one (Meng et al. 2022): a single student x̂_η(z_t, c, w) learns the guided combination
(1 + w)·x̂(z_t, c) − w·x̂(z_t) of the jointly trained conditional/unconditional teacher.
Stage two (Salimans & Ho 2022, Alg. 2): one student DDIM step from t to t'' matches two teacher
DDIM steps t → t' → t''; repeating halves the number of sampling steps.
"""

from typing import Any, Callable, Optional

import torch
from torch import Tensor

from .guidance import classifier_free_guidance
from .losses import diffusion_loss, mse_per_sample
from .parameterization import Prediction, eps_from_x0, to_x0_eps
from .process import Coeff, expand_like
from .samplers import ddim_step


def teacher_ddim_step(teacher: Callable[[Tensor, Tensor], Tensor], z_t: Tensor, t: Tensor, s: Tensor,
                      schedule, prediction: Prediction) -> Tensor:
    """One deterministic teacher DDIM step z_t → z_s (per-sample ``(b,)`` t and s) — DDIM Eq. 12 with η = 0."""
    x0, eps = to_x0_eps(teacher(z_t, t), z_t, schedule.alpha(t), schedule.sigma(t), prediction)
    return ddim_step(x0, eps, schedule.alpha(s), schedule.sigma(s))


def ddim_x0_target(z_t: Tensor, z_s: Tensor, alpha_t: Coeff, sigma_t: Coeff, alpha_s: Coeff,
                   sigma_s: Coeff) -> Tensor:
    """x̃ = (z_s − (σ_s/σ_t) z_t) / (α_s − (σ_s/σ_t) α_t) — Salimans & Ho (2022) Alg. 2.

    The x̂ whose single deterministic DDIM step t → s lands exactly on z_s.
    """
    alpha_t, sigma_t, alpha_s, sigma_s = (torch.as_tensor(c, dtype=torch.float64)
                                          for c in (alpha_t, sigma_t, alpha_s, sigma_s))
    ratio = sigma_s / sigma_t
    return (z_s - expand_like(ratio, z_t) * z_t) / expand_like(alpha_s - ratio * alpha_t, z_t)


@torch.no_grad()
def progressive_distillation_target(teacher: Callable[[Tensor, Tensor], Tensor], z_t: Tensor, t: Tensor,
                                    t_mid: Tensor, t_next: Tensor, schedule,
                                    prediction: Prediction = "v") -> Tensor:
    """x̃ so that one student step t → t'' equals two teacher DDIM steps — Imagen Video §2.7 (Salimans & Ho Alg. 2).

    ``teacher(z, t)`` outputs in ``prediction`` space (a guided closure for the guidance-distilled
    model works too). For discrete schedules t'' = −1 addresses clean data.
    """
    z_mid = teacher_ddim_step(teacher, z_t, t, t_mid, schedule, prediction)
    z_next = teacher_ddim_step(teacher, z_mid, t_mid, t_next, schedule, prediction)
    return ddim_x0_target(z_t, z_next, schedule.alpha(t), schedule.sigma(t), schedule.alpha(t_next),
                          schedule.sigma(t_next))


def progressive_distillation_loss(student_output: Tensor, z_t: Tensor, x0_target: Tensor, alpha_t: Coeff,
                                  sigma_t: Coeff, prediction: Prediction = "v",
                                  min_snr_gamma: Optional[float] = None) -> Tensor:
    """Per-sample loss of the student against x̃, expressed in the student's parameterization — Salimans & Ho (2022) Alg. 2.

    With ``prediction="v"`` the x-space weight is SNR + 1 ("SNR+1" weighting, Salimans & Ho §4).
    """
    eps_target = eps_from_x0(z_t, x0_target, alpha_t, sigma_t)
    return diffusion_loss(student_output, x0_target, eps_target, alpha_t, sigma_t, prediction, min_snr_gamma)


def sample_guidance_weights(batch_size: int, w_min: float = 0.0, w_max: float = 4.0,
                            generator: Optional[torch.Generator] = None,
                            device: Optional[torch.device] = None) -> Tensor:
    """w ~ U[w_min, w_max] per sample, the student's extra input in guidance distillation (Meng et al. 2022)."""
    return w_min + (w_max - w_min) * torch.rand(batch_size, generator=generator, device=device)


@torch.no_grad()
def guidance_distillation_target(teacher: Callable[[Tensor, Tensor, Any], Tensor], z_t: Tensor, t: Tensor,
                                 cond: Any, uncond: Any, weight: Coeff) -> Tensor:
    """The teacher's guided output (1 + w)·c − w·u (Imagen's w) from one batched pass — Imagen Video §2.7, stage one."""
    return classifier_free_guidance(teacher, z_t, t, cond, uncond, weight)


def guidance_distillation_loss(student_output: Tensor, target: Tensor) -> Tensor:
    """Per-sample ‖x̂_η(z_t, c, w) − x̃_w‖² in the shared parameterization — Imagen Video §2.7, stage one."""
    return mse_per_sample(student_output.float(), target.float())

