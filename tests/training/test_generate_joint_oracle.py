"""Joint / independent sampling of dict latents, proved with a closed-form oracle.

Data: for every element index j, the vector (x_image[j], x_audio[j], x_text[j]) is Gaussian with mean
μ_m(c) = c + OFFSET_m (c read from the context) and covariance Σ = S²[(1−ρ)I + ρ·11ᵀ] — the
modalities are correlated element by element. An oracle called with a subset P of the modalities
answers the exact E[x_P | z_P] of that subset's marginal: x̂ = μ + Σ_P α V⁻¹ (z − α μ),
V = α² Σ_P + σ² I. So modality A's answer depends on B's noisy latent only when B is in the same
call (joint), and alone it is the scalar Gaussian denoiser (independent). With η = 0, DDIM is a
linear map of x_T; the test runs it here in numpy (Eq. 12 of DDIM written out, per-modality
guidance x̃_m = (1 + w_m) x̂_m(c) − w_m x̂_m(u)), with α_t, σ_t from SD's β formula.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.codi.sampling import modality_seed, sample_independent, sample_joint, table12_guidance
from models.conditioning import compose_with_null
from models.diffusion import DiffusionConfig, Guidance, SamplingConfig, from_x0_eps

S, RHO = 0.3, 0.8
OFFSET = {"image": 0.0, "audio": 0.5, "text": -0.4}
MU_C, MU_U = 0.3, 0.1
SHAPES = {"image": (2, 4, 4, 4), "audio": (2, 8, 2, 4), "text": (2, 64)}  # 64 elements per row each
TRAILING_4 = [999, 749, 499, 249]


def alpha_sigma(t) -> tuple[float, float]:
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
    abar = float(np.prod(1 - betas[: t + 1]))
    return math.sqrt(abar), math.sqrt(1 - abar)


def sigma_matrix(k: int) -> np.ndarray:
    return S**2 * ((1 - RHO) * np.eye(k) + RHO * np.ones((k, k)))


class CorrelatedOracle:
    """model(latents, t, context) -> {m: output}: the exact posterior of the modalities present, as ε, x₀ or v."""

    def __init__(self, answers_as: str = "eps"):
        self.answers_as = answers_as
        self.calls: list[tuple[str, ...]] = []

    def __call__(self, latents: dict, t: torch.Tensor, context: torch.Tensor) -> dict:
        names = tuple(latents)
        self.calls.append(names)
        c = context[:, 0, 0].double()
        coeffs = [alpha_sigma(int(ti)) for ti in t.tolist()]
        alpha = torch.tensor([a for a, _ in coeffs], dtype=torch.float64)
        sigma = torch.tensor([s for _, s in coeffs], dtype=torch.float64)
        b = c.shape[0]
        z = torch.stack([latents[m].reshape(b, -1).double() for m in names], 1)      # b k n
        mu = torch.stack([c + OFFSET[m] for m in names], 1)[..., None]               # b k 1
        sig = torch.as_tensor(sigma_matrix(len(names)))
        out = {}
        for i in range(b):
            v = alpha[i] ** 2 * sig + sigma[i] ** 2 * torch.eye(len(names), dtype=torch.float64)
            gain = alpha[i] * sig @ torch.linalg.inv(v)
            x0 = mu[i] + gain @ (z[i] - alpha[i] * mu[i])
            eps = (z[i] - alpha[i] * x0) / sigma[i]
            ans = from_x0_eps(x0, eps, alpha[i], sigma[i], self.answers_as)
            for k, m in enumerate(names):
                out.setdefault(m, []).append(ans[k])
        return {m: torch.stack(out[m]).reshape(latents[m].shape).to(latents[m].dtype) for m in names}


def first_draws(seeds, shapes):
    """x_T of each modality: row i is the first draw of the generator seeded modality_seed(seeds[i], m)."""
    return {m: np.stack([torch.randn((1, *shape[1:]), generator=torch.Generator().manual_seed(
        modality_seed(s, m)))[0].reshape(-1).double().numpy() for s in seeds]) for m, shape in shapes.items()}


def expected(x_T: dict, weights: dict, groups: list[tuple[str, ...]], mu_c=MU_C, mu_u=MU_U) -> dict:
    """η = 0 DDIM from x_T, each group of modalities sampled together, guidance w_m per modality."""
    result = {}
    for names in groups:
        k = len(names)
        sig = sigma_matrix(k)
        z = np.stack([x_T[m] for m in names], 1)  # rows, k, n
        w = np.array([weights[m] for m in names])[:, None]
        mc = np.array([mu_c + OFFSET[m] for m in names])[:, None]
        mu_ = np.array([mu_u + OFFSET[m] for m in names])[:, None]
        for i, t in enumerate(TRAILING_4):
            a_t, s_t = alpha_sigma(t)
            a_s, s_s = alpha_sigma(TRAILING_4[i + 1]) if i + 1 < len(TRAILING_4) else (1.0, 0.0)
            gain = a_t * sig @ np.linalg.inv(a_t**2 * sig + s_t**2 * np.eye(k))
            x_c = mc + gain @ (z - a_t * mc)
            x_u = mu_ + gain @ (z - a_t * mu_)
            x0 = (1 + w) * x_c - w * x_u
            eps = (z - a_t * x0) / s_t
            z = a_s * x0 + s_s * eps
        for j, m in enumerate(names):
            result[m] = z[:, j]
    return result


def contexts(batch=2, mu_c=MU_C, mu_u=MU_U):
    return torch.full((batch, 1, 8), mu_c), torch.full((1, 1, 8), mu_u)


def run(sampler, oracle, prediction="eps", guidance=None, seed=3, eta=0.0, context=None):
    diffusion = DiffusionConfig(prediction=prediction)
    sampling = SamplingConfig(steps=4, eta=eta, seed=seed)
    guidance = guidance or {m: Guidance(1.5, "scale") for m in SHAPES}
    out = sampler(oracle, SHAPES, *(context or contexts()), diffusion, sampling, guidance)
    return {m: z.reshape(z.shape[0], -1).double().numpy() for m, z in out.items()}


def close(a: dict, b: dict, atol=1e-4) -> bool:
    return all(np.allclose(a[m], b[m], atol=atol) for m in a)


def test_joint_couples_the_modalities_and_independent_does_not():
    x_T = first_draws([3, 4], SHAPES)
    weights = {m: 0.5 for m in SHAPES}  # s = 1.5
    joint_oracle, indep_oracle = CorrelatedOracle(), CorrelatedOracle()
    joint = run(sample_joint, joint_oracle)
    indep = run(sample_independent, indep_oracle)
    assert close(joint, expected(x_T, weights, [tuple(SHAPES)]))
    assert close(indep, expected(x_T, weights, [(m,) for m in SHAPES]))
    gap = max(np.abs(joint[m] - indep[m]).mean() for m in SHAPES)
    assert gap > 0.05, gap  # the coupling moves the result: the two closed forms are far apart
    # Routing: one call per step with every latent; independent = 4 calls per modality, each alone.
    assert joint_oracle.calls == [("image", "audio", "text")] * 4
    assert indep_oracle.calls == [("image",)] * 4 + [("audio",)] * 4 + [("text",)] * 4


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_prediction_type(prediction):
    x_T = first_draws([3, 4], SHAPES)
    right = run(sample_joint, CorrelatedOracle(prediction), prediction=prediction)
    assert close(right, expected(x_T, {m: 0.5 for m in SHAPES}, [tuple(SHAPES)]))
    if prediction != "eps":  # the same model read as ε lands elsewhere
        wrong = run(sample_joint, CorrelatedOracle(prediction), prediction="eps")
        assert max(np.abs(wrong[m] - right[m]).mean() for m in SHAPES) > 0.05


def test_per_modality_guidance_direction_and_weight():
    x_T = first_draws([3, 4], SHAPES)
    guidance = {"image": Guidance(2.0, "scale"), "audio": Guidance(7.5, "scale"), "text": Guidance(0.5, "imagen")}
    weights = {"image": 1.0, "audio": 6.5, "text": 0.5}
    out = run(sample_joint, CorrelatedOracle(), guidance=guidance)
    assert close(out, expected(x_T, weights, [tuple(SHAPES)]))
    # Guiding away from the prompt (branches swapped: w' = −1 − w) or the same w for all is elsewhere.
    swapped = expected(x_T, {m: -1 - w for m, w in weights.items()}, [tuple(SHAPES)])
    same = expected(x_T, {m: 1.0 for m in SHAPES}, [tuple(SHAPES)])
    assert np.abs(out["audio"] - swapped["audio"]).mean() > 0.05
    assert np.abs(out["audio"] - same["audio"]).mean() > 0.05


def test_table12_defaults():
    guidance = table12_guidance(["image", "video", "audio", "text"])
    assert {m: g.imagen_weights(1)[0] for m, g in guidance.items()} == {
        "image": 1.0, "video": 1.0, "audio": 6.5, "text": 1.0}


def test_seed_determinism_and_rows_reproducible_alone():
    oracle = CorrelatedOracle()
    a = run(sample_joint, oracle, seed=3, eta=1.0)
    b = run(sample_joint, oracle, seed=3, eta=1.0)
    c = run(sample_joint, oracle, seed=5, eta=1.0)
    assert all(np.array_equal(a[m], b[m]) for m in SHAPES)
    assert all(np.abs(a[m] - c[m]).mean() > 1e-3 for m in SHAPES)
    # Row 1 of seed 3 is row 0 of seed 4 (each row has its own generators), even with η = 1.
    one = {m: (1, *s[1:]) for m, s in SHAPES.items()}
    alone = sample_joint(oracle, one, *contexts(1), DiffusionConfig(), SamplingConfig(steps=4, eta=1.0, seed=4),
                         {m: Guidance(1.5, "scale") for m in SHAPES})
    assert all(np.allclose(a[m][1], alone[m].reshape(-1).double().numpy(), atol=1e-6) for m in SHAPES)


def test_composed_condition_weights_give_the_closed_form_mix():
    # Two prompts carrying c = 0.6 and c = 0.0 (nulls 0.2 and −0.1), weighted 1 : 2.
    conds = [torch.full((2, 1, 8), 0.6), torch.full((2, 1, 8), 0.0)]
    nulls = [torch.full((1, 1, 8), 0.2), torch.full((1, 1, 8), -0.1)]
    context, uncond = compose_with_null(conds, nulls, [1, 2])
    out = run(sample_joint, CorrelatedOracle(), context=(context, uncond))
    mix_c, mix_u = (0.6 + 2 * 0.0) / 3, (0.2 + 2 * -0.1) / 3
    x_T = first_draws([3, 4], SHAPES)
    assert close(out, expected(x_T, {m: 0.5 for m in SHAPES}, [tuple(SHAPES)], mu_c=mix_c, mu_u=mix_u))
    equal = expected(x_T, {m: 0.5 for m in SHAPES}, [tuple(SHAPES)], mu_c=0.3, mu_u=0.05)
    assert np.abs(out["image"] - equal["image"]).mean() > 0.02  # 1 : 1 would land elsewhere
