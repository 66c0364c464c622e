"""MT-Diffusion: multi-modal multi-task diffusion with forward aggregation (MT-Diffusion §2.2).

Modality data x_i are mapped into the diffusion space by fixed encoders E_i and aggregated into the
mean of every forward transition (Eq. 3, in the re-written form below it):

    q(z_t | z_{t−1}, X) = N(z_t; √α_t (z_{t−1} + Σ_i w_t⁽ⁱ⁾ E_i(x_i)), (1 − α_t) I).

α_t here is DDPM's per-step 1 − β_t and ᾱ_t = Π α_s (see ``schedules.py``). Timesteps are the
0-based code index t = 0..T−1 (the paper's t − 1); the transition *into* index t uses w_t and α_t,
and index −1 is z_0. The default weight w_t = t/(T − t) (App. E: "t/(1000 − t)") is evaluated at
the 0-based index, which keeps it finite (the paper's 1-based t = 1000 would divide by zero). It
grows to T − 1, so α̃ gets large (≈ 5·10³ at t = 999 on the SD schedule): the forward marginal
at T is N(√ᾱ_T z_0 + Σ α̃_T E_i(x_i), (1 − ᾱ_T) I), far from N(0, I) unless E(x) is small, although
Algorithm 1 starts from z_T ~ N(0, I). ``mt_diffusion_sample`` keeps the paper's start by default
and offers ``start="consistent"``: z_T ~ N(Σ α̃_T E_i(x_i), (1 − ᾱ_T) I), the marginal without the
(unknown, and ×√ᾱ_T small) z_0 term.
"""

from dataclasses import dataclass, field
from typing import Callable, List, Literal, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .losses import mse_per_sample
from .noise_priors import NoiseFn, iid_noise
from .process import expand_like, q_posterior_variance
from .schedules import DiscreteSchedule

HeadKind = Literal["label", "continuous"]


def mt_default_weights(num_timesteps: int = 1000) -> Tensor:
    """w_t = t/(T − t) for t = 0..T−1 — MT-Diffusion App. E ("w_t⁽ⁱ⁾ = t/(1000 − t)")."""
    t = torch.arange(num_timesteps, dtype=torch.float64)
    return t / (num_timesteps - t)


def mt_alpha_tilde(step_alphas: Tensor, weights: Tensor) -> Tensor:
    """α̃_t = √α_t (w_t + α̃_{t−1}) with α̃ = 0 before the first step — MT-Diffusion Theorem 2."""
    out, prev = [], 0.0
    for a, w in zip(step_alphas.tolist(), weights.tolist()):
        prev = a**0.5 * (w + prev)
        out.append(prev)
    return torch.tensor(out, dtype=torch.float64)


def mt_aggregate(coeffs: Tensor, embeddings: Sequence[Tensor]) -> Tensor:
    """Σ_i c⁽ⁱ⁾ E_i(x_i) for per-modality coefficients ``(N,)`` or ``(N, b)`` — the aggregation of Eq. 3–5."""
    return sum(expand_like(c, e) * e for c, e in zip(coeffs, embeddings))


def mt_forward_step(z_prev: Tensor, embeddings: Sequence[Tensor], step_alpha: Tensor, weights_t: Tensor,
                    noise: Tensor) -> Tensor:
    """z_t = √α_t (z_{t−1} + Σ_i w_t⁽ⁱ⁾ E_i(x_i)) + √(1 − α_t) ε — MT-Diffusion Eq. 3 (re-written form)."""
    return (expand_like(step_alpha.sqrt(), z_prev) * (z_prev + mt_aggregate(weights_t, embeddings))
            + expand_like((1 - step_alpha).sqrt(), noise) * noise)


def mt_q_sample(z0: Tensor, embeddings: Sequence[Tensor], eps: Tensor, alpha_bar: Tensor,
                alpha_tilde_t: Tensor) -> Tensor:
    """z_t = √ᾱ_t z_0 + Σ_i α̃_t⁽ⁱ⁾ E_i(x_i) + √(1 − ᾱ_t) ε ~ q(z_t | z_0, X) — MT-Diffusion Theorem 2, Eq. 4."""
    return (expand_like(alpha_bar.sqrt(), z0) * z0 + mt_aggregate(alpha_tilde_t, embeddings)
            + expand_like((1 - alpha_bar).sqrt(), eps) * eps)


def mt_consistent_start(noise: Tensor, embeddings: Sequence[Tensor], alpha_bar_T: Tensor,
                        alpha_tilde_T: Tensor) -> Tensor:
    """z_T = Σ_i α̃⁽ⁱ⁾_T E_i(x_i) + √(1 − ᾱ_T) ξ ~ N(Σ α̃_T E, (1 − ᾱ_T) I): Theorem 2's marginal at T without z_0.

    ``noise`` is the ξ ~ N(0, I) that Algorithm 1 would use as z_T directly.
    """
    return mt_aggregate(alpha_tilde_T, embeddings) + expand_like((1 - alpha_bar_T).sqrt(), noise) * noise


def mt_posterior_mean(z_t: Tensor, z0: Tensor, embeddings: Sequence[Tensor], step_alpha: Tensor,
                      alpha_bar: Tensor, alpha_bar_prev: Tensor, alpha_tilde_prev: Tensor,
                      weights_t: Tensor) -> Tensor:
    """Mean μ̃_t(z_t, z_0, X) of q(z_{t−1} | z_t, z_0, X) — MT-Diffusion Theorem 2, Eq. 5.

    μ̃_t = [√α_t(1−ᾱ_{t−1}) z_t + (1−α_t)√ᾱ_{t−1} z_0
           + Σ_i ((1−α_t) α̃⁽ⁱ⁾_{t−1} − α_t (1−ᾱ_{t−1}) w⁽ⁱ⁾_t) E_i(x_i)] / (1−ᾱ_t)
    """
    denom = 1 - alpha_bar
    coeff_e = ((1 - step_alpha) * alpha_tilde_prev - step_alpha * (1 - alpha_bar_prev) * weights_t) / denom
    return (expand_like(step_alpha.sqrt() * (1 - alpha_bar_prev) / denom, z_t) * z_t
            + expand_like((1 - step_alpha) * alpha_bar_prev.sqrt() / denom, z0) * z0
            + mt_aggregate(coeff_e, embeddings))


def mt_posterior_mean_from_eps(z_t: Tensor, eps: Tensor, embeddings: Sequence[Tensor], step_alpha: Tensor,
                               alpha_bar: Tensor, weights_t: Tensor) -> Tensor:
    """μ̃_t = (1/√α_t)(z_t − (1−α_t)/√(1−ᾱ_t)·ε) − Σ_i w_t⁽ⁱ⁾ E_i(x_i) — MT-Diffusion App. B, Alg. 1 line 12."""
    return (expand_like(1 / step_alpha.sqrt(), z_t)
            * (z_t - expand_like((1 - step_alpha) / (1 - alpha_bar).sqrt(), eps) * eps)
            - mt_aggregate(weights_t, embeddings))


@dataclass
class MTDiffusion:
    """A discrete schedule plus per-modality weight tables w⁽ⁱ⁾_t ``(N, T)`` and their α̃⁽ⁱ⁾_t (Theorem 2)."""

    schedule: DiscreteSchedule
    weights: Tensor
    alpha_tilde: Tensor = field(init=False)

    def __post_init__(self):
        self.weights = torch.as_tensor(self.weights, dtype=torch.float64)
        if self.weights.ndim != 2 or self.weights.shape[1] != self.schedule.num_timesteps:
            raise ValueError("weights must have shape (num_modalities, num_timesteps)")
        step_alphas = 1 - self.schedule.betas
        self.alpha_tilde = torch.stack([mt_alpha_tilde(step_alphas, w) for w in self.weights])

    @classmethod
    def with_default_weights(cls, schedule: DiscreteSchedule, num_modalities: int = 1) -> "MTDiffusion":
        """Every modality weighted by w_t = t/(T − t)."""
        w = mt_default_weights(schedule.num_timesteps)
        return cls(schedule, w.expand(num_modalities, -1).clone())

    def _table(self, table: Tensor, t: Tensor) -> Tensor:
        """Per-modality, per-sample entries ``(N, b)``; index −1 (before the first step) reads 0."""
        t = torch.as_tensor(t)
        padded = torch.cat([torch.zeros_like(table[:, :1]), table], 1).to(t.device)
        return padded[:, t.long() + 1]

    def weights_at(self, t: Tensor) -> Tensor:
        """w⁽ⁱ⁾_t as ``(N, b)``."""
        return self._table(self.weights, t)

    def alpha_tilde_at(self, t: Tensor) -> Tensor:
        """α̃⁽ⁱ⁾_t as ``(N, b)`` (0 at t = −1)."""
        return self._table(self.alpha_tilde, t)

    def forward_step(self, z_prev: Tensor, embeddings: Sequence[Tensor], t: Tensor, noise: Tensor) -> Tensor:
        return mt_forward_step(z_prev, embeddings, self.schedule.step_alpha(t), self.weights_at(t), noise)

    def q_sample(self, z0: Tensor, embeddings: Sequence[Tensor], eps: Tensor, t: Tensor) -> Tensor:
        return mt_q_sample(z0, embeddings, eps, self.schedule.alpha_bar(t), self.alpha_tilde_at(t))

    def posterior(self, z_t: Tensor, z0: Tensor, embeddings: Sequence[Tensor], t: Tensor) -> Tuple[Tensor, Tensor]:
        """(μ̃_t, β̃_t) of q(z_{t−1} | z_t, z_0, X) — Theorem 2, Eq. 5 (β̃_t is DDPM's posterior variance)."""
        s = self.schedule
        mean = mt_posterior_mean(z_t, z0, embeddings, s.step_alpha(t), s.alpha_bar(t), s.alpha_bar(t - 1),
                                 self.alpha_tilde_at(t - 1), self.weights_at(t))
        return mean, self.posterior_variance(t)

    def posterior_mean_from_eps(self, z_t: Tensor, eps: Tensor, embeddings: Sequence[Tensor], t: Tensor) -> Tensor:
        return mt_posterior_mean_from_eps(z_t, eps, embeddings, self.schedule.step_alpha(t),
                                          self.schedule.alpha_bar(t), self.weights_at(t))

    def posterior_variance(self, t: Tensor) -> Tensor:
        s = self.schedule
        return q_posterior_variance(s.alpha(t - 1), s.sigma(t - 1), s.alpha(t), s.sigma(t))


def mt_diffusion_loss(eps_pred: Tensor, eps: Tensor, head_outputs: Sequence[Tensor],
                      head_targets: Sequence[Tensor], head_kinds: Sequence[HeadKind],
                      lam: float = 0.1) -> Tensor:
    """L = L_mse + λ Σ_i KL(q_i(x_i) ‖ p_θ(x_i | z_t)), per sample — MT-Diffusion Eq. 6 (λ = 0.1).

    The KL is a cross-entropy for ``"label"`` heads and an MSE for ``"continuous"`` heads (§2.2.3).
    """
    loss = mse_per_sample(eps_pred.float(), eps.float())
    for out, target, kind in zip(head_outputs, head_targets, head_kinds):
        if kind == "label":  # KL to a one-hot / soft label = cross-entropy up to a constant
            loss = loss + lam * F.cross_entropy(out.float(), target, reduction="none")
        elif kind == "continuous":  # Gaussian p_θ(x_i | z_t): KL reduces to MSE
            loss = loss + lam * mse_per_sample(out.float(), target.float())
        else:
            raise ValueError(f"unknown head kind {kind!r}")
    return loss


def head_estimate(head_output: Tensor, kind: HeadKind) -> Tensor:
    """The data estimate x̂_i a head's output stands for: class probabilities softmax(logits) for a label head.

    E_i maps data (one-hot / soft labels) into the diffusion space, so a label head's logits must be
    turned into a distribution before they are fed back into E_i (MT-Diffusion §2.2.3, Alg. 1 line 10).
    """
    if kind == "label":
        return torch.softmax(head_output, dim=-1)
    if kind == "continuous":
        return head_output
    raise ValueError(f"unknown head kind {kind!r}")


@torch.no_grad()
def mt_diffusion_sample(model: Callable[[Tensor, Tensor], Tuple[Tensor, Sequence[Tensor]]], z_T: Tensor,
                        process: MTDiffusion, xs: Sequence[Tensor], known: Sequence[bool],
                        encoders: Sequence[Callable[[Tensor], Tensor]], head_kinds: Sequence[HeadKind],
                        generator: Optional[torch.Generator] = None, noise_fn: NoiseFn = iid_noise,
                        start: Literal["paper", "consistent"] = "paper") -> Tuple[Tensor, List[Tensor]]:
    """Generate z_0 and every missing modality, re-estimating missing x_i from the heads each step — MT-Diffusion Algorithm 1.

    ``model(z_t, t) -> (ε̂, [head output_i])``; ``encoders[i]`` is E_i; ``head_kinds[i]`` says whether
    head i gives logits (``"label"``: fed back as softmax probabilities) or data (``"continuous"``).
    ``xs[i]`` is the known data or a tensor of the right shape (replaced by a random initial guess —
    a random distribution for label modalities — when ``known[i]`` is False). ``z_T`` ~ N(0, I) is
    Algorithm 1's start (``start="paper"``); ``start="consistent"`` maps it to
    ``mt_consistent_start`` with the initial x_i.
    """
    if start not in ("paper", "consistent"):
        raise ValueError(f"start must be 'paper' or 'consistent', got {start!r}")
    xs = [x if k else head_estimate(torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype), kind)
          for x, k, kind in zip(xs, known, head_kinds)]
    z = z_T
    if start == "consistent":
        last = torch.full((z.shape[0],), process.schedule.num_timesteps - 1, dtype=torch.long, device=z.device)
        z = mt_consistent_start(z_T, [encode(x) for encode, x in zip(encoders, xs)],
                                process.schedule.alpha_bar(last), process.alpha_tilde_at(last))
    for step in range(process.schedule.num_timesteps - 1, -1, -1):
        t = torch.full((z.shape[0],), step, dtype=torch.long, device=z.device)
        embeddings = [encode(x) for encode, x in zip(encoders, xs)]  # line 7: e_i = E(x_i), before the update
        eps, head_outputs = model(z, t)
        xs = [x if k else head_estimate(out, kind) for x, k, out, kind in zip(xs, known, head_outputs, head_kinds)]
        z_prev = process.posterior_mean_from_eps(z, eps, embeddings, t)
        if step > 0:
            noise = noise_fn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
            z_prev = z_prev + expand_like(process.posterior_variance(t).sqrt(), noise) * noise
        z = z_prev
    return z, xs
