"""`codiray generate`: sample from a trained checkpoint — text-to-image, or any-to-any with a CoDi model.

    codiray generate --checkpoint outputs/runs/t2i-demo --prompt "a red circle on the left" --out samples/
    codiray generate --checkpoint codi-folder --input text="a red circle moving left" --input audio=a.wav \
        --weight text=1 --weight audio=2 --output video,audio --out samples/
    codiray generate --cascade --checkpoint runs/codi --prompt "a red circle moving left" --frames 8 --size 32

``--checkpoint`` is a text-to-image checkpoint folder (holding model.safetensors) or run folder (the
checkpoint with the highest step is used), or a CoDi model folder (codi_config.json + codecs/, local
or s3://), which takes the any-to-any path of ``training.generate_codi``; ``--cascade`` samples a run's
Imagen-Video cascade instead (``training.generate_cascade``). Sampling is DDIM (CoDi: 50
steps, η = 1) with classifier-free guidance, both from the shared diffusion core; ``sample_x0`` is the
whole text-to-image sampling path and takes any model with the UNet's call signature ``model(z_t, t, context)``.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from common.config import to_dict
from common.errors import UsageError
from models.diffusion.config import (DiffusionConfig, SamplingConfig, build_schedule, noise_fn, resolve_x0_clip,
                                     sample_noise)
from models.diffusion.guidance import Guidance, guided_denoiser
from models.diffusion.samplers import ddim_sample
from models.diffusion.schedules import sampling_timesteps
from models.text_to_image import CONFIG_NAME, WEIGHTS_NAME, TextToImageDiffuser
from common import storage
from training.loop import STATE_NAME
from training.step import x0_to_images

Model = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


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
def sample_x0(model: Model, context: torch.Tensor, uncond_context: torch.Tensor, shape: Sequence[int],
              diffusion: DiffusionConfig, sampling: SamplingConfig) -> torch.Tensor:
    """x̂_0 of shape ``shape`` by guided DDIM — what `codiray generate` runs, for any ``model(z_t, t, context)``.

    ``t`` reaches the model as the schedule's timestep; the prediction type (ε / x₀ / v), schedule,
    noise prior and data space come from ``diffusion``, the sampler settings from ``sampling``.
    x_T is the first draw of a generator seeded with ``sampling.seed``, on the context's device.
    """
    device = context.device
    schedule = build_schedule(diffusion)
    timesteps = sampling_timesteps(schedule, sampling.steps, sampling.spacing)
    generator = torch.Generator(device=device).manual_seed(sampling.seed)
    x_T = sample_noise(diffusion, shape, generator=generator, device=device)
    return ddim_sample(guided_denoiser(model, context, uncond_context), x_T, schedule, timesteps, eta=sampling.eta,
                       prediction=diffusion.prediction, generator=generator,
                       clip_x0=resolve_x0_clip(diffusion, sampling.clip_x0), noise_fn=noise_fn(diffusion),
                       guidance_weights=sampling.guidance.imagen_weights(len(timesteps)))


def sample_images(model: TextToImageDiffuser, prompts: list[str], sampling: SamplingConfig) -> np.ndarray:
    """uint8 ``b h w 3`` images for ``prompts`` (the empty prompt is the unconditional branch)."""
    model.eval()
    cfg = model.cfg
    shape = (len(prompts), cfg.unet.in_channels, cfg.image_size, cfg.image_size)
    with torch.no_grad():
        context, uncond = model.encode_text(prompts), model.encode_text([""])
    return x0_to_images(sample_x0(model, context, uncond, shape, cfg.diffusion, sampling))


def generate_images(model: TextToImageDiffuser, prompts: list[str], steps: int = 50, eta: float = 1.0,
                    guidance_scale: float = 3.0, seed: int = 0, spacing: str = "trailing") -> np.ndarray:
    """``sample_images`` with constant guidance given as CoDi's scale s (s·c + (1−s)·u)."""
    sampling = SamplingConfig(steps=steps, eta=eta, spacing=spacing, guidance=Guidance(guidance_scale, "scale"),
                              seed=seed)
    return sample_images(model, prompts, sampling)


def sampling_record(diffusion: DiffusionConfig, sampling: SamplingConfig) -> dict:
    """What a sample was drawn with: the settings as given plus what they resolve to (timesteps, Imagen w per step)."""
    timesteps = sampling_timesteps(build_schedule(diffusion), sampling.steps, sampling.spacing)
    clip = resolve_x0_clip(diffusion, sampling.clip_x0)
    return {"sampler": "ddim", **to_dict(sampling),
            "resolved": {"timesteps": [float(t) if isinstance(t, float) else int(t) for t in timesteps],
                         "imagen_guidance_weights": sampling.guidance.imagen_weights(len(timesteps)),
                         "clip_x0": "none" if clip is None else clip if isinstance(clip, str) else "dynamic",
                         "prediction": diffusion.prediction, "schedule": diffusion.schedule,
                         "noise_prior": diffusion.noise_prior, "data_space": diffusion.data_space}}


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
        "generate", help="sample from a checkpoint: text-to-image PNGs, or any-to-any with a CoDi model",
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", required=True,
                        help="text-to-image checkpoint or run folder, or CoDi model folder (local or s3://)")
    parser.add_argument("--prompt", action="append", help="text prompt (repeatable; with CoDi: one input set each)")
    parser.add_argument("--out", default="samples", help="folder for the outputs and generation.json")
    parser.add_argument("--num-per-prompt", type=int, default=1, help="samples per prompt / input set")
    parser.add_argument("--cascade", action="store_true",
                        help="text -> video through the Imagen-Video cascade (base or its distilled student, then "
                             "TSR, SSR) of a schedule run folder; --frames/--size are the last stage's output")
    codi = parser.add_argument_group("any-to-any (CoDi model folder)")
    codi.add_argument("--input", action="append", metavar="MODALITY=VALUE",
                      help="a prompt: text=STRING, image=PNG, audio=WAV, video=MP4 (repeatable, one of each)")
    codi.add_argument("--weight", action="append", metavar="MODALITY=W",
                      help="composition weight of an input (CoDi Eq. 4; normalised to sum 1) [default: 1 each]")
    codi.add_argument("--output", help="comma-separated outputs: image|video, audio, text [default: image]")
    codi.add_argument("--guidance", action="append", metavar="MODALITY=S",
                      help="guidance scale of one output (CoDi Table 12: image/video 2.0, audio 7.5, text 2.0)")
    joint = codi.add_mutually_exclusive_group()
    joint.add_argument("--joint", dest="independent", action="store_false", default=False,
                       help="sample all outputs together, one CoDi forward per step (the default)")
    joint.add_argument("--independent", dest="independent", action="store_true", default=False,
                       help="sample each output alone (its UNet alone)")
    codi.add_argument("--joint-context", choices=("paper", "released"), default="paper",
                      help="what joint cross-attention reads: the other outputs (CoDi Eq. 3) "
                           "or its own (released code)")
    codi.add_argument("--size", type=int, default=512, help="image/video side in pixels (CoDi: 64x64 latents)")
    codi.add_argument("--frames", type=int, default=8, help="video frames generated (and read from a video input)")
    codi.add_argument("--fps", type=float, default=4.0, help="frame rate of written MP4s (CoDi trains at 4 FPS)")
    codi.add_argument("--batch-size", type=int, default=8, help="rows sampled at once (each row keeps its own seed)")
    codi.add_argument("--append", action="store_true",
                      help="add to an existing generation.json in --out instead of replacing it")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps (CoDi: 50)")
    parser.add_argument("--eta", type=float, default=1.0, help="DDIM η (CoDi: 1.0)")
    strength = parser.add_mutually_exclusive_group()
    strength.add_argument("--guidance-scale", type=float, default=None,
                          help="CoDi / SD scale s in s·cond + (1−s)·uncond (s = 1: unguided) "
                               "[default: 3.0 text-to-image; CoDi Table 12 per output]")
    strength.add_argument("--guidance-weight", type=float, default=None,
                          help="Imagen Video's w in (1+w)·cond − w·uncond (w = 0: unguided; w = s − 1)")
    parser.add_argument("--guidance-low", type=float, default=None,
                        help="oscillating guidance (Imagen Video §2.6.2): alternate the high weight above with "
                             "this low one, in the same convention (Imagen: --guidance-weight 15 --guidance-low 1)")
    parser.add_argument("--guidance-constant-steps", type=int, default=None,
                        help="oscillating guidance: leading steps held at the high weight [default: ⌈steps/4⌉]")
    parser.add_argument("--clip-x0", choices=("auto", "none", "static", "dynamic"), default="auto",
                        help="x̂ clipping: auto = static for pixel models, none for latent ones")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--spacing", choices=("trailing", "leading"), default="trailing",
                        help="DDIM timestep spacing: trailing starts at the noisiest step (right for few "
                             "steps); leading is LDM/CoDi's 981..1 for 50 steps")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device to sample on")
    parser.set_defaults(func=run)


def sampling_from_args(args) -> SamplingConfig:
    """The CLI flags as a ``SamplingConfig``; bad combinations are one UsageError."""
    if args.guidance_weight is not None:
        weight, convention = args.guidance_weight, "imagen"
    else:
        weight, convention = (3.0 if args.guidance_scale is None else args.guidance_scale), "scale"
    try:
        guidance = Guidance(weight, convention, low=args.guidance_low, num_constant_steps=args.guidance_constant_steps)
        return SamplingConfig(steps=args.steps, eta=args.eta, spacing=args.spacing, guidance=guidance,
                              clip_x0=args.clip_x0, seed=args.seed)
    except ValueError as err:
        raise UsageError(f"generate: {err}") from None


CODI_ONLY = ("input", "weight", "output", "guidance")


def run(args) -> int:
    from training import generate_codi  # the any-to-any path (CoDi model folders)

    given = [f"--{name}" for name in CODI_ONLY if getattr(args, name, None)] + (
        ["--independent"] if getattr(args, "independent", False) else [])
    if getattr(args, "cascade", False):
        from training import generate_cascade

        if given:
            raise UsageError(f"{given[0]}: --cascade samples video from --prompt text only; any-to-any flags need "
                             "a CoDi model folder")
        return generate_cascade.run(args)
    if generate_codi.is_codi_folder(args.checkpoint):
        return generate_codi.run(args)
    if given:
        raise UsageError(f"{given[0]}: {args.checkpoint} is a text-to-image checkpoint (no codi_config.json); "
                         "any-to-any flags need a CoDi model folder")
    if not args.prompt:
        raise UsageError("generate: give at least one --prompt")
    if args.num_per_prompt < 1:
        raise UsageError("--num-per-prompt must be >= 1")
    sampling = sampling_from_args(args)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = find_checkpoint(local_copy(args.checkpoint, tmp))
        model = TextToImageDiffuser.from_pretrained(checkpoint)
    try:
        record = sampling_record(model.cfg.diffusion, sampling)
    except ValueError as err:
        raise UsageError(f"generate: {err}") from None
    try:
        model = model.to(args.device)
    except (RuntimeError, AssertionError) as err:
        raise UsageError(f"--device {args.device}: {str(err).splitlines()[0]}") from None
    prompts = [p for p in args.prompt for _ in range(args.num_per_prompt)]
    images = sample_images(model, prompts, sampling)
    paths = write_samples(images, prompts, Path(args.out))
    grid = save_grid(images, Path(args.out) / "grid.png")
    settings = {"checkpoint": str(args.checkpoint), "resolved_checkpoint": str(checkpoint), "prompts": prompts,
                **record}
    (Path(args.out) / "generation.json").write_text(json.dumps(settings, indent=2))
    print(f"wrote {len(paths)} images ({images.shape[2]}x{images.shape[1]}) from {checkpoint} to {args.out} "
          f"(grid: {grid})")
    return 0
