"""Progressive distillation (Imagen Video §2.7): with an exact teacher for a point mass the two-step DDIM
target x̃ is the data itself (closed form), the student's loss is the ε-error against it, the grid is
the student's N steps, and training moves the student while the frozen teacher stays put."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from models.codi import CoDi
from models.diffusion.config import DiffusionConfig, build_schedule
from training.tasks.distillation import DistillationObjective, DistillationTask, student_times
from training.tasks.ldm import ConditionConfig

from objectives_helpers import adam_steps, debug_codecs, laion_batch, randomize, tiny_codi, tiny_image, write_tokenizers


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
