"""`codiray bench train`: the training engine against its baselines, side by side, one table.

    codiray bench train [--recipe text_to_image_demo] [--steps 40] [--log-every 10] [--reps 3]
                        [--ranks 8] [--memory-model image] [--gpu-batch 64] [--gpu-row-on-cpu]

Rows, all from one run:
- step time of Ray Train + DeepSpeed (``training.launch.train``, 1 worker) vs a bare PyTorch loop
  over the same model, optimizer, loss and batch size (no Ray, no DeepSpeed), and the stage's
  DeepSpeed engine alone in-process (no Ray) to split the overhead; steady state (the first
  ``--log-every`` window holds start-up and is left out; start-up is reported on its own row);
  the candidates run interleaved, ``--reps`` times, best and spread kept;
- samples/s of the same stage on 2 Ray workers vs 1 (CPU);
- model-state memory per rank under ZeRO 1/2/3 for the full-size CoDi image/video UNet, counted on
  the meta device, from the ZeRO paper's closed form, against DeepSpeed's own estimator;
- on a GPU: the full-size image UNet at 256 px (32x32 latents), bf16 autocast, img/s and MFU
  (FLOPs of one step counted by ``torch.utils.flop_counter.FlopCounterMode``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

GB = 1e9  # the ZeRO paper's unit (Rajbhandari et al. 2020, Fig. 1): 7.5B params, N=64 -> 1.88 GB


@dataclass(frozen=True)
class Row:
    measurement: str
    ours: str
    baseline: str
    baseline_is: str
    ratio: str
    goal: str


# ---------------------------------------------------------------- model-state memory (deterministic)

# Bytes per parameter of (parameters, gradients, Adam optimizer state). ZeRO paper §3.1: mixed
# precision keeps 2Ψ bf16/fp16 params, 2Ψ grads and K=12 bytes/param of fp32 master weights,
# momentum and variance; pure fp32 keeps 4Ψ params, 4Ψ grads and K=8 (momentum and variance).
STATE_BYTES = {"fp32": (4, 4, 8), "bf16": (2, 2, 12)}


def zero_model_states(psi: int, ranks: int, stage: int, precision: str) -> dict[str, float]:
    """Bytes per rank of params, grads and optimizer state (ZeRO paper §5.1, Fig. 1).

    Stage 0 = plain data parallel (everything replicated); P_os (stage 1) shards the optimizer state,
    P_os+g (stage 2) the gradients too, P_os+g+p (stage 3) the parameters too:
    mixed precision: (2+2+12)Ψ, 2Ψ+2Ψ+12Ψ/N, 2Ψ+14Ψ/N, 16Ψ/N.
    """
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"ZeRO stage must be 0..3, got {stage}")
    p, g, k = STATE_BYTES[precision]
    shard = lambda sharded, nbytes: nbytes * psi / ranks if sharded else nbytes * psi  # noqa: E731
    states = {"params": shard(stage >= 3, p), "grads": shard(stage >= 2, g), "optim": shard(stage >= 1, k)}
    return {**states, "total": sum(states.values())}


def count_params(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable parameters Ψ, largest single module's own parameters), shared ones counted once.

    By identity, not ``data_ptr()`` as DeepSpeed's ``model_to_params`` does: on the meta device every
    tensor's data_ptr is 0, which would collapse the whole model into one parameter.
    """
    unique = {id(p): p for p in model.parameters() if p.requires_grad}
    largest = max((sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()), default=0)
    return sum(p.numel() for p in unique.values()), largest


def meta_codi(which: str) -> torch.nn.Module:
    """A full-size CoDi model without memory: ``image`` = the video-capable image UNet (with V and
    connectors, as trained), ``released`` = all three UNets, ``sd`` = the Stable Diffusion 1.x size."""
    from models.codi import CoDi, CoDiConfig
    from models.codi.config import image_unet

    configs = {"image": lambda: CoDiConfig(image=image_unet()), "released": CoDiConfig.released,
               "sd": CoDiConfig.stable_diffusion}
    if which not in configs:
        raise ValueError(f"unknown model {which!r} (expected one of {', '.join(configs)})")
    with torch.device("meta"):
        return CoDi(configs[which]())


def deepspeed_estimate(psi: int, largest_layer: int, ranks: int, stage: int) -> int:
    """DeepSpeed's per-GPU model-state estimate without offload (the numbers its ``*_all_cold``
    functions print on their ``offload_optimizer=none`` row). DeepSpeed has one estimator for stages
    1 and 2 (``stage_1_and_2``): 2Ψ + 18Ψ/N; stage 3: 4·largest_layer + 18Ψ/N. It assumes 16-bit
    training with an fp32 gradient partition (the 18 = 2+4+4+8 of its source comment)."""
    if stage in (1, 2):
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

        return estimate_zero2_model_states_mem_needs(psi, num_gpus_per_node=ranks, cpu_offload=False)[1]
    if stage == 3:
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

        return estimate_zero3_model_states_mem_needs(psi, largest_layer, num_gpus_per_node=ranks,
                                                     cpu_offload=False, zero_init=True)[1]
    raise ValueError(f"DeepSpeed estimates ZeRO stages 1-3, not {stage}")


# ZeRO paper (mixed precision) minus DeepSpeed's estimate, per stage: DeepSpeed also counts a 4Ψ/N
# fp32 gradient partition, models stage 1 with its ZeRO-2 estimator (gradients sharded; stage 1 keeps
# 2Ψ of them whole), and adds 4 bytes x the largest layer (gathered whole) under stage 3.
ESTIMATOR_GAP = {1: "2Ψ − 6Ψ/N", 2: "−4Ψ/N", 3: "−2Ψ/N − 4·largest layer"}


def estimator_gap(psi: int, largest_layer: int, ranks: int, stage: int) -> float:
    return {1: 2 * psi - 6 * psi / ranks, 2: -4 * psi / ranks, 3: -2 * psi / ranks - 4 * largest_layer}[stage]


def memory_rows(which: str, ranks: int) -> tuple[list[Row], list[str]]:
    """Table rows (bf16 vs DeepSpeed's estimator, fp32 vs plain data parallel) + a breakdown table."""
    psi, largest = count_params(meta_codi(which))
    rows, detail = [], [f"Model states per rank, CoDi {which} UNet(s): Ψ = {psi:,} trainable parameters "
                        f"(largest module {largest:,}), N = {ranks} ranks, GB = 1e9 bytes",
                        "| ZeRO | precision | params | grads | Adam state | total |", "|---|---|---:|---:|---:|---:|"]
    for stage in (1, 2, 3):
        for precision in ("bf16", "fp32"):
            s = zero_model_states(psi, ranks, stage, precision)
            detail.append(f"| {stage} | {precision} | {s['params'] / GB:.2f} | {s['grads'] / GB:.2f} | "
                          f"{s['optim'] / GB:.2f} | {s['total'] / GB:.2f} |")
            label = f"model states GB/rank, {which} UNet, ZeRO-{stage}, {precision}, N={ranks}"
            if precision == "bf16":
                ds = deepspeed_estimate(psi, largest, ranks, stage)
                formula, expected = ESTIMATOR_GAP[stage], estimator_gap(psi, largest, ranks, stage)
                mark = "ok" if abs((s["total"] - ds) - expected) <= 2 else "MISMATCH"
                rows.append(Row(label, f"{s['total'] / GB:.2f}", f"{ds / GB:.2f}", "DeepSpeed estimator (no offload)",
                                f"{s['total'] / ds:.2f}x", f"ours − DeepSpeed = {formula} ({mark})"))
            else:
                ddp = zero_model_states(psi, ranks, 0, precision)["total"]
                rows.append(Row(label, f"{s['total'] / GB:.2f}", f"{ddp / GB:.2f}", "plain data parallel, fp32",
                                f"{s['total'] / ddp:.2f}x", "= ZeRO paper closed form (DeepSpeed has no fp32 estimator)"))
    return rows, detail


# ---------------------------------------------------------------- GPU row: img/s and MFU

# Dense bf16 tensor-core peaks (vendor datasheets, no sparsity), matched on torch's device name.
PEAK_BF16 = (("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("GH200", 989e12), ("B200", 2250e12),
             ("A100", 312e12), ("L40S", 362e12), ("A10G", 70e12))


def peak_flops(device_name: str) -> float | None:
    return next((peak for key, peak in PEAK_BF16 if key in device_name), None)


def tiny_image_spec():
    """A tiny image UNet for the ``--gpu-row-on-cpu`` smoke (checks the code path, measures nothing)."""
    from models.codi import UNetSpec

    return UNetSpec(model_channels=32, channel_mult=[1, 2], num_res_blocks=[1, 1], attention_levels=[True, False],
                    num_heads=4, context_dim=32, video=False, connectors=False)


def unet_train_step(model, optimizer, z, t, context, eps, device_type: str) -> torch.Tensor:
    """One ε-prediction step (CoDi Eq. 1) in bf16 autocast over fp32 weights, then AdamW."""
    with torch.autocast(device_type=device_type, dtype=torch.bfloat16):
        out = model({"image": z}, t, context)["image"]
    loss = torch.nn.functional.mse_loss(out.float(), eps)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def step_flops(model, optimizer, batch, device_type: str) -> int:
    """FLOPs of one training step (forward + backward), counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        unet_train_step(model, optimizer, *batch, device_type)
    return counter.get_total_flops()


def gpu_bench(tiny: bool, batch_size: int, steps: int, device: str, compile_model: bool = False) -> dict:
    """img/s and MFU of the image UNet on ``device`` (full size at 32x32 latents unless ``tiny``).

    With ``compile_model`` the timed steps run ``torch.compile(model)``; its FLOPs are counted on the
    eager model (the same math), and the compilation is part of ``startup_s``.
    """
    from models.codi import CoDi, CoDiConfig
    from models.codi.config import image_unet

    spec = tiny_image_spec() if tiny else image_unet()
    size, tokens = (8, 4) if tiny else (32, 77)  # 256 px / the VAE's 8x downsampling; CLIP's 77 tokens
    torch.manual_seed(0)
    model = CoDi(CoDiConfig(image=spec)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.startswith("cuda"))
    gen = torch.Generator(device=device).manual_seed(0)
    batch = (torch.randn(batch_size, spec.in_channels, size, size, device=device, generator=gen),
             torch.randint(0, 1000, (batch_size,), device=device, generator=gen),
             torch.randn(batch_size, tokens, spec.context_dim, device=device, generator=gen),
             torch.randn(batch_size, spec.out_channels, size, size, device=device, generator=gen))
    device_type = device.split(":")[0]
    sync = torch.cuda.synchronize if device_type == "cuda" else (lambda: None)
    started = time.perf_counter()
    flops = step_flops(model, optimizer, batch, device_type)  # also the first (warm-up) step
    step_model = torch.compile(model) if compile_model else model
    for _ in range(0 if tiny and not compile_model else 2):  # compiled: the first call compiles
        unet_train_step(step_model, optimizer, *batch, device_type)
    sync()
    startup = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(steps):
        loss = unet_train_step(step_model, optimizer, *batch, device_type)
    sync()
    elapsed = time.perf_counter() - started
    name = torch.cuda.get_device_name() if device_type == "cuda" else "CPU"
    peak = peak_flops(name) if device_type == "cuda" else None
    achieved = flops * steps / elapsed
    memory = torch.cuda.max_memory_allocated() / GB if device_type == "cuda" else None
    return {"device": name, "img_s": batch_size * steps / elapsed, "flops_per_step": flops, "tflops": achieved / 1e12,
            "mfu": achieved / peak if peak else None, "startup_s": startup, "loss": float(loss), "memory_gb": memory}


def gpu_rows(args) -> list[Row]:
    goal = ">= 300 img/s on an H200"
    if torch.cuda.is_available():
        rows, eager = [], None
        for compiled in (False,) if args.skip_gpu_compile else (False, True):
            torch.cuda.reset_peak_memory_stats()
            r = gpu_bench(tiny=False, batch_size=args.gpu_batch, steps=args.gpu_steps, device="cuda",
                          compile_model=compiled)
            mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else f"n/a (no peak known for {r['device']})"
            how = (f"torch.compile (compiling and 2 warm-up steps: {r['startup_s']:.0f} s)" if compiled
                   else f"eager (start-up {r['startup_s']:.0f} s)")
            if compiled:
                rows.append(Row(f"image UNet, same batch, {how}, img/s", f"{r['img_s']:.0f}", f"{eager['img_s']:.0f}",
                                "eager, row above", f"{r['img_s'] / eager['img_s']:.2f}x", "report"))
            else:
                eager = r
                rows.append(Row(f"image UNet 256 px (32x32 latents), bf16 autocast + fused AdamW, batch "
                                f"{args.gpu_batch}, {how}, img/s on {r['device']}",
                                f"{r['img_s']:.0f}", "300", "issue 12's goal", f"{r['img_s'] / 300:.2f}x", goal))
            rows.append(Row(f"  MFU ({r['tflops']:.0f} TFLOP/s, {r['flops_per_step'] / 1e12:.1f} TFLOP/step counted; "
                            f"peak memory {r['memory_gb']:.1f} GB)", mfu, "-", "dense bf16 peak of the device", "-",
                            "report"))
        return rows
    if args.gpu_row_on_cpu:
        r = gpu_bench(tiny=True, batch_size=2, steps=1, device="cpu")
        return [Row("image UNet img/s (SMOKE: tiny config on CPU, 1 step; not a measurement)", f"{r['img_s']:.1f}",
                    "-", f"{r['flops_per_step'] / 1e6:.1f} MFLOP/step counted", "-", goal)]
    return [Row("image UNet 256 px, bf16, img/s and MFU", "not measured: no GPU", "300", "issue 12's goal", "-", goal)]


# ---------------------------------------------------------------- Ray Train + DeepSpeed vs a bare loop

def prepare_shards(root: Path, cfg, samples: int) -> str:
    """Toy-world JPEGs through `codiray prepare laion` (Ray Data) at the recipe's image size."""
    from pipelines.config import ImageConfig, PrepareConfig, ShardConfig
    from pipelines.laion import prepare_laion
    from pipelines.toyworld import write_laion_corpus

    size = cfg.model.image_size
    corpus, shards = root / "raw", root / "shards"
    if not (shards / "manifest.json").is_file():
        write_laion_corpus(corpus, num_samples=samples, image_size=size + size // 2, seed=0)
        prepare_laion(str(corpus / "metadata.parquet"), str(corpus / "images"), str(shards),
                      PrepareConfig(image=ImageConfig(size=size, min_size=8), shards=ShardConfig(samples_per_shard=128)))
    return str(shards)


def steady(window_step_s: list[float]) -> float:
    """Steady-state seconds per step: the median window after the first (start-up, JIT, warm caches)."""
    if len(window_step_s) < 2:
        raise ValueError("need at least 2 logging windows (steps >= 2 * log_every) to leave start-up out")
    return statistics.median(window_step_s[1:])


def deepspeed_single_process(model, optimizer, scheduler, cfg):
    """The stage's DeepSpeed engine (``training.loop.deepspeed_config``) in this process, world size 1.

    The launcher variables DeepSpeed reads are set only while it starts, then restored."""
    import socket

    import deepspeed
    import torch.distributed as dist

    from training.engine import prepare_deepspeed
    from training.loop import deepspeed_config

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        prepare_deepspeed()
        if not dist.is_initialized():
            deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                               config=deepspeed_config(cfg))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k)
            else:
                os.environ[k] = v
    return engine


def local_loop(cfg, batch: dict, steps: int, log_every: int, threads: int, engine: bool = False) -> dict:
    """The stage's math with no Ray: same model, AdamW, warmup LR, clipping and loss as
    ``training/loop.py``, on one in-memory batch; with ``engine`` through the stage's DeepSpeed engine,
    else a bare PyTorch loop. Returns per-window s/step, start-up s and the trained model."""
    from models.diffusion.config import build_schedule
    from models.text_to_image import TextToImageDiffuser
    from training.loop import build_optimizer
    from training.step import text_to_image_loss

    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads)  # a Ray worker with N CPUs runs torch on N threads (OMP_NUM_THREADS)
    try:
        started = time.perf_counter()
        torch.manual_seed(cfg.seed)
        model = TextToImageDiffuser(cfg.model)
        optimizer, scheduler = build_optimizer(model, cfg)
        if engine:
            ds = deepspeed_single_process(model, optimizer, scheduler, cfg)
            model, backward, update = ds.module, ds.backward, ds.step
        else:
            backward = torch.Tensor.backward

            def update():
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
        schedule = build_schedule(cfg.model.diffusion)
        generator = torch.Generator().manual_seed(cfg.seed * 1000)
        images, captions = batch["image"], list(batch["caption"])
        startup, windows, window_start = time.perf_counter() - started, [], time.perf_counter()
        for step in range(1, steps + 1):
            loss = text_to_image_loss(model, images, captions, generator, schedule)
            backward(loss)
            update()
            loss.item()  # the Ray loop syncs on the loss every step too
            if step % log_every == 0:
                windows.append((time.perf_counter() - window_start) / log_every)
                window_start = time.perf_counter()
        return {"windows": windows, "startup_s": startup + windows[0] * log_every, "model": model}
    finally:
        torch.set_num_threads(saved_threads)


def ray_run(cfg) -> dict:
    """One ``training.launch.train`` run; per-window s/step from the metrics it logged."""
    from training.generate import find_checkpoint
    from training.launch import run_dir, train
    from training.loop import HISTORY_NAME

    shutil.rmtree(run_dir(cfg), ignore_errors=True)  # a kept --workdir would otherwise resume, not train
    started = time.perf_counter()
    result = train(cfg)
    wall = time.perf_counter() - started
    if result.error:
        raise RuntimeError(f"bench run {cfg.name} failed: {result.error}")
    history = json.loads((find_checkpoint(Path(run_dir(cfg))) / HISTORY_NAME).read_text())
    per_step = [cfg.batch_size_per_worker * cfg.scaling.num_workers / m["samples_per_s"] for m in history]
    return {"windows": per_step, "startup_s": wall - sum(per_step[1:]) * cfg.log_every}


def spread(values: list[float]) -> float:
    return (max(values) - min(values)) / min(values)


def ray_rows(args, root: Path) -> list[Row]:
    """Interleaved reps of: bare loop, Ray Train + DeepSpeed on 1 worker, and on 2 workers."""
    import ray

    from pipelines.reader import read_shards
    from training.recipes import RECIPES

    base = RECIPES[args.recipe]()
    if not ray.is_initialized():
        env = {k: os.environ[k] for k in ("TORCH_EXTENSIONS_DIR",) if k in os.environ}
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    shards = prepare_shards(root, base, args.samples)
    batch = read_shards(shards).take_batch(base.batch_size_per_worker, batch_format="numpy")
    threads = max(1, int(base.scaling.worker.cpus))
    results: dict[str, list[dict]] = {"bare": [], "deepspeed": [], "ray1": [], "ray2": []}
    for rep in range(args.reps):
        results["bare"].append(local_loop(base, batch, args.steps, args.log_every, threads))
        results["deepspeed"].append(local_loop(base, batch, args.steps, args.log_every, threads, engine=True))
        for workers in (1,) if args.skip_scaling else (1, 2):
            cfg = dataclasses.replace(
                base, name=f"bench-{workers}w-{rep}", storage_path=str(root / "runs"), max_steps=args.steps,
                log_every=args.log_every, checkpoint_every=args.steps, num_to_keep=1,
                data=dataclasses.replace(base.data, path=shards),
                scaling=dataclasses.replace(base.scaling, num_workers=workers))
            results[f"ray{workers}"].append(ray_run(cfg))
    step = {k: [steady(r["windows"]) for r in v] for k, v in results.items() if v}
    start = {k: [r["startup_s"] for r in v] for k, v in results.items() if v}
    b = base.batch_size_per_worker
    reps = f"best of {args.reps}, spread {{:.0%}}"
    rows = [Row(f"{args.recipe} s/step, 1 worker, batch {b}, ZeRO-{base.zero_stage} {base.precision} "
                f"(steady state, {reps.format(spread(step['ray1']))})",
                f"{min(step['ray1']):.4f}", f"{min(step['bare']):.4f}",
                f"bare PyTorch loop, same math ({reps.format(spread(step['bare']))})",
                f"{min(step['ray1']) / min(step['bare']):.2f}x", "<= 1.10x"),
            Row(f"  of which DeepSpeed: its engine in-process, no Ray ({reps.format(spread(step['deepspeed']))})",
                f"{min(step['deepspeed']):.4f}", f"{min(step['bare']):.4f}", "bare PyTorch loop, same math",
                f"{min(step['deepspeed']) / min(step['bare']):.2f}x", "report (Ray's share = the rest)"),
            Row("  start-up + teardown s (Ray Train + DeepSpeed, incl. first window and final checkpoint)",
                f"{min(start['ray1']):.1f}", f"{min(start['bare']):.1f}", "bare loop: build + first window",
                f"{min(start['ray1']) / min(start['bare']):.1f}x", "report")]
    if step["ray2"]:
        sps1, sps2 = b / min(step["ray1"]), 2 * b / min(step["ray2"])
        rows.append(Row(f"{args.recipe} samples/s, Ray workers: 2 vs 1 (CPU, {os.cpu_count()} cores; "
                        f"{reps.format(spread(step['ray2']))})", f"{sps2:.1f}", f"{sps1:.1f}",
                        "same stage on 1 worker", f"{sps2 / sps1:.2f}x", ">= 1.6x where data is not the bottleneck"))
    return rows


# ---------------------------------------------------------------- CLI

def register_train(subparsers) -> None:
    """Add ``train`` to the ``bench`` sub-commands (``subparsers`` = bench's ``add_subparsers``)."""
    p = subparsers.add_parser("train", help="Ray Train + DeepSpeed vs a bare loop, 2 vs 1 workers, ZeRO memory, GPU img/s",
                              description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--recipe", default="text_to_image_demo", help="the stage to time (a name in training/recipes.py)")
    p.add_argument("--steps", type=int, default=40, help="steps per run (the first --log-every are start-up)")
    p.add_argument("--log-every", type=int, default=10, help="steps per timing window")
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions (best is kept)")
    p.add_argument("--samples", type=int, default=512, help="toy-world images to prepare as shards")
    p.add_argument("--workdir", help="where shards and runs go (default: a temp dir, removed after)")
    p.add_argument("--skip-ray", action="store_true", help="skip the Ray Train rows")
    p.add_argument("--skip-scaling", action="store_true", help="skip the 2-workers row")
    p.add_argument("--ranks", type=int, default=8, help="data-parallel ranks N of the memory rows")
    p.add_argument("--memory-model", default="image", choices=("image", "released", "sd"),
                   help="full-size CoDi model of the memory rows")
    p.add_argument("--gpu-batch", type=int, default=64, help="batch of the GPU row")
    p.add_argument("--gpu-steps", type=int, default=10, help="timed steps of the GPU row")
    p.add_argument("--skip-gpu-compile", action="store_true", help="on a GPU: only the eager row (torch.compile "
                   "of the full UNet takes minutes)")
    p.add_argument("--gpu-row-on-cpu", action="store_true", help="without a GPU: run the GPU row's code at tiny size")
    p.set_defaults(func=run_train)


def format_table(rows: list[Row]) -> str:
    lines = ["| measurement | codiray | baseline | baseline is | ratio | goal |", "|---|---:|---:|---|---:|---|"]
    lines += [f"| {r.measurement} | {r.ours} | {r.baseline} | {r.baseline_is} | {r.ratio} | {r.goal} |" for r in rows]
    return "\n".join(lines)


def run_train(args) -> int:
    from common.errors import UsageError
    from training.recipes import RECIPES

    if args.recipe not in RECIPES:
        raise UsageError(f"--recipe {args.recipe!r}: no such recipe (known: {', '.join(sorted(RECIPES))})")
    if args.steps < 2 * args.log_every or args.steps % args.log_every:
        raise UsageError(f"--steps {args.steps} must be a multiple of --log-every {args.log_every}, at least "
                         "2 windows (the first window is start-up)")
    rows, detail = memory_rows(args.memory_model, args.ranks)
    rows += gpu_rows(args)
    if not args.skip_ray:
        root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="codiray-bench-train-"))
        root.mkdir(parents=True, exist_ok=True)
        try:
            rows = ray_rows(args, root) + rows
        finally:
            if not args.workdir:
                shutil.rmtree(root, ignore_errors=True)
    print("\n".join(detail) + "\n")
    print(format_table(rows))
    return 0
