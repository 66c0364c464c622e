"""Exponential moving average of parameters, fed (name, full tensor) pairs.

    θ̄_0 = θ_0,   θ̄_n = β_n θ̄_{n-1} + (1 − β_n) θ_n

With a constant β this is θ̄_n = β^n θ_0 + Σ_{k=1..n} (1 − β) β^{n−k} θ_k. With ``warmup`` the decay
of the n-th update is β_n = min(β, (1 + n) / (10 + n)) (TensorFlow's ``ExponentialMovingAverage``
with ``num_updates``, used by latent diffusion's LitEma), so early averages forget the random init.

The update takes any iterable of (name, tensor) pairs rather than a module, so a ZeRO-3 engine can
feed each parameter while it is gathered (``GatheredParameters``) and keep the average on one rank.
The average is held in fp32 whatever the parameters' dtype (bf16 steps are below bf16's resolution).
"""

from __future__ import annotations

from typing import Iterable, Iterator

import torch


def ema_decay(decay: float, num_updates: int, warmup: bool) -> float:
    """β_n of the n-th update (n >= 1)."""
    return min(decay, (1 + num_updates) / (10 + num_updates)) if warmup else decay


class EMA:
    def __init__(self, named_params: Iterable[tuple[str, torch.Tensor]], decay: float = 0.9999, warmup: bool = False):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay, self.warmup, self.num_updates = decay, warmup, 0
        self.shadow = {name: t.detach().to(torch.float32, copy=True) for name, t in named_params}

    @torch.no_grad()
    def update(self, named_params: Iterable[tuple[str, torch.Tensor]]) -> float:
        """One step of the average over every tracked parameter; returns the β used."""
        self.num_updates += 1
        beta = ema_decay(self.decay, self.num_updates, self.warmup)
        seen = set()
        for name, t in named_params:
            if name not in self.shadow:
                raise KeyError(f"EMA: parameter {name!r} is not tracked (tracked: {len(self.shadow)} parameters)")
            avg = self.shadow[name]
            if t.shape != avg.shape:
                raise ValueError(f"EMA: parameter {name!r} has shape {tuple(t.shape)}, the average {tuple(avg.shape)} "
                                 f"(a ZeRO-3 shard? pass the gathered tensor)")
            avg.lerp_(t.detach().to(avg.device, torch.float32), 1.0 - beta)   # β θ̄ + (1 − β) θ
            seen.add(name)
        missing = self.shadow.keys() - seen
        if missing:
            raise KeyError(f"EMA: update got no value for {len(missing)} tracked parameter(s), e.g. {sorted(missing)[0]!r}")
        return beta

    def named_averages(self) -> Iterator[tuple[str, torch.Tensor]]:
        return iter(self.shadow.items())

    @torch.no_grad()
    def copy_to(self, module: torch.nn.Module) -> None:
        """Write the averages into the module's parameters of the same names (e.g. to export EMA weights)."""
        params = dict(module.named_parameters())
        for name, avg in self.shadow.items():
            params[name].copy_(avg.to(params[name].dtype))

    def state_dict(self) -> dict:
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates,
                "shadow": {k: v.clone() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        if set(state["shadow"]) != set(self.shadow):
            extra = sorted(set(state["shadow"]) ^ set(self.shadow))
            raise KeyError(f"EMA state does not match the tracked parameters (differs at {extra[0]!r})")
        self.decay, self.warmup, self.num_updates = float(state["decay"]), bool(state["warmup"]), int(state["num_updates"])
        self.shadow = {k: v.detach().to(torch.float32, copy=True) for k, v in state["shadow"].items()}


class RankZeroEMA:
    """The EMA of a training engine's trainable weights, held (fp32, CPU) on rank 0 only.

    Under ZeRO-3 every rank holds a shard of each parameter: ``update`` gathers one parameter at a
    time (``deepspeed.zero.GatheredParameters``, a collective every rank enters; the cost is one
    all-gather of the weights per step, like a forward pass) and rank 0 folds the full value into the
    average. Under ZeRO 0-2 every rank holds the full weights and only rank 0 reads them. Either way
    the average is of the weights the forward pass uses (bf16 under ``precision=bf16``).
    """

    def __init__(self, module: torch.nn.Module, rank: int, decay: float, warmup: bool, zero3: bool,
                 resumed: bool, load_state=None):
        """Starts from θ_0 (gathered), or on a resume (``resumed`` on every rank) from
        ``load_state()``, which only rank 0 calls (an ``EMA.state_dict()``)."""
        from training.engine import gathered_params

        self.module, self.rank, self.zero3 = module, rank, zero3
        self.ema: EMA | None = None
        if rank == 0:
            state = load_state() if resumed else None
            self.ema = EMA(gathered_params(module) if state is None else state["shadow"].items(), decay, warmup)
            if state is not None:
                self.ema.load_state_dict(state)
        elif zero3 and not resumed:
            for _ in gathered_params(module):  # rank 0 is gathering: take part
                pass

    def update(self) -> None:
        from training.engine import gathered_params

        if self.ema is not None:
            self.ema.update(gathered_params(self.module))
        elif self.zero3:
            for _ in gathered_params(self.module):
                pass
