"""`codiray generate`: load a trained checkpoint and write PNGs for prompts.

    codiray generate --checkpoint outputs/runs/t2i-demo --prompt "a red circle on the left" --out samples/

``--checkpoint`` is a checkpoint folder (holding model.safetensors) or a run folder, in which case
the checkpoint with the highest step is used. Sampling is DDIM (CoDi: 50 steps, η = 1) with
classifier-free guidance, both from the shared diffusion core.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common.errors import UsageError
from models.diffusion.config import build_schedule, noise_fn, sample_noise
from models.diffusion.guidance import guided_denoiser
from models.diffusion.samplers import ddim_sample
from models.diffusion.schedules import sampling_timesteps
from models.text_to_image import CONFIG_NAME, WEIGHTS_NAME, TextToImageDiffuser
from common import storage
from training.loop import STATE_NAME
from training.step import x0_to_images


def find_checkpoint(path: Path) -> Path:
    """The checkpoint folder itself, or the highest-step ``checkpoint_*`` folder of a run."""
    if (path / WEIGHTS_NAME).is_file():
        return path
    candidates = [p for p in path.glob("checkpoint_*") if (p / WEIGHTS_NAME).is_file() and (p / STATE_NAME).is_file()]
    if not candidates:
        raise UsageError(f"{path}: no checkpoint here (expected {WEIGHTS_NAME} or checkpoint_*/ folders)")
    return max(candidates, key=lambda p: json.loads((p / STATE_NAME).read_text())["step"])


def local_copy(uri: str, tmp: str) -> Path:
    """A local folder holding the checkpoint to sample from.

    For ``s3://`` only the model files of the chosen checkpoint are downloaded (not DeepSpeed's
    optimizer shards); the endpoint comes from ``AWS_ENDPOINT_URL``, credentials from the AWS chain.
    """
    if not storage.is_remote(uri):
        path = Path(uri).expanduser()
        if not path.exists():
            raise UsageError(f"{uri}: checkpoint path does not exist")
        return path
    if storage.exists(storage.join(uri, WEIGHTS_NAME)):
        chosen = uri
    else:
        states = [d for d in storage.list_dirs(uri) if d.rsplit("/", 1)[-1].startswith("checkpoint_")
                  and storage.exists(storage.join(d, STATE_NAME))]
        if not states:
            raise UsageError(f"{uri}: no checkpoint here (expected {WEIGHTS_NAME} or checkpoint_*/ folders)")
        chosen = max(states, key=lambda d: json.loads(storage.read_bytes(storage.join(d, STATE_NAME)))["step"])
    for name in (WEIGHTS_NAME, CONFIG_NAME):
        (Path(tmp) / name).write_bytes(storage.read_bytes(storage.join(chosen, name)))
    return Path(tmp)


@torch.no_grad()
def generate_images(model: TextToImageDiffuser, prompts: list[str], steps: int = 50, eta: float = 1.0,
                    guidance_scale: float = 3.0, seed: int = 0, spacing: str = "trailing") -> np.ndarray:
    """uint8 ``b h w 3`` images for ``prompts`` (guidance in CoDi's scale convention s·c + (1−s)·u)."""
    model.eval()
    cfg = model.cfg
    device = next(model.unet.parameters()).device
    schedule = build_schedule(cfg.diffusion)
    generator = torch.Generator(device=device).manual_seed(seed)
    shape = (len(prompts), cfg.unet.in_channels, cfg.image_size, cfg.image_size)
    x_T = sample_noise(cfg.diffusion, shape, generator=generator, device=device)
    denoiser = guided_denoiser(model, model.encode_text(prompts), model.encode_text([""]),
                               weight=guidance_scale, convention="scale")
    x0 = ddim_sample(denoiser, x_T, schedule, sampling_timesteps(schedule, steps, spacing), eta=eta,
                     prediction=cfg.diffusion.prediction, generator=generator, clip_x0="static",
                     noise_fn=noise_fn(cfg.diffusion))
    return x0_to_images(x0)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "empty"


def save_grid(images: np.ndarray, path: Path, columns: int = 8) -> Path:
    """All samples tiled in one PNG (what a person looks at first)."""
    n, h, w, c = images.shape
    rows = -(-n // columns)
    grid = np.full((rows * h, min(n, columns) * w, c), 255, dtype=np.uint8)
    for i, image in enumerate(images):
        r, col = divmod(i, columns)
        grid[r * h:(r + 1) * h, col * w:(col + 1) * w] = image
    Image.fromarray(grid).save(path)
    return path


def write_samples(images: np.ndarray, prompts: list[str], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (image, prompt) in enumerate(zip(images, prompts)):
        path = out / f"{i:03d}-{slug(prompt)}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate", help="load a checkpoint and write PNGs for prompts",
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="checkpoint or run folder (local or s3://)")
    parser.add_argument("--prompt", action="append", required=True, help="text prompt (repeatable)")
    parser.add_argument("--out", default="samples", help="folder for the PNGs")
    parser.add_argument("--num-per-prompt", type=int, default=1)
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps (CoDi: 50)")
    parser.add_argument("--eta", type=float, default=1.0, help="DDIM η (CoDi: 1.0)")
    parser.add_argument("--guidance-scale", type=float, default=3.0, help="s in s·cond + (1−s)·uncond")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--spacing", choices=("trailing", "leading"), default="trailing",
                        help="DDIM timestep spacing: trailing starts at the noisiest step (right for few "
                             "steps); leading is LDM/CoDi's 981..1 for 50 steps")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device to sample on")
    parser.set_defaults(func=run)


def run(args) -> int:
    if args.steps < 1 or args.num_per_prompt < 1:
        raise UsageError("--steps and --num-per-prompt must be >= 1")
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = find_checkpoint(local_copy(args.checkpoint, tmp))
        model = TextToImageDiffuser.from_pretrained(checkpoint)
    try:
        model = model.to(args.device)
    except (RuntimeError, AssertionError) as err:
        raise UsageError(f"--device {args.device}: {str(err).splitlines()[0]}") from None
    prompts = [p for p in args.prompt for _ in range(args.num_per_prompt)]
    images = generate_images(model, prompts, args.steps, args.eta, args.guidance_scale, args.seed, args.spacing)
    paths = write_samples(images, prompts, Path(args.out))
    grid = save_grid(images, Path(args.out) / "grid.png")
    settings = {"checkpoint": str(args.checkpoint), "resolved_checkpoint": str(checkpoint), "prompts": prompts,
                "steps": args.steps, "eta": args.eta, "guidance_scale": args.guidance_scale, "seed": args.seed,
                "sampler": "ddim", "spacing": args.spacing, "guidance_convention": "scale"}
    (Path(args.out) / "generation.json").write_text(json.dumps(settings, indent=2))
    print(f"wrote {len(paths)} images ({images.shape[2]}x{images.shape[1]}) from {checkpoint} to {args.out} "
          f"(grid: {grid})")
    return 0
