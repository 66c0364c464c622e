"""Progressive distillation (Imagen Video §2.7): with an exact teacher for a point mass the two-step DDIM
target x̃ is the data itself (closed form), the student's loss is the ε- (or v-) error against it, the grid
is the student's N steps, and training moves the student while the frozen teacher stays put. The cascade's
base as teacher: pixel video, continuous cosine, v; the student starts as the base export and is exported
as one (``sampling_steps`` = N) that the next halving loads."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

from common.errors import UsageError
from models.codi import CoDi
from models.diffusion.cascade import NoiseAugmentationConfig
from models.diffusion.config import DiffusionConfig, build_schedule
from models.diffusion.schedules import CosineSchedule
from training.config import TrainConfig
from training.task import build_task, cascade_teacher_config
from training.task_config import CodecsSource, TaskConfig
from training.tasks.cascade import (CascadeConfig, CascadeDenoiser, CascadeObjective, cascade_spec, load_cascade,
                                    save_cascade, video_to_unit)
from training.tasks.distillation import DistillationObjective, DistillationTask, student_times
from training.tasks.ldm import ConditionConfig

from objectives_helpers import (adam_steps, debug_codecs, laion_batch, randomize, tiny_codi, tiny_image, webvid_batch,
                                write_tokenizers)


@pytest.fixture(scope="module")
def codecs(tmp_path_factory):
    return debug_codecs(write_tokenizers(tmp_path_factory.mktemp("tokenizers")))



class PointMassTeacher(nn.Module):
    """The exact ε-denoiser when each row's data is the single point x*: ε̂ = (z_t − α_t x*) / σ_t."""

    def __init__(self, x_star: torch.Tensor, diffusion: DiffusionConfig):
        super().__init__()
        self.x_star, self.schedule = x_star, build_schedule(diffusion)

    def forward(self, latents, t, context):
        (m, z), = latents.items()
        ti = t.round().long()
        a = self.schedule.alpha(ti).float().view(-1, 1, 1, 1)
        s = self.schedule.sigma(ti).float().view(-1, 1, 1, 1)
        return {m: (z - a * self.x_star) / s}


def test_student_grid_halves_the_teacher_steps():
    diffusion = DiffusionConfig()
    schedule = build_schedule(diffusion)
    t, mid, nxt = student_times(schedule, diffusion, 4, 4000, torch.Generator().manual_seed(0))
    assert set(t.tolist()) == {249, 499, 749, 999}
    assert torch.equal(t - mid, torch.full_like(t, 125)) and torch.equal(t - nxt, torch.full_like(t, 250))
    with pytest.raises(ValueError, match="divisible"):
        student_times(schedule, diffusion, 3, 2, torch.Generator())


def test_target_is_the_data_for_an_exact_teacher(codecs):
    diffusion = DiffusionConfig()
    batch = laion_batch(4)
    with torch.no_grad():
        x_star = codecs.encode("image", torch.from_numpy(batch["image"]))
    torch.manual_seed(0)
    student = CoDi(tiny_codi(image=tiny_image(connectors=False)))
    task = DistillationTask(DistillationObjective("image", 4, ConditionConfig({"text": 1.0}, 0.0)),
                            teacher=lambda: PointMassTeacher(x_star, diffusion), codecs=lambda: codecs,
                            diffusion=diffusion, student=lambda: student)
    frozen_part = task.build_frozen()
    inputs = task.batch_inputs(batch, frozen_part, torch.Generator().manual_seed(0), torch.device("cpu"))
    torch.testing.assert_close(inputs["x0_target"], x_star, atol=1e-4, rtol=1e-4)
    # the student's loss: ε-error against ε̃ = (z_t − α x̃)/σ, which for x̃ = x* is the drawn noise itself
    with torch.no_grad():
        eps_hat = student({"image": inputs["z_t"]}, inputs["t"].float(), inputs["context"])["image"]
        a, s = inputs["alpha"].view(-1, 1, 1, 1), inputs["sigma"].view(-1, 1, 1, 1)
        eps_tilde = (inputs["z_t"] - a * x_star) / s
        want = (eps_hat - eps_tilde).pow(2).mean()
        assert task.loss(student, inputs).item() == pytest.approx(want.item(), rel=1e-3)


def test_student_learns_and_teacher_stays_frozen(codecs):
    diffusion = DiffusionConfig()
    torch.manual_seed(0)
    teacher = randomize(CoDi(tiny_codi(image=tiny_image(connectors=False))), seed=5, std=0.03)
    task = DistillationTask(DistillationObjective("image", 2, ConditionConfig({"text": 1.0}, 0.1)),
                            teacher=lambda: copy.deepcopy(teacher), codecs=lambda: codecs, diffusion=diffusion,
                            student=lambda: randomize(CoDi(tiny_codi(image=tiny_image(connectors=False))), seed=6,
                                                      std=0.03))    # away from the teacher, so there is a gap
    student, frozen_part = task.build_trainable(), task.build_frozen()
    before = {k: v.clone() for k, v in frozen_part["teacher"].state_dict().items()}
    assert not any(p.requires_grad for p in frozen_part.parameters())
    inputs = task.batch_inputs(laion_batch(4), frozen_part, torch.Generator().manual_seed(2), torch.device("cpu"))
    losses = adam_steps(task, student, inputs, steps=10, lr=2e-3)
    assert losses[-1] < 0.7 * losses[0], losses
    assert all(torch.equal(v, before[k]) for k, v in frozen_part["teacher"].state_dict().items())
    assert any(not torch.equal(v, before[k]) for k, v in student.state_dict().items())


# -- the cascade's base as teacher ------------------------------------------------------------------

class PointMassV(nn.Module):
    """The exact v-denoiser of a cascade base when each row's data is the single video x*: v = α ε̂ − σ x*,
    ε̂ = (z_t − α x*)/σ, on the continuous cosine schedule (the network sees 1000·t)."""

    def __init__(self, x_star: torch.Tensor):
        super().__init__()
        self.x_star, self.schedule = x_star, CosineSchedule()

    def forward(self, z, t, context, cond=None, aug_log_snr=None):
        a = self.schedule.alpha(t.double() / 1000).view(-1, 1, 1, 1, 1)
        s = self.schedule.sigma(t.double() / 1000).view(-1, 1, 1, 1, 1)
        return (a * (z.double() - a * self.x_star) / s - s * self.x_star).float()


def base_config() -> CascadeConfig:
    return CascadeConfig(cascade_spec(tiny_image(connectors=False), "base"), CascadeObjective("base"))


def base_objective(steps: int, drop: float = 0.0) -> DistillationObjective:
    return DistillationObjective("video", steps, ConditionConfig({"text": 1.0}, drop), "webvid", teacher="cascade")


def test_base_teacher_target_is_the_video_for_an_exact_teacher(codecs):
    batch = webvid_batch(n=4, frames=2, size=8)
    x_star = video_to_unit(torch.from_numpy(batch["frames"])).double()
    config = base_config()
    torch.manual_seed(0)
    task = DistillationTask(base_objective(4), teacher=lambda: PointMassV(x_star), codecs=lambda: codecs,
                            diffusion=config.objective.diffusion, student=lambda: CascadeDenoiser(config.unet),
                            cascade=config)
    student, frozen_part = task.build_trainable(), task.build_frozen()
    inputs = task.batch_inputs(batch, frozen_part, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert set((inputs["t"] * 4).round().tolist()) <= {1.0, 2.0, 3.0, 4.0}          # the student's 4-step grid
    torch.testing.assert_close(inputs["x0_target"], x_star.float(), atol=1e-4, rtol=1e-4)
    # the student's loss: v-error against ṽ = α ε̃ − σ x̃, ε̃ = (z_t − α x̃)/σ, for x̃ = x*
    with torch.no_grad():
        v_hat = student(inputs["z_t"], 1000 * inputs["t"].float(), inputs["context"])
        a, s = inputs["alpha"].view(-1, 1, 1, 1, 1), inputs["sigma"].view(-1, 1, 1, 1, 1)
        x = x_star.float()
        v_tilde = a * (inputs["z_t"] - a * x) / s - s * x
        assert task.loss(student, inputs).item() == pytest.approx((v_hat - v_tilde).pow(2).mean().item(), rel=1e-3)


def test_base_export_distils_into_an_export_the_next_halving_loads(codecs, tmp_path):
    """``build_task`` on a base export: the student starts as the base, moves, the frozen teacher does not; the
    student is saved as a base export of ``sampling_steps`` N, which teaches N/2 steps and refuses N."""
    codecs_dir = codecs.save_pretrained(tmp_path / "codecs")
    config = base_config()
    teacher_state = randomize(CascadeDenoiser(config.unet), seed=3, std=0.02).state_dict()
    save_cascade(tmp_path / "base", teacher_state, config)
    task_config = TaskConfig(kind="distillation", init=str(tmp_path / "base"), distillation=base_objective(2, 0.1),
                             codecs=CodecsSource(path=str(codecs_dir)))
    task = build_task(TrainConfig(task=task_config))
    student, frozen_part = task.build_trainable(), task.build_frozen()
    assert all(torch.equal(v, teacher_state[k]) for k, v in student.state_dict().items())
    assert not any(p.requires_grad for p in frozen_part.parameters())
    inputs = task.batch_inputs(webvid_batch(n=2, frames=2, size=8), frozen_part, torch.Generator().manual_seed(1),
                               torch.device("cpu"))
    losses = adam_steps(task, student, inputs, steps=3, lr=1e-3)
    assert losses[-1] < losses[0], losses
    assert all(torch.equal(v, teacher_state[k]) for k, v in frozen_part["teacher"].state_dict().items())
    moved = {k: v.detach().clone() for k, v in student.state_dict().items()}
    assert any(not torch.equal(v, teacher_state[k]) for k, v in moved.items())

    task.save_pretrained(tmp_path / "student", task.export_state(moved), "model.safetensors")
    loaded, student_config = load_cascade(str(tmp_path / "student"))
    assert student_config == dataclasses.replace(config, sampling_steps=2)
    assert all(torch.equal(v, moved[k]) for k, v in loaded.state_dict().items())
    assert cascade_teacher_config(str(tmp_path / "student"), 1).sampling_steps == 2
    with pytest.raises(UsageError, match="halves"):
        cascade_teacher_config(str(tmp_path / "student"), 2)


def test_only_a_base_export_is_distilled(tmp_path):
    ssr = CascadeConfig(cascade_spec(tiny_image(connectors=False), "ssr"),
                        CascadeObjective("ssr", augmentation=NoiseAugmentationConfig()))
    save_cascade(tmp_path / "ssr", CascadeDenoiser(ssr.unet).state_dict(), ssr)
    with pytest.raises(UsageError, match="cascade ssr export"):
        cascade_teacher_config(str(tmp_path / "ssr"), 4)
