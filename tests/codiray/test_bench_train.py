"""`codiray bench train`: the memory rows against the ZeRO paper and DeepSpeed's estimators, the
parameter count against diffusers, and the CPU code paths of the timing rows at tiny size."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import re

import pytest
import torch

from codiray import bench_train as bt

PSI = 7_500_000_000  # the ZeRO paper's Figure 1 example: 7.5B parameters, N_d = 64, Adam, mixed precision


@pytest.mark.parametrize("stage, paper_gb", [(0, 120.0), (1, 31.4), (2, 16.6), (3, 1.88)])
def test_zero_per_rank_bytes_reproduce_the_papers_figure_1(stage, paper_gb):
    # Rajbhandari et al. 2020, Fig. 1: baseline 120 GB, P_os 31.4 GB, P_os+g 16.6 GB, P_os+g+p 1.9 GB
    states = bt.zero_model_states(PSI, 64, stage, "bf16")
    assert states["total"] / 1e9 == pytest.approx(paper_gb, abs=0.05)
    assert states["total"] == states["params"] + states["grads"] + states["optim"]


@pytest.mark.parametrize("ranks", [1, 2, 8, 64])
def test_zero_closed_forms_per_stage_and_precision(ranks):
    psi, n = 1_000_003, ranks  # odd Ψ: no accidental divisibility
    bf16 = [bt.zero_model_states(psi, n, s, "bf16")["total"] for s in range(4)]
    fp32 = [bt.zero_model_states(psi, n, s, "fp32")["total"] for s in range(4)]
    assert bf16 == pytest.approx([16 * psi, 2 * psi + 2 * psi + 12 * psi / n, 2 * psi + 14 * psi / n, 16 * psi / n])
    assert fp32 == pytest.approx([16 * psi, 4 * psi + 4 * psi + 8 * psi / n, 4 * psi + 12 * psi / n, 16 * psi / n])


def deepspeed_printed_gb(fn, *args, **kwargs) -> float:
    """The per-GPU GB of the no-offload row of a DeepSpeed ``*_all_cold`` table (it prints, returns None)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        fn(*args, **kwargs)
    row = next(line for line in out.getvalue().splitlines() if "offload_optimizer=none" in line)
    return float(re.findall(r"([\d.]+)GB", row)[1])


@pytest.mark.parametrize("ranks", [1, 8])
def test_our_deepspeed_numbers_are_what_its_all_cold_estimators_print(ranks):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs_all_cold
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs_all_cold

    psi, largest = bt.count_params(bt.meta_codi("image"))
    z2 = deepspeed_printed_gb(estimate_zero2_model_states_mem_needs_all_cold, psi, num_gpus_per_node=ranks)
    z3 = deepspeed_printed_gb(estimate_zero3_model_states_mem_needs_all_cold, psi, largest, num_gpus_per_node=ranks)
    assert bt.deepspeed_estimate(psi, largest, ranks, 2) / 2**30 == pytest.approx(z2, abs=0.006)
    assert bt.deepspeed_estimate(psi, largest, ranks, 1) == bt.deepspeed_estimate(psi, largest, ranks, 2)
    assert bt.deepspeed_estimate(psi, largest, ranks, 3) / 2**30 == pytest.approx(z3, abs=0.006)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_gap_to_deepspeeds_estimator_is_the_stated_closed_form(stage):
    psi, largest, n = 123_456_789, 4_567_890, 8
    ours = bt.zero_model_states(psi, n, stage, "bf16")["total"]
    ds = bt.deepspeed_estimate(psi, largest, n, stage)
    expected = {1: 2 * psi - 6 * psi / n, 2: -4 * psi / n, 3: -2 * psi / n - 4 * largest}[stage]
    assert ours - ds == pytest.approx(expected, abs=1.0)  # DeepSpeed truncates to whole bytes


def test_meta_parameter_count_of_the_sd_sized_unet_equals_diffusers():
    from diffusers import UNet2DConditionModel

    psi, _ = bt.count_params(bt.meta_codi("sd"))
    with torch.device("meta"):
        reference = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
    assert psi == sum(p.numel() for p in reference.parameters()) == 859_520_964  # SD 1.x's UNet


def test_count_params_skips_frozen_and_counts_shared_once_on_meta():
    with torch.device("meta"):
        model = torch.nn.Sequential(torch.nn.Linear(10, 20), torch.nn.Linear(20, 30), torch.nn.Linear(30, 40))
    model.append(model[0])  # shared module: its parameters appear once
    model[1].requires_grad_(False)
    psi, largest = bt.count_params(model)
    assert psi == (10 * 20 + 20) + (30 * 40 + 40)
    assert largest == 30 * 40 + 40
    # DeepSpeed's own counter keys by data_ptr(), which is 0 for every meta tensor
    from deepspeed.runtime.zero.stage3 import model_to_params

    assert model_to_params(model)[0] < psi


def test_memory_rows_report_every_stage_against_deepspeed():
    rows, detail = bt.memory_rows("image", 8)
    assert len(rows) == 6 and len(detail) == 3 + 6
    bf16 = [r for r in rows if "bf16" in r.measurement]
    assert [r.goal.endswith("(ok)") for r in bf16] == [True, True, True]
    psi, _ = bt.count_params(bt.meta_codi("image"))
    assert psi > 1.5e9  # the full-size video-capable image UNet with V and connectors, not a tiny one
    assert float(bf16[2].ours) == pytest.approx(16 * psi / 8 / 1e9, abs=0.006)


def test_gpu_row_reports_no_gpu_without_one_and_runs_its_code_tiny_on_cpu(monkeypatch):
    args = argparse.Namespace(gpu_row_on_cpu=False, gpu_batch=64, gpu_steps=10)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (row,) = bt.gpu_rows(args)
    assert row.ours == "not measured: no GPU"
    (row,) = bt.gpu_rows(argparse.Namespace(gpu_row_on_cpu=True, gpu_batch=64, gpu_steps=10))
    assert "SMOKE" in row.measurement and float(row.ours) > 0


def test_train_step_updates_weights_and_counts_about_three_forward_passes_of_flops():
    from torch.utils.flop_counter import FlopCounterMode

    from models.codi import CoDi, CoDiConfig

    torch.manual_seed(0)
    model = CoDi(CoDiConfig(image=bt.tiny_image_spec()))
    with torch.no_grad():  # no zero-init branches: every parameter then gets a gradient
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.05)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    spec = bt.tiny_image_spec()
    batch = (torch.randn(2, 4, 8, 8), torch.tensor([10, 500]), torch.randn(2, 4, spec.context_dim), torch.randn(2, 4, 8, 8))
    with torch.no_grad(), FlopCounterMode(display=False) as forward:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model({"image": batch[0]}, batch[1], batch[2])
    before = [p.detach().clone() for p in model.parameters()]
    step = bt.step_flops(model, optimizer, batch, "cpu")
    # backward costs ~2 forwards (grad of inputs + of weights); the first conv needs no input grad
    assert 2.5 * forward.get_total_flops() < step <= 3 * forward.get_total_flops()
    changed = sum(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert changed == len(before)


def test_bare_loop_trains_the_recipe_model_and_times_windows():
    from training.recipes import text_to_image_demo_debug

    cfg = text_to_image_demo_debug()
    batch = debug_batch(cfg)
    torch.manual_seed(cfg.seed)
    from models.text_to_image import TextToImageDiffuser

    init = TextToImageDiffuser(cfg.model).unet.state_dict()
    out = bt.local_loop(cfg, batch, steps=4, log_every=2, threads=1)
    assert len(out["windows"]) == 2 and all(w > 0 for w in out["windows"]) and out["startup_s"] > 0
    assert any(not torch.equal(init[k], v) for k, v in out["model"].unet.state_dict().items())
    assert bt.steady([9.0, 1.0, 3.0, 2.0]) == 2.0


def test_run_train_refuses_bad_arguments_in_one_line():
    from common.errors import UsageError

    with pytest.raises(UsageError, match="multiple of --log-every"):
        bt.run_train(argparse.Namespace(recipe="text_to_image_demo", steps=15, log_every=10))
    with pytest.raises(UsageError, match="'nope': no such recipe"):
        bt.run_train(argparse.Namespace(recipe="nope", steps=40, log_every=10))


def debug_batch(cfg):
    import numpy as np

    rng = np.random.default_rng(0)
    size = cfg.model.image_size
    return {"image": rng.integers(0, 256, (cfg.batch_size_per_worker, size, size, 3), dtype=np.uint8),
            "caption": np.array(["a red circle", "a blue square"] * (cfg.batch_size_per_worker // 2))}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bare_baseline_does_the_same_math_as_the_stages_deepspeed_engine():
    from training.recipes import text_to_image_demo_debug

    cfg = text_to_image_demo_debug()
    # a clip norm this small makes clipping change the update (Adam is nearly scale-invariant, so at
    # the recipe's 1.0 it never bites on 3 steps): unclipped, the weights differ by ~1e-4 here
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, grad_clip=1e-5))
    batch = debug_batch(cfg)
    bare = bt.local_loop(cfg, batch, steps=3, log_every=1, threads=1)["model"].unet.state_dict()
    engine = bt.local_loop(cfg, batch, steps=3, log_every=1, threads=1, engine=True)["model"].unet.state_dict()
    torch.manual_seed(cfg.seed)
    from models.text_to_image import TextToImageDiffuser

    init = TextToImageDiffuser(cfg.model).unet.state_dict()
    moved = max((bare[k] - init[k]).abs().max().item() for k in init)
    assert moved > 1e-4  # three AdamW steps at the warmup LR moved the weights
    for name in init:  # ZeRO-2 fp32, one rank: flattened partitions, same AdamW, same clipping
        torch.testing.assert_close(engine[name], bare[name], rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_bench_train_prints_every_row_with_ray(ray_local, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    bt.register_train(parser.add_subparsers())
    args = parser.parse_args(["train", "--recipe", "text_to_image_demo_debug", "--steps", "4", "--log-every", "2",
                              "--reps", "1", "--samples", "48", "--workdir", str(tmp_path), "--gpu-row-on-cpu"])
    assert args.func(args) == 0
    table = capsys.readouterr().out
    ratios = re.findall(r"\| ([\d.]+)x \| <= 1.10x", table)
    scaling = re.findall(r"\| ([\d.]+)x \| >= 1.6x", table)
    assert len(ratios) == 1 and float(ratios[0]) > 0.5, table  # measured, finite; the goal is judged by the lead
    assert len(scaling) == 1 and float(scaling[0]) > 0, table
    assert table.count("DeepSpeed estimator") == 3 and "SMOKE" in table and "of which DeepSpeed" in table
