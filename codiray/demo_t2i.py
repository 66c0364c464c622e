"""`codiray demo --text-to-image`: the first slice (pixel text-to-image) on one machine, real at every layer.

    toy world (LAION-style parquet + JPEGs)  ->  codiray prepare laion  (Ray Data -> WebDataset shards)
      ->  codiray train  (Ray Train, 2 workers, DeepSpeed ZeRO-2)  ->  codiray generate  (PNGs)

Ray starts in-process; a local folder stands in for the bucket. Running it again with the same
``--out`` reuses the corpus and shards and resumes training from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from common.config import load_config, save_config
from common.errors import JobFailed
from common.runtime import ensure_ray
from pipelines.config import ImageConfig, PrepareConfig, ShardConfig
from training.config import TrainConfig
from training.recipes import text_to_image_demo, text_to_image_demo_debug

DEFAULT_PROMPTS = ["a red circle on the left", "a blue square on the right", "a green triangle in the center",
                   "a yellow circle on the top", "a red square on the bottom", "a blue triangle on the left",
                   "a green circle on the right", "a yellow square in the center"]


@dataclass
class DemoConfig:
    num_samples: int = 1024
    source_size: int = 48
    seed: int = 0
    prepare: PrepareConfig = field(default_factory=lambda: PrepareConfig(
        image=ImageConfig(size=32, min_size=16), shards=ShardConfig(samples_per_shard=256)))
    train: TrainConfig = field(default_factory=text_to_image_demo)
    prompts: list[str] = field(default_factory=lambda: list(DEFAULT_PROMPTS))
    samples_per_prompt: int = 2
    sample_steps: int = 50
    guidance_scale: float = 3.0


def debug_config() -> DemoConfig:
    """A tiny, fast demo (tests and smoke runs)."""
    train = text_to_image_demo_debug()
    return DemoConfig(num_samples=48, source_size=24, train=train,
                      prepare=PrepareConfig(image=ImageConfig(size=train.model.image_size, min_size=8),
                                            shards=ShardConfig(samples_per_shard=16)),
                      prompts=DEFAULT_PROMPTS[:2], samples_per_prompt=1, sample_steps=4)


def plot_history(history: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([m["step"] for m in history], [m["loss"] for m in history], marker=".")
    ax.set(xlabel="step", ylabel="training loss (diffusion MSE)", title="codiray demo: text-to-image diffuser")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_demo(cfg: DemoConfig, out: Path) -> dict:
    """Run every stage into ``out`` and return where each result went."""
    from pipelines.laion import prepare_laion
    from pipelines.toyworld import write_laion_corpus
    from training.generate import find_checkpoint, generate_images, save_grid, write_samples
    from training.launch import link_ray_logs, run_dir, train
    from training.loop import HISTORY_NAME
    from models.text_to_image import TextToImageDiffuser

    out = out.resolve()
    bucket = out / "bucket"
    timings = {}
    save_config(cfg, out / "demo_config.yaml")

    started = time.perf_counter()
    corpus = bucket / "raw"
    if not (corpus / "metadata.parquet").is_file():
        write_laion_corpus(corpus, num_samples=cfg.num_samples, image_size=cfg.source_size, seed=cfg.seed)
    print(f"[1/4] toy-world corpus: {corpus} ({cfg.num_samples} captioned JPEGs + metadata.parquet)", flush=True)

    # Workers' output and Ray's INFO chatter go to Ray's log folder (linked below); warnings stay here.
    ensure_ray(log_to_driver=False, logging_level=logging.WARNING)
    ray_logs = link_ray_logs(out)
    shards = bucket / "shards"
    manifest = prepare_laion(str(corpus / "metadata.parquet"), str(corpus / "images"), str(shards), cfg.prepare)
    timings["prepare_s"] = time.perf_counter() - started
    print(f"[2/4] shards: {shards} ({manifest['written']} written, {manifest['dropped']} dropped -> "
          f"{shards / 'dropped.parquet'})", flush=True)

    started = time.perf_counter()
    train_cfg = dataclasses.replace(cfg.train, storage_path=str(bucket / "runs"),
                                    data=dataclasses.replace(cfg.train.data, path=str(shards)))
    result = train(train_cfg)
    if result.error:
        raise JobFailed(f"training failed: {result.error}" + (f" (Ray's logs: {ray_logs})" if ray_logs else ""))
    timings["train_s"] = time.perf_counter() - started
    checkpoint = find_checkpoint(Path(run_dir(train_cfg)))
    history = json.loads((checkpoint / HISTORY_NAME).read_text())
    plot = plot_history(history, out / "loss.png")
    print(f"[3/4] checkpoint: {checkpoint} (step {history[-1]['step']}, loss {history[0]['loss']:.3f} -> "
          f"{history[-1]['loss']:.3f}; curve: {plot})", flush=True)

    started = time.perf_counter()
    model = TextToImageDiffuser.from_pretrained(checkpoint)
    prompts = [p for p in cfg.prompts for _ in range(cfg.samples_per_prompt)]
    images = generate_images(model, prompts, steps=cfg.sample_steps, guidance_scale=cfg.guidance_scale, seed=cfg.seed)
    samples = out / "samples"
    write_samples(images, prompts, samples)
    grid = save_grid(images, samples / "grid.png", columns=max(1, cfg.samples_per_prompt) * 4)
    timings["generate_s"] = time.perf_counter() - started
    print(f"[4/4] samples: {samples} ({len(prompts)} PNGs; grid: {grid})", flush=True)
    return {"corpus": str(corpus), "shards": str(shards), "checkpoint": str(checkpoint), "loss_plot": str(plot),
            "samples": str(samples), "grid": str(grid), "manifest": manifest, "timings": timings,
            "ray_logs": str(ray_logs) if ray_logs else None}


def keep_ray_logs(out: Path) -> None:
    """Stop Ray and turn ``<out>/ray_logs`` (a link into Ray's session folder under /tmp) into a copy
    that outlives /tmp's cleaning."""
    import shutil

    import ray

    link = out.resolve() / "ray_logs"
    if not link.is_symlink():
        return
    ray.shutdown()
    target = link.resolve()
    link.unlink()
    shutil.copytree(target, link, symlinks=True, ignore_dangling_symlinks=True)


def run(args) -> int:
    base = debug_config() if args.debug else DemoConfig()
    cfg = load_config(DemoConfig, args.config, args.overrides, base=base)
    started = time.perf_counter()
    try:
        paths = run_demo(cfg, Path(args.out))
    finally:
        keep_ray_logs(Path(args.out))
    print(f"demo done in {time.perf_counter() - started:.0f} s — look at {paths['grid']} and {paths['loss_plot']}"
          + (f"; Ray's logs: {paths['ray_logs']}" if paths["ray_logs"] else ""))
    return 0
