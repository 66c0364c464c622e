"""The shared diffusion core: schedules, parameterizations, losses, samplers, guidance and noise processes.

Pure PyTorch functions over any tensor layout (``b c h w``, ``b c f h w``, mel spectrograms, text
latents). α is the signal scale √ᾱ_t and σ = √(1 − ᾱ_t) throughout (see ``schedules.py``).
"""

from .cascade import (NoiseAugmentationConfig, log_snr_from_sigma, noise_augment, sampling_noise_augmentation,
                      sigma_from_log_snr, training_noise_augmentation)
from .config import (CONTINUOUS_TIME_SCALE, DiffusionConfig, SamplingConfig, build_schedule, conditioning_time,
                     noise_fn, resolve_x0_clip, sample_noise)
from .distillation import (ddim_x0_target, guidance_distillation_loss, guidance_distillation_target,
                           progressive_distillation_loss, progressive_distillation_target,
                           sample_guidance_weights, teacher_ddim_step)
from .guidance import (DynamicThreshold, Guidance, classifier_free_guidance, constant_guidance_weights,
                       default_constant_steps, dynamic_threshold, guide, guided_denoiser, imagen_weight_from_scale,
                       oscillating_guidance_weights, resolve_clip, scale_from_imagen_weight, static_clip,
                       threshold)
from .losses import diffusion_loss, min_snr_weight, mse_per_sample, snr
from .mt_diffusion import (MTDiffusion, head_estimate, mt_aggregate, mt_alpha_tilde, mt_consistent_start,
                           mt_default_weights, mt_diffusion_loss, mt_diffusion_sample, mt_forward_step,
                           mt_posterior_mean, mt_posterior_mean_from_eps, mt_q_sample)
from .noise_priors import (combine_base_residual, frame_indices, iid_noise, pyoco_mixed_noise,
                           pyoco_progressive_noise, remove_base_noise, videofusion_denoiser, videofusion_eps, videofusion_key_frame,
                           videofusion_lambdas, videofusion_loss, videofusion_noise)
from .parameterization import (PREDICTIONS, Prediction, convert_prediction, eps_from_v, eps_from_x0,
                               from_x0_eps, to_x0_eps, v_from_x0_eps, x0_from_eps, x0_from_v)
from .process import (ancestral_variance, expand_like, q_posterior_mean, q_posterior_variance, q_sample,
                      snr_ratio, transition_variance)
from .samplers import ddim_sample, ddim_sigma, ddim_step, ddpm_sample, predict_x0_eps, timestep_batch
from .schedules import (CosineSchedule, DiscreteSchedule, Schedule, alpha_sigma_from_log_snr,
                        continuous_timesteps, ddim_timesteps, linear_betas, sample_timesteps,
                        sampling_timesteps, scaled_linear_betas)

__all__ = [name for name in dir() if not name.startswith("_")]
