"""EMA of a known parameter sequence equals its closed-form weighted average."""

from __future__ import annotations

import pytest
import torch

from training.ema import EMA


def sequence(n: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [{"w": torch.randn(3, 4, generator=g), "b": torch.randn(4, generator=g)} for _ in range(n + 1)]


def test_constant_decay_equals_closed_form_average():
    beta, thetas = 0.9, sequence(12)
    ema = EMA(thetas[0].items(), decay=beta)
    for theta in thetas[1:]:
        ema.update(theta.items())
    n = len(thetas) - 1
    for name in ("w", "b"):
        # θ̄_n = β^n θ_0 + Σ_{k=1..n} (1−β) β^{n−k} θ_k, in float64
        expected = beta**n * thetas[0][name].double() + sum(
            (1 - beta) * beta ** (n - k) * thetas[k][name].double() for k in range(1, n + 1))
        torch.testing.assert_close(ema.shadow[name].double(), expected, rtol=1e-6, atol=1e-6)


def test_warmup_decay_equals_closed_form_with_per_step_betas():
    thetas = sequence(30)
    ema = EMA(thetas[0].items(), decay=0.75, warmup=True)
    used = [ema.update(theta.items()) for theta in thetas[1:]]
    betas = [min(0.75, (1 + k) / (10 + k)) for k in range(1, 31)]  # TF ExponentialMovingAverage(num_updates)
    assert used == pytest.approx(betas)
    assert betas[0] == pytest.approx(2 / 11) and betas[-1] == 0.75 and betas[24] < 0.75  # capped from update 26 on

    def prod(values):
        out = 1.0
        for v in values:
            out *= v
        return out

    n = 30
    expected = prod(betas) * thetas[0]["w"].double() + sum(
        (1 - betas[k - 1]) * prod(betas[k:]) * thetas[k]["w"].double() for k in range(1, n + 1))
    torch.testing.assert_close(ema.shadow["w"].double(), expected, rtol=1e-6, atol=1e-6)


def test_state_dict_round_trip_continues_identically_and_averages_in_fp32():
    thetas = sequence(8)
    bf16 = [{k: v.to(torch.bfloat16) for k, v in t.items()} for t in thetas]
    a = EMA(bf16[0].items(), decay=0.99, warmup=True)
    for theta in bf16[1:5]:
        a.update(theta.items())
    b = EMA(bf16[0].items(), decay=0.5)
    b.load_state_dict(a.state_dict())
    for theta in bf16[5:]:
        a.update(theta.items())
        b.update(theta.items())
    assert b.num_updates == 8 and b.warmup and a.shadow["w"].dtype == torch.float32
    assert all(torch.equal(a.shadow[k], b.shadow[k]) for k in a.shadow)
    module = torch.nn.Linear(4, 3).to(torch.bfloat16)
    ema = EMA([("weight", module.weight), ("bias", torch.zeros(3))], decay=0.0)
    ema.update([("weight", torch.ones(3, 4)), ("bias", torch.full((3,), 2.0))])
    ema.copy_to(module)
    assert torch.equal(module.weight, torch.ones(3, 4, dtype=torch.bfloat16)) and torch.equal(module.bias, torch.full((3,), 2.0, dtype=torch.bfloat16))


def test_unknown_missing_or_sharded_parameters_are_clear_errors():
    ema = EMA([("w", torch.zeros(2, 2)), ("b", torch.zeros(2))], decay=0.9)
    with pytest.raises(KeyError, match="'x' is not tracked"):
        ema.update([("x", torch.zeros(2))])
    with pytest.raises(KeyError, match="no value for 1 tracked parameter"):
        ema.update([("w", torch.zeros(2, 2))])
    with pytest.raises(ValueError, match="ZeRO-3 shard"):
        ema.update([("w", torch.zeros(0)), ("b", torch.zeros(2))])


def test_ema_export_keeps_the_weights_that_do_not_train(tmp_path):
    """``ema.safetensors`` is the averages laid over the gathered weights: a frozen parameter (the spatial
    layers of a video LDM that trains its video layers only) is there with its value, so the file loads as
    the whole model."""
    from safetensors.torch import load_file, save_file

    from training.ema import EMA
    from training.loop import EMA_WEIGHTS_NAME, save_ema

    class Task:  # the two methods save_ema calls, as LDMTask has them (the export is the state itself)
        def export_state(self, trainable, frozen=None):
            return dict(trainable)

        def save_pretrained(self, directory, state, weights_name):
            save_file({k: v.contiguous() for k, v in state.items()}, str(directory / weights_name))

    module = torch.nn.Linear(2, 2)
    module.bias.requires_grad_(False)
    ema = EMA([(n, p) for n, p in module.named_parameters() if p.requires_grad], decay=0.5)
    with torch.no_grad():
        module.weight.fill_(1.0)
    ema.update([("weight", module.weight)])
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    save_ema(ema, Task(), None, tmp_path, state)
    saved = load_file(str(tmp_path / EMA_WEIGHTS_NAME))
    assert set(saved) == {"weight", "bias"}
    assert torch.equal(saved["bias"], module.bias.detach())
    assert torch.equal(saved["weight"], dict(ema.named_averages())["weight"])
