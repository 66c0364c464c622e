"""Composable conditioning (CoDi §3.2, Eq. 4): one context from several prompt modalities.

    c = Σ_m w_m · C(x_m),   with the weights normalised so that Σ_m w_m = 1.
Classifier-free guidance mixes the null embeddings (CLIP of "", of an all-zero image/video; CLAP of
silence) with the same weights, so the unconditional context lives where the conditional one does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def normalized_weights(weights: Sequence[float]) -> list[float]:
    """w_m / Σ w; weights must be non-negative with a positive sum."""
    w = [float(v) for v in weights]
    if not w or any(v < 0 for v in w) or sum(w) <= 0:
        raise ValueError(f"composition weights must be non-negative with a positive sum, got {list(weights)}")
    total = sum(w)
    return [v / total for v in w]


def compose(conditions: Sequence[torch.Tensor], weights: Sequence[float] | None = None) -> torch.Tensor:
    """Σ_m ŵ_m · C_m over same-shaped condition tensors (e.g. ``(b, 1, 768)`` each); equal weights if None."""
    if not conditions:
        raise ValueError("compose needs at least one condition")
    weights = [1.0] * len(conditions) if weights is None else weights
    if len(weights) != len(conditions):
        raise ValueError(f"{len(conditions)} conditions but {len(weights)} weights")
    shapes = {tuple(c.shape) for c in conditions}
    if len(shapes) != 1:
        raise ValueError(f"conditions must share one shape to be composed, got {sorted(shapes)}")
    return sum(w * c for w, c in zip(normalized_weights(weights), conditions))


def compose_with_null(conditions: Sequence[torch.Tensor], nulls: Sequence[torch.Tensor],
                      weights: Sequence[float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(context, null context): both composed with the same normalised weights (for guidance)."""
    if len(nulls) != len(conditions):
        raise ValueError(f"{len(conditions)} conditions but {len(nulls)} null embeddings")
    return compose(conditions, weights), compose(nulls, weights)
