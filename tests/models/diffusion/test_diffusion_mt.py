"""MT-Diffusion: step-by-step forward aggregation vs. Theorem 2, posterior vs. Gaussian conditioning, Eq. 6, Alg. 1."""

import math

import pytest
import torch
import torch.nn.functional as F

from models.diffusion import (DiscreteSchedule, MTDiffusion, mt_alpha_tilde, mt_consistent_start,
                              mt_default_weights, mt_diffusion_loss, mt_diffusion_sample, scaled_linear_betas)

T = 50
SCHEDULE = DiscreteSchedule(scaled_linear_betas(T, 0.00085, 0.2))  # short chain, ᾱ_T ≈ 0.01


def _process():
    # Two modalities: the paper's default w_t = t/(T − t) and a constant weight.
    weights = torch.stack([mt_default_weights(T), torch.full((T,), 0.05, dtype=torch.float64)])
    return MTDiffusion(SCHEDULE, weights)


def _data(n=4, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    z0 = torch.randn(n, d, generator=g, dtype=torch.float64)
    embeddings = [torch.randn(n, d, generator=g, dtype=torch.float64) for _ in range(2)]
    return z0, embeddings, g


def test_default_weights():
    w = mt_default_weights(1000)
    assert w[0] == 0 and w[500] == 1.0 and w[999] == 999.0
    assert torch.isfinite(w).all()


def test_alpha_tilde_matches_unrolled_sum():
    # Unrolling α̃_t = √α_t (w_t + α̃_{t−1}): α̃_t = Σ_{s≤t} w_s √(ᾱ_t / ᾱ_{s−1}).
    step_alphas = 1 - SCHEDULE.betas
    w = mt_default_weights(T)
    table = mt_alpha_tilde(step_alphas, w)
    abar = torch.cumprod(step_alphas, 0)
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    for t in (0, 1, 20, T - 1):
        expected = sum(w[s] * math.sqrt(abar[t] / abar_prev[s]) for s in range(t + 1))
        assert table[t].item() == pytest.approx(float(expected), rel=1e-12)


def test_iterated_forward_mean_matches_theorem2_marginal():
    """Noise-free iteration of Eq. 3 gives exactly the mean of Eq. 4 at every t."""
    proc = _process()
    z0, embeddings, _ = _data()
    z = z0
    for step in range(T):
        t = torch.full((z0.shape[0],), step)
        z = proc.forward_step(z, embeddings, t, torch.zeros_like(z0))
        assert torch.allclose(z, proc.q_sample(z0, embeddings, torch.zeros_like(z0), t), rtol=1e-10, atol=1e-10)


def test_iterated_forward_distribution_matches_theorem2_marginal():
    """Monte-Carlo: many noisy chains of Eq. 3 vs. N(√ᾱ_t z₀ + Σ α̃_t E, (1 − ᾱ_t) I)."""
    proc = _process()
    n = 100_000
    g = torch.Generator().manual_seed(1)
    z0 = torch.full((n, 1), 0.8, dtype=torch.float64)
    embeddings = [torch.full((n, 1), -0.5, dtype=torch.float64), torch.full((n, 1), 1.5, dtype=torch.float64)]
    z = z0
    for step in range(T):
        t = torch.tensor([step])  # one timestep broadcast over all chains
        z = proc.forward_step(z, embeddings, t, torch.randn(n, 1, generator=g, dtype=torch.float64))
        if step in (0, 10, T - 1):
            mean = proc.q_sample(z0[:1], [e[:1] for e in embeddings], torch.zeros(1, 1, dtype=torch.float64),
                                 t).item()
            var = 1 - SCHEDULE.alpha_bar(step).item()
            # 5 SE bands: SE(mean) = √(var/n), SE(var) ≈ var·√(2/n).
            assert z.mean().item() == pytest.approx(mean, abs=5 * math.sqrt(var / n))
            assert z.var().item() == pytest.approx(var, abs=5 * var * math.sqrt(2 / n))


@pytest.mark.parametrize("step", [0, 1, 25, T - 1])
def test_posterior_matches_gaussian_conditioning(step):
    """Eq. 5 vs. Lemma 4 done numerically: prior z_{t−1} | z₀, likelihood z_t | z_{t−1} of Eq. 3."""
    proc = _process()
    z0, embeddings, g = _data()
    t = torch.full((z0.shape[0],), step)
    z_t = torch.randn(z0.shape, generator=g, dtype=torch.float64)
    mean, var = proc.posterior(z_t, z0, embeddings, t)
    a_t = SCHEDULE.step_alpha(step).item()
    abar_prev = SCHEDULE.alpha_bar(step - 1).item()
    w_t = proc.weights[:, step]
    alpha_tilde_prev = proc.alpha_tilde[:, step - 1] if step > 0 else torch.zeros(2, dtype=torch.float64)
    prior_mean = math.sqrt(abar_prev) * z0 + sum(a * e for a, e in zip(alpha_tilde_prev, embeddings))
    prior_var = 1 - abar_prev
    shift = math.sqrt(a_t) * sum(w * e for w, e in zip(w_t, embeddings))  # z_t = √α_t z_{t−1} + shift + noise
    gain = prior_var * math.sqrt(a_t) / (a_t * prior_var + (1 - a_t))
    expected_mean = prior_mean + gain * (z_t - math.sqrt(a_t) * prior_mean - shift)
    expected_var = prior_var - gain * math.sqrt(a_t) * prior_var
    assert torch.allclose(mean, expected_mean, atol=1e-9)
    assert torch.allclose(var, torch.full_like(var, expected_var), rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("step", [0, 7, T - 1])
def test_eps_form_of_posterior_mean_equals_z0_form(step):
    proc = _process()
    z0, embeddings, g = _data()
    t = torch.full((z0.shape[0],), step)
    eps = torch.randn(z0.shape, generator=g, dtype=torch.float64)
    z_t = proc.q_sample(z0, embeddings, eps, t)
    mean, _ = proc.posterior(z_t, z0, embeddings, t)
    assert torch.allclose(proc.posterior_mean_from_eps(z_t, eps, embeddings, t), mean, atol=1e-8)


def test_multitask_loss_eq6():
    g = torch.Generator().manual_seed(0)
    eps_pred, eps = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    logits, labels = torch.randn(3, 10, generator=g), torch.tensor([1, 4, 9])
    recon, target = torch.randn(3, 16, generator=g), torch.randn(3, 16, generator=g)
    loss = mt_diffusion_loss(eps_pred, eps, [logits, recon], [labels, target], ["label", "continuous"])
    expected = ((eps_pred - eps) ** 2).mean(dim=(1, 2, 3)) + 0.1 * (
        F.cross_entropy(logits, labels, reduction="none") + ((recon - target) ** 2).mean(1))
    assert loss.shape == (3,) and torch.allclose(loss, expected, atol=1e-6)
    assert torch.allclose(mt_diffusion_loss(eps_pred, eps, [], [], []), ((eps_pred - eps) ** 2).mean(dim=(1, 2, 3)))
    with pytest.raises(ValueError):
        mt_diffusion_loss(eps_pred, eps, [recon], [target], ["image"])


def test_algorithm1_with_oracle_returns_z0_and_fills_missing_modality():
    """Alg. 1 with an oracle ε-head and x-heads: known data stays, missing data comes from the heads, z₀ exact."""
    proc = MTDiffusion.with_default_weights(SCHEDULE, num_modalities=2)
    z0, _, g = _data(n=3, d=5)
    x_known = torch.randn(3, 5, generator=g, dtype=torch.float64)
    x_missing = torch.randn(3, 5, generator=g, dtype=torch.float64)
    encoders = [lambda x: 0.5 * x, lambda x: torch.tanh(x)]

    def model(z_t, t):
        true_embeddings = [encoders[0](x_known), encoders[1](x_missing)]
        abar = SCHEDULE.alpha_bar(t).view(-1, 1)
        mean = abar.sqrt() * z0 + sum(a.view(-1, 1) * e for a, e in zip(proc.alpha_tilde_at(t), true_embeddings))
        eps = (z_t - mean) / (1 - abar).sqrt()
        return eps, [x_known + 100.0, x_missing]  # the known modality's head must be ignored

    z_T = torch.randn(3, 5, generator=g, dtype=torch.float64)
    z, xs = mt_diffusion_sample(model, z_T, proc, [x_known, torch.zeros(3, 5, dtype=torch.float64)], [True, False],
                                encoders, ["continuous", "continuous"], generator=g)
    assert torch.allclose(z, z0, atol=1e-8)
    assert torch.equal(xs[0], x_known) and torch.equal(xs[1], x_missing)


def test_mt_process_validates_weight_shape():
    with pytest.raises(ValueError):
        MTDiffusion(SCHEDULE, torch.zeros(2, T + 1))


def _gaussian_oracle(proc, embedding):
    """Exact E[ε | z_t] for z_0 ~ N(0, I): z_t ~ N(α̃_t E, I), so ε̂ = √(1 − ᾱ_t)(z_t − α̃_t E) (Theorem 2)."""

    def model(z_t, t):
        abar = proc.schedule.alpha_bar(t).view(-1, 1)
        mean = proc.alpha_tilde_at(t)[0].view(-1, 1) * embedding
        return (1 - abar).sqrt() * (z_t - mean), [torch.zeros_like(z_t)]

    return model


def test_consistent_start_removes_the_paper_starts_offset():
    """Paper's w_t = t/(T − t) on CoDi's 1000-step schedule: α̃_T ≈ 5e3, so Alg. 1's N(0, I) start is far off.

    With the exact denoiser for z_0 ~ N(0, I), each step maps the offset d_t = E[z_t] − α̃_t E to
    √α_t d_t, so the paper's start ends at E[z_0] = −α̃_T √ᾱ_T E (≈ −340 E here); the consistent
    start N(α̃_T E, (1 − ᾱ_T) I) ends at E[z_0] = 0, the data mean.
    """
    schedule = DiscreteSchedule(scaled_linear_betas(1000, 0.00085, 0.012))
    proc = MTDiffusion.with_default_weights(schedule, num_modalities=1)
    alpha_tilde_T = proc.alpha_tilde[0, -1].item()
    assert 4e3 < alpha_tilde_T < 6e3  # the "≈ 5000·E(x)" of the forward marginal at T
    n, d = 250, 32  # 8000 samples; few rows keep the per-sample coefficient tables small
    x = torch.full((n, d), 0.01, dtype=torch.float64)  # the known modality; E = identity
    model, encoders = _gaussian_oracle(proc, x), [lambda v: v]
    results = {}
    for start in ("paper", "consistent"):
        z_T = torch.randn(n, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        z0, _ = mt_diffusion_sample(model, z_T, proc, [x], [True], encoders, ["continuous"],
                                    generator=torch.Generator().manual_seed(1), start=start)
        results[start] = z0.mean().item()
    offset = -alpha_tilde_T * schedule.alpha(999).item() * 0.01
    se = 5 / math.sqrt(n * d)  # 5 SE of a mean of ≈ unit-variance samples
    assert offset < -2.5
    assert results["paper"] == pytest.approx(offset, abs=se)
    assert results["consistent"] == pytest.approx(0.0, abs=se)
    # The consistent start is Theorem 2's marginal at T without the z_0 term.
    noise = torch.randn(3, d, dtype=torch.float64)
    last = torch.full((3,), 999)
    start = mt_consistent_start(noise, [x[:3]], schedule.alpha_bar(last), proc.alpha_tilde_at(last))
    assert torch.allclose(start, proc.q_sample(torch.zeros(3, d, dtype=torch.float64), [x[:3]], noise, last))
    with pytest.raises(ValueError):
        mt_diffusion_sample(model, z_T, proc, [x], [True], encoders, ["continuous"], start="zero")


def test_label_head_logits_are_fed_back_as_probabilities():
    """A label head outputs logits; E_i embeds label distributions, so Alg. 1 must feed softmax(logits) back."""
    proc = _process()
    logits = torch.tensor([[2.0, 0.0, -1.0]], dtype=torch.float64).expand(2, 3)
    seen = []

    def encoder(p):
        seen.append(p.clone())
        return torch.zeros(2, 6, dtype=torch.float64) + p.sum(-1, keepdim=True)

    def model(z_t, t):
        return torch.zeros_like(z_t), [torch.zeros(2, 6, dtype=torch.float64), logits]

    z_T = torch.randn(2, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    _, xs = mt_diffusion_sample(model, z_T, proc, [torch.zeros(2, 6, dtype=torch.float64),
                                                   torch.zeros(2, 3, dtype=torch.float64)],
                                [True, False], [lambda v: v, encoder], ["continuous", "label"])
    probs = torch.softmax(logits, -1)
    assert torch.allclose(xs[1], probs)
    for p in seen:  # the random initial guess and every later estimate are distributions
        assert bool((p >= 0).all()) and torch.allclose(p.sum(-1), torch.ones(2, dtype=torch.float64))
    assert all(torch.allclose(p, probs) for p in seen[1:])
