"""`codiray generate --cascade`: text → video through the Imagen-Video cascade a schedule run trained.

    codiray generate --cascade --checkpoint runs/codi --prompt "a red circle moving left" --frames 8 --size 32

``--checkpoint`` is a schedule run folder (its ``schedule.json``): the base is the latest finished
``distillation`` stage with a cascade teacher (the fewest-step student: its ``sampling_steps`` are the
base's steps) or else the ``cascade_base`` stage, followed by ``cascade_tsr`` and ``cascade_ssr`` when the
run has them; or one stage's checkpoint folder (``cascade_config.json`` beside the weights, the stage's
``train_config.yaml`` one level up), sampled alone. ``--frames`` and
``--size`` are the last stage's output: the base samples ``frames / k_TSR`` frames of ``size / s_SSR`` px.
The prompt is embedded by the codecs the base trained on (``training.task.load_codecs``). Sampling is
``training.cascade_sampling.sample_cascade``: DDIM η = 0 in v, each super-resolution stage conditioned
on the previous video at the fixed sampling λ'. Each stage's video is written as an MP4, the settings as
``generation.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from common import storage
from common.config import to_dict
from common.errors import UsageError
from models.diffusion.guidance import imagen_weight_from_scale
from training import generate_media as media
from training.cascade_sampling import cascade_denoiser, sample_cascade
from training.run_model import SCHEDULE_JSON, finished_stages, is_run_folder, run_uri
from training.step import x0_to_images
from training.tasks.cascade import CASCADE_CONFIG, CascadeConfig, cascade_config, load_cascade

ORDER = ("base", "tsr", "ssr")       # Imagen Video's chain: frames first, then pixels


@dataclass
class CascadeStage:
    name: str                        # the schedule stage (or the folder's name)
    folder: str                      # its export: cascade_config.json + weights
    codecs_of: str                   # the checkpoint whose train_config.yaml names the codecs ("" for a bare export)


def pick_cascade(checkpoint: str) -> list[CascadeStage]:
    """The stages to sample, base first: from a run folder's records, or one export folder (local or ``s3://``)."""
    path = run_uri(checkpoint)
    if storage.exists(storage.join(path, CASCADE_CONFIG)):
        beside = storage.exists(storage.join(storage.parent(path), "train_config.yaml"))
        return [CascadeStage(storage.parent(path).rsplit("/", 1)[-1], path, path if beside else "")]
    if not is_run_folder(path):
        raise UsageError(f"--cascade --checkpoint {checkpoint}: neither a schedule run folder ({SCHEDULE_JSON}) "
                         f"nor a cascade export ({CASCADE_CONFIG})")
    records = finished_stages(path)
    by_kind: dict[str, dict] = {}
    for r in records:                # latest finished wins
        if r.get("kind") in ("cascade_base", "cascade_tsr", "cascade_ssr"):
            by_kind[r["kind"].split("_", 1)[1]] = r
    students = [r for r in records if r.get("kind") == "distillation"
                and storage.exists(storage.join(r["checkpoint"], CASCADE_CONFIG))]
    if students:                     # the fewest-step student of the base stands in for it
        by_kind["base"] = min(students, key=lambda r: cascade_config(r["checkpoint"]).sampling_steps)
    if "base" not in by_kind:
        raise UsageError(f"{storage.join(path, SCHEDULE_JSON)}: no finished cascade_base (or base distillation) stage to sample")
    return [CascadeStage(by_kind[k]["name"], by_kind[k]["checkpoint"], by_kind[k]["checkpoint"])
            for k in ORDER if k in by_kind]


def stage_steps(config: CascadeConfig, default: int) -> int:
    """A distilled student samples in the steps it was distilled for; every other stage in ``default``."""
    return config.sampling_steps or default


def base_shape(configs: list[CascadeConfig], batch: int, frames: int, size: int) -> tuple[int, ...]:
    """``(b, 3, f, h, w)`` the base samples so that the chain ends at ``frames`` × ``size`` px."""
    f, s = frames, size
    for c in configs[1:]:
        k = c.objective.factor
        if c.objective.kind == "tsr":
            if f % k:
                raise UsageError(f"--frames {frames}: must be a multiple of the TSR factor {k}")
            f //= k
        else:
            if s % k:
                raise UsageError(f"--size {size}: must be a multiple of the SSR factor {k}")
            s //= k
    return (batch, configs[0].unet.out_channels, f, s, s)


def guidance_weight(args) -> float:
    """Imagen's w for every stage: ``--guidance-weight W``, or ``--guidance-scale S`` as w = S − 1; unguided
    (w = 0) when neither is given. Oscillating guidance (``--guidance-low``) is not offered here."""
    if args.guidance_low is not None or args.guidance_constant_steps is not None:
        raise UsageError("generate --cascade: oscillating guidance (--guidance-low, --guidance-constant-steps) is "
                         "not offered for the cascade; give one --guidance-weight")
    if args.guidance_weight is not None:
        w = args.guidance_weight
    elif args.guidance_scale is not None:
        w = imagen_weight_from_scale(args.guidance_scale)
    else:
        return 0.0
    if w < 0:
        raise UsageError(f"generate --cascade: the guidance weight must be >= 0 (0: unguided; a scale >= 1), got {w:g}")
    return float(w)


def run(args) -> int:
    from training.recipes_codi import stage_config
    from training.task import load_codecs

    if not args.prompt:
        raise UsageError("generate --cascade: give at least one --prompt")
    w = guidance_weight(args)
    stages = pick_cascade(args.checkpoint)
    if not stages[0].codecs_of:
        raise UsageError(f"{stages[0].folder}: no train_config.yaml one level up names the codecs that embed "
                         "the prompt; point --checkpoint at the schedule run folder")
    loaded = [load_cascade(s.folder) for s in stages]
    models, configs = [m.eval() for m, _ in loaded], [c for _, c in loaded]
    if w > 0 and not any(any(c.unet.attention_levels) for c in configs):
        print(f"note: no stage of this cascade reads the prompt (their UNets have no attention level, so no "
              f"cross-attention), and guidance (w = {w:g}) changes nothing")
    prompts = [p for p in args.prompt for _ in range(args.num_per_prompt)]
    shape = base_shape(configs, len(prompts), args.frames, args.size)
    codecs = load_codecs(stage_config(stages[0].codecs_of).task.codecs).eval()
    with torch.no_grad():
        context, null = codecs.condition("text", prompts).float(), codecs.null("text", 1).float()
        chain = [(cascade_denoiser(m, c.objective, context, null, w), c.objective) for m, c in zip(models, configs)]
        steps = [stage_steps(c, args.steps) for c in configs]
        videos = sample_cascade(chain, shape, steps, torch.Generator().manual_seed(args.seed))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for stage, video in zip(stages, videos):
        for i, row in enumerate(video):
            path = media.write_mp4(out / f"{i:03d}-{stage.name}.mp4", x0_to_images(row.transpose(0, 1)), args.fps)
            files.append({"stage": stage.name, "prompt": prompts[i], "video": path.name,
                          "frames": int(row.shape[1]), "size": int(row.shape[-1])})
    record = {"checkpoint": str(args.checkpoint), "prompts": prompts, "seed": args.seed, "fps": args.fps,
              "guidance_weight": w,
              "stages": [{"name": s.name, "export": s.folder, "steps": n, "config": to_dict(c)}
                         for s, c, n in zip(stages, configs, steps)], "samples": files}
    (out / "generation.json").write_text(json.dumps(record, indent=2))
    last = videos[-1]
    print(f"wrote {len(prompts)} cascade samples ({' → '.join(s.name for s in stages)}; last "
          f"{last.shape[2]} frames of {last.shape[-1]} px) to {out}")
    return 0
