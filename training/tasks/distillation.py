"""Progressive distillation (Imagen Video §2.7; Salimans & Ho 2022, Alg. 2): an N-step student from a
2N-step teacher, the teacher frozen OUTSIDE the engine.

    i ~ U{1..N};  t = i/N,  t' = t − ½/N,  t'' = t − 1/N          (discrete: strides of T/N indices)
    z_{t'} = DDIM_teacher(z_t, t → t'),  z_{t''} = DDIM_teacher(z_{t'}, t' → t'')
    x̃ = (z_{t''} − (σ_{t''}/σ_t) z_t) / (α_{t''} − (σ_{t''}/σ_t) α_t)
    L = ‖x̃ − x̂_η(z_t)‖² in the student's parameterization         (the core's ``progressive_distillation_*``)

The teacher (``objective.teacher``) is the cascade's base (``cascade``: a ``CascadeDenoiser`` export on
pixel video in [−1, 1], continuous cosine schedule, v-prediction — what the schedules distil) or a CoDi
LDM (``codi``: its ``modality`` UNet on codec latents).

Task shape: trainable = the student (initialised from the teacher's weights); frozen =
``{"teacher": ..., "codecs": Codecs}``; ``batch_inputs`` gives x (pixels or latents), embeds the prompt,
draws i and ε and runs the two teacher DDIM steps under ``no_grad`` to give x̃; ``loss`` is one student
call. The student is exported as its teacher was (a cascade export with ``sampling_steps`` = N, or a
CoDi folder), so the next halving starts from it; repeating the stage is the schedule's job.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Mapping, Optional

import torch
from torch import Tensor, nn

from models.codecs import Codecs
from models.diffusion.config import DiffusionConfig, build_schedule, conditioning_time, sample_noise
from models.diffusion.distillation import progressive_distillation_loss, progressive_distillation_target
from models.diffusion.process import q_sample
from training.tasks.base import frozen, save_codi_folder, weighted_mean
from training.tasks.batches import modality_data
from training.tasks.cascade import CascadeConfig, save_cascade, video_to_unit
from training.tasks.ldm import ConditionConfig, condition_inputs, encode_target


@dataclass
class DistillationObjective:
    modality: str = "video"
    student_steps: int = 4                 # N: the student's sampling steps (the teacher takes 2N)
    condition: ConditionConfig = field(default_factory=lambda: ConditionConfig({"text": 1.0}, drop_prob=0.1))
    shard_set: str = "data"
    teacher: Literal["codi", "cascade"] = "codi"   # what task.init holds: a CoDi folder or a cascade base export

    def __post_init__(self):
        if self.student_steps < 1:
            raise ValueError("student_steps must be >= 1")
        if self.teacher == "cascade" and self.modality != "video":
            raise ValueError("a cascade base teacher generates video: set modality: video")


def student_times(schedule, diffusion: DiffusionConfig, n: int, batch: int,
                  generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """(t, t', t'') per example on the student's N-step grid: t'' one student step after t, t' halfway.

    Discrete schedules: t = i·T/N − 1 for i ~ U{1..N}, strides of T/N (even) indices, t'' = −1 for the
    last step (clean data). Continuous: t = i/N, t' = t − ½/N, t'' = t − 1/N (Salimans & Ho Alg. 2).
    """
    i = torch.randint(1, n + 1, (batch,), generator=generator)
    if not schedule.discrete:
        t = i.double() / n
        return t, t - 0.5 / n, t - 1.0 / n
    T = diffusion.num_timesteps
    if T % (2 * n):
        raise ValueError(f"a {n}-step student on {T} timesteps needs T divisible by 2N = {2 * n}")
    stride = T // n
    t = i * stride - 1
    return t, t - stride // 2, t - stride


class DistillationTask:
    """The ``distillation`` stage kind: one halving of the sampling steps."""

    def __init__(self, objective: DistillationObjective, teacher: Callable[[], nn.Module], codecs: Callable[[], Codecs],
                 diffusion: DiffusionConfig, student: Optional[Callable[[], nn.Module]] = None,
                 cascade: Optional[CascadeConfig] = None):
        """``cascade``: the teacher export's config (``objective.teacher == "cascade"``), the student's export config."""
        if (objective.teacher == "cascade") != (cascade is not None):
            raise ValueError("a cascade teacher needs its CascadeConfig (and only a cascade teacher has one)")
        self.objective, self.make_teacher, self.make_codecs = objective, teacher, codecs
        self.make_student = student or teacher
        self.diffusion, self.schedule, self.cascade = diffusion, build_schedule(diffusion), cascade

    @property
    def required(self) -> list[str]:
        return sorted({self.objective.modality, *self.objective.condition.weights})

    def build_trainable(self) -> nn.Module:
        student = self.make_student()
        self.student_config = getattr(student, "config", None)
        return student

    def build_frozen(self) -> Optional[nn.Module]:
        return frozen(nn.ModuleDict({"teacher": self.make_teacher(), "codecs": self.make_codecs()}))

    def denoiser(self, model, context: Tensor, dtype: torch.dtype = torch.float32):
        """``model`` as the core's ``(z, t) -> output`` callable (a CoDi: its ``objective.modality`` UNet)."""
        time = lambda t, z: conditioning_time(self.diffusion, t).to(z.device)  # noqa: E731
        if self.cascade is not None:
            return lambda z, t: model(z.to(dtype), time(t, z), context.to(dtype)).float()
        m = self.objective.modality
        return lambda z, t: model({m: z.to(dtype)}, time(t, z), context.to(dtype))[m].float()

    def data(self, batch: Mapping, codecs: Codecs, device: torch.device) -> tuple[Tensor, Tensor]:
        """(x, per-example weight): pixel video in [−1, 1] for a cascade teacher (every clip has frames), codec
        latents for a CoDi one (weight 0 where the modality is absent)."""
        o = self.objective
        if self.cascade is not None:
            x0 = video_to_unit(modality_data(batch, "video", o.shard_set)).to(device)
            return x0, torch.ones(x0.shape[0], device=device)
        return encode_target(codecs, batch, o.modality, o.shard_set, device)

    @torch.no_grad()
    def batch_inputs(self, batch: Mapping, frozen_part: nn.ModuleDict, generator: torch.Generator,
                     device: torch.device) -> dict[str, Tensor]:
        o, codecs, teacher = self.objective, frozen_part["codecs"], frozen_part["teacher"]
        x0, weight = self.data(batch, codecs, device)
        inputs = condition_inputs(codecs, batch, o.condition, o.shard_set, generator, device)
        t, t_mid, t_next = (s.to(device) for s in student_times(self.schedule, self.diffusion, o.student_steps,
                                                                x0.shape[0], generator))
        eps = sample_noise(self.diffusion, x0.shape, generator=generator).to(device)
        alpha, sigma = self.schedule.alpha(t).float().to(device), self.schedule.sigma(t).float().to(device)
        z_t = q_sample(x0, eps, alpha, sigma)
        target = progressive_distillation_target(self.denoiser(teacher, inputs["context"]), z_t, t, t_mid, t_next,
                                                 self.schedule, self.diffusion.prediction)
        return {**inputs, "z_t": z_t, "t": t, "alpha": alpha, "sigma": sigma, "x0_target": target.float(),
                "weight": weight}

    def loss(self, student, inputs: Mapping[str, Tensor], dtype: torch.dtype = torch.float32) -> Tensor:
        out = self.denoiser(student, inputs["context"], dtype)(inputs["z_t"], inputs["t"])
        per_sample = progressive_distillation_loss(out, inputs["z_t"], inputs["x0_target"], inputs["alpha"],
                                                   inputs["sigma"], self.diffusion.prediction,
                                                   self.diffusion.min_snr_gamma)
        return weighted_mean(per_sample, inputs.get("weight"))

    def export_state(self, trainable: dict[str, Tensor], frozen_part=None) -> dict[str, Tensor]:
        return dict(trainable)

    def save_pretrained(self, directory: Path, state: dict[str, Tensor], weights_name: str) -> None:
        if self.cascade is not None:
            config = dataclasses.replace(self.cascade, sampling_steps=self.objective.student_steps)
            save_cascade(directory, state, config, weights_name)
        else:
            save_codi_folder(directory, state, self.student_config, weights_name)
