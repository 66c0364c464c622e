"""Progressive distillation target = two teacher DDIM steps on a closed-form teacher; guidance distillation."""

import pytest
import torch

from models.diffusion import (CosineSchedule, DiscreteSchedule, ddim_x0_target, eps_from_x0, from_x0_eps,
                              guidance_distillation_loss, guidance_distillation_target,
                              progressive_distillation_loss, progressive_distillation_target,
                              sample_guidance_weights, scaled_linear_betas)

DISCRETE = DiscreteSchedule(scaled_linear_betas(1000, 0.00085, 0.012))
COSINE = CosineSchedule()
MU, S = 0.3, 0.5  # data ~ N(μ, s² I)


def gaussian_x0(z, alpha, sigma):
    """The exact posterior mean E[x | z_t] for Gaussian data: μ + α s²/(α² s² + σ²)·(z − α μ)."""
    a, s = alpha.view(-1, *[1] * (z.ndim - 1)), sigma.view(-1, *[1] * (z.ndim - 1))
    return MU + a * S**2 / (a**2 * S**2 + s**2) * (z.double() - a * MU)


def gaussian_teacher(schedule, prediction):
    def teacher(z, t):
        alpha, sigma = schedule.alpha(t), schedule.sigma(t)
        x0 = gaussian_x0(z, alpha, sigma)
        eps = eps_from_x0(z.double(), x0, alpha, sigma)
        return from_x0_eps(x0, eps, alpha, sigma, prediction).to(z.dtype)
    return teacher


def by_hand_ddim_from_x0(z, x0, t, s, schedule):
    """DDIM η = 0 written out: z_s = α_s x̂ + σ_s (z_t − α_t x̂)/σ_t."""
    a_t, s_t = schedule.alpha(t).view(-1, 1, 1), schedule.sigma(t).view(-1, 1, 1)
    a_s, s_s = schedule.alpha(s).view(-1, 1, 1), schedule.sigma(s).view(-1, 1, 1)
    return a_s * x0 + s_s * (z - a_t * x0) / s_t


def by_hand_ddim(z, t, s, schedule):
    """One teacher step of the closed-form Gaussian teacher."""
    return by_hand_ddim_from_x0(z, gaussian_x0(z, schedule.alpha(t), schedule.sigma(t)), t, s, schedule)


CASES = [
    (DISCRETE, torch.tensor([999, 500, 40, 2]), torch.tensor([749, 300, 20, 0]), torch.tensor([499, 100, 0, -1])),
    (COSINE, torch.tensor([1.0, 0.5, 0.1, 0.02], dtype=torch.float64),
     torch.tensor([0.875, 0.4, 0.075, 0.01], dtype=torch.float64),
     torch.tensor([0.75, 0.3, 0.05, 0.0], dtype=torch.float64)),
]


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
@pytest.mark.parametrize("schedule,t,t_mid,t_next", CASES, ids=["discrete", "cosine"])
def test_one_student_step_with_target_equals_two_teacher_steps(schedule, t, t_mid, t_next, prediction):
    g = torch.Generator().manual_seed(0)
    z_t = torch.randn(4, 6, 6, generator=g, dtype=torch.float64)
    x_tilde = progressive_distillation_target(gaussian_teacher(schedule, prediction), z_t, t, t_mid, t_next,
                                              schedule, prediction)
    two_teacher_steps = by_hand_ddim(by_hand_ddim(z_t, t, t_mid, schedule), t_mid, t_next, schedule)
    one_student_step = by_hand_ddim_from_x0(z_t, x_tilde, t, t_next, schedule)
    assert torch.allclose(one_student_step, two_teacher_steps, atol=1e-9)
    if schedule is DISCRETE:  # t'' = −1 is clean data: the target is simply where the teacher lands
        assert torch.allclose(x_tilde[3], two_teacher_steps[3], atol=1e-9)


def test_ddim_x0_target_inverts_a_ddim_step():
    g = torch.Generator().manual_seed(1)
    z_t, x0 = torch.randn(3, 5, generator=g, dtype=torch.float64), torch.randn(3, 5, generator=g, dtype=torch.float64)
    t, s = torch.tensor([900, 400, 50]), torch.tensor([600, 100, 10])
    args = (DISCRETE.alpha(t), DISCRETE.sigma(t), DISCRETE.alpha(s), DISCRETE.sigma(s))
    z_s = by_hand_ddim_from_x0(z_t.unsqueeze(-1), x0.unsqueeze(-1), t, s, DISCRETE).squeeze(-1)
    assert torch.allclose(ddim_x0_target(z_t, z_s, *args), x0, atol=1e-9)


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_progressive_distillation_loss_is_zero_at_target(prediction):
    schedule, t, t_mid, t_next = CASES[0]
    g = torch.Generator().manual_seed(2)
    z_t = torch.randn(4, 6, 6, generator=g, dtype=torch.float64)
    x_tilde = progressive_distillation_target(gaussian_teacher(schedule, "v"), z_t, t, t_mid, t_next, schedule, "v")
    alpha, sigma = schedule.alpha(t), schedule.sigma(t)
    student = from_x0_eps(x_tilde, eps_from_x0(z_t, x_tilde, alpha, sigma), alpha, sigma, prediction)
    loss = progressive_distillation_loss(student, z_t, x_tilde, alpha, sigma, prediction)
    assert loss.shape == (4,) and torch.allclose(loss, torch.zeros(4), atol=1e-8)
    assert bool((progressive_distillation_loss(student + 0.1, z_t, x_tilde, alpha, sigma, prediction) > 0).all())


def test_guidance_distillation_target_is_the_guided_combination():
    calls = []

    def teacher(z, t, ctx):
        calls.append(z.shape[0])
        return z * ctx.mean(dim=1).view(-1, 1, 1) + 0.01 * t.view(-1, 1, 1)

    g = torch.Generator().manual_seed(0)
    z, t = torch.randn(4, 3, 3, generator=g), torch.tensor([10, 20, 30, 40])
    cond, uncond = torch.randn(4, 5, generator=g), torch.zeros(1, 5)
    w = sample_guidance_weights(4, 0.0, 4.0, generator=g)
    assert bool(((w >= 0) & (w <= 4)).all())
    target = guidance_distillation_target(teacher, z, t, cond, uncond, w)
    assert calls == [8]
    c, u = teacher(z, t, cond), teacher(z, t, uncond.expand(4, -1))
    expected = (1 + w.view(-1, 1, 1)) * c - w.view(-1, 1, 1) * u
    assert torch.allclose(target, expected, atol=1e-6)
    assert torch.allclose(guidance_distillation_loss(expected, target), torch.zeros(4), atol=1e-10)
    assert guidance_distillation_loss(expected + 1.0, target).shape == (4,)
