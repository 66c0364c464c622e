"""Any-to-any `codiray generate` for a CoDi model folder: inputs -> composed condition -> joint DDIM -> media.

    codiray generate --checkpoint codi-folder --input text="a red circle moving left" \
        --input audio=tone.wav --weight text=1 --weight audio=2 --output image,audio,text --out samples/

A CoDi model folder is ``CoDi.save_pretrained``'s (model.safetensors + codi_config.json) with the
codecs in its ``codecs/`` subfolder (``Codecs.save_pretrained``), local or ``s3://``. Each input set
is conditioned by composing its prompts' embeddings with the normalised weights (CoDi §3.2, Eq. 4;
the nulls mixed with the same weights, ``compose_with_null``); the requested outputs are sampled
jointly (``models.codi.sampling``) or each alone (``--independent``), decoded and written.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from common import storage
from common.config import to_dict
from common.errors import UsageError
from models.codecs import Codecs
from models.codi import CoDi
from models.codi.model import CODECS_DIR, CONFIG_NAME as CODI_CONFIG, WEIGHTS_NAME as CODI_WEIGHTS
from models.codi.sampling import MODALITY_ORDER, sample_latents, table12_guidance
from models.conditioning import compose_with_null
from models.diffusion.config import DiffusionConfig, SamplingConfig, build_schedule
from models.diffusion.guidance import Guidance
from models.diffusion.schedules import sampling_timesteps
from training import generate_media as media

@dataclass
class Request:
    """What to generate: input sets (modality -> prompt value as given), outputs and sampler settings."""

    input_sets: list[dict]
    outputs: list[str]
    weights: dict = field(default_factory=dict)          # modality -> composition weight (default 1)
    guidance: dict = field(default_factory=dict)         # modality -> Guidance (default Table 12)
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(eta=1.0))
    joint: bool = True
    joint_context: str = "paper"
    num_per_prompt: int = 1
    size: int = 512
    frames: int = 8
    fps: float = 4.0
    batch_size: int = 8


def is_codi_folder(uri: str) -> bool:
    """A CoDi model folder or a schedule run folder (``schedule.json``), local or ``s3://``."""
    from training.run_model import is_run_folder, run_uri

    return storage.exists(storage.join(run_uri(uri), CODI_CONFIG)) or is_run_folder(uri)


def load_model(uri: str) -> CoDi:
    """The CoDi model of a folder (local or ``s3://``, read through ``storage.local_copy``), with its codecs
    (``CoDi.from_pretrained`` reads ``codecs/``), or the model a schedule run folder trained
    (training/run_model.py)."""
    from training.run_model import is_run_folder, model_from_run

    if is_run_folder(uri):
        return model_from_run(uri)
    model = CoDi.from_pretrained(storage.local_copy(uri, names=(CODI_WEIGHTS, CODI_CONFIG, CODECS_DIR)))
    if model.codecs is None:
        raise UsageError(f"{uri}: no {CODECS_DIR}/ folder — a CoDi model needs its codecs to read prompts "
                         "and decode outputs (save it as CoDi(config, codecs))")
    return model


def check_outputs(model: CoDi, codecs: Codecs, outputs: Sequence[str]) -> None:
    """A requested output needs its UNet and a latent width matching the codecs (one UsageError)."""
    if not outputs:
        raise UsageError("--output: name at least one of image, video, audio, text")
    for m in outputs:
        if m not in MODALITY_ORDER:
            raise UsageError(f"--output {m}: unknown modality (one of {', '.join(MODALITY_ORDER)})")
        try:
            unet = model.unet(m)
        except ValueError as err:
            raise UsageError(f"--output {m}: {err}") from None
        latent = {"image": codecs.cfg.image.latent_channels, "video": codecs.cfg.image.latent_channels,
                  "audio": codecs.cfg.audio.vae.latent_channels, "text": codecs.cfg.text.latent_size}[m]
        if unet.spec.in_channels != latent:
            raise UsageError(f"--output {m}: the {m} UNet takes {unet.spec.in_channels} latent channels but the "
                             f"codecs' {m} latent has {latent}")
    if "image" in outputs and "video" in outputs:
        raise UsageError("--output: image and video share one UNet; generate one of them per run")


def latent_shapes(codecs: Codecs, outputs: Sequence[str], size: int, frames: int) -> dict[str, tuple]:
    """Per-row latent shape of each output: image/video from the VAE's downsampling, audio from encoding silence."""
    image_cfg = codecs.cfg.image
    side = size // image_cfg.downsample
    shapes = {}
    for m in outputs:
        if m == "image":
            shapes[m] = (image_cfg.latent_channels, side, side)
        elif m == "video":
            shapes[m] = (image_cfg.latent_channels, frames, side, side)
        elif m == "audio":
            with torch.no_grad():
                silence = torch.zeros(1, codecs.audio.samples, device=next(codecs.parameters()).device)
                shapes[m] = tuple(codecs.encode("audio", silence).shape[1:])
        else:
            shapes[m] = (codecs.cfg.text.latent_size,)
    return shapes


def as_batch(modality: str, data, device) -> object:
    """One prompt as a batch of one in ``Codecs.condition``'s layout."""
    if modality == "text":
        return [data]
    return torch.from_numpy(np.array(data)).to(device)[None]  # a copy: PIL arrays are read-only


@torch.no_grad()
def compose_context(conditioner, prompts: dict, weights: dict, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(context, null context), each ``(1, n, d)``: Σ ŵ_m C_m(x_m) and Σ ŵ_m C_m(∅) — CoDi §3.2, Eq. 4.

    ``conditioner`` has ``condition(modality, batch)`` and ``null(modality, b)`` (``Codecs`` does).
    """
    names = list(prompts)
    conds = [conditioner.condition(m, as_batch(m, prompts[m], device)) for m in names]
    nulls = [conditioner.null(m, 1) for m in names]
    try:
        return compose_with_null(conds, nulls, [float(weights.get(m, 1.0)) for m in names])
    except ValueError as err:
        raise UsageError(f"--weight: {err}") from None


def row_seeds(seed: int, rows: int) -> list[int]:
    """Row r (input set r // K, copy r % K) is sampled with seed + r."""
    return [seed + r for r in range(rows)]


@torch.no_grad()
def generate(model: CoDi, request: Request, device: torch.device) -> list[dict]:
    """Decoded outputs, one dict per row (input set × K copies): ``{"outputs": {m: data}, "seed": s, "set": i}``.

    ``model`` carries its codecs (``model.codecs``) and sits on ``device``.
    """
    codecs = model.codecs
    check_outputs(model, codecs, request.outputs)
    model.eval()
    codecs.eval()
    prompts = [{m: media.read_input(m, v, request.frames) for m, v in inputs.items()} for inputs in request.input_sets]
    pairs = [compose_context(codecs, p, request.weights, device) for p in prompts]
    k = request.num_per_prompt
    context = torch.cat([c for c, _ in pairs for _ in range(k)])
    uncond = torch.cat([u for _, u in pairs for _ in range(k)])
    seeds = row_seeds(request.sampling.seed, len(context))
    per_row = latent_shapes(codecs, request.outputs, request.size, request.frames)
    guidance = {**table12_guidance(request.outputs), **request.guidance}
    forward = partial(model, joint_context=request.joint_context)
    rows = []
    for start in range(0, len(context), request.batch_size):
        stop = min(start + request.batch_size, len(context))
        shapes = {m: (stop - start, *shape) for m, shape in per_row.items()}
        latents = sample_latents(forward, shapes, context[start:stop], uncond[start:stop], model.config.diffusion,
                                 request.sampling, guidance, seeds[start:stop], joint=request.joint)
        decoded = {m: decode(codecs, m, z) for m, z in latents.items()}
        for i in range(stop - start):
            rows.append({"outputs": {m: decoded[m][i] for m in request.outputs}, "seed": seeds[start + i],
                         "set": (start + i) // k})
    return rows


def decode(codecs: Codecs, modality: str, latent: torch.Tensor):
    """Latents -> a list of strings (text), float32 waveforms (audio) or uint8 arrays (image, video)."""
    data = codecs.decode(modality, latent)
    if modality == "text":
        return list(data)
    return data.detach().float().cpu().numpy() if modality == "audio" else data.detach().cpu().numpy()


# ---- writing ----------------------------------------------------------------------------------------

def copy_inputs(input_sets: list[dict], out: Path, run: int) -> list[dict]:
    """Media prompts copied under ``out/inputs/`` (paths relative to ``out``); text stays the prompt itself."""
    recorded = []
    for index, inputs in enumerate(input_sets):
        entry = {}
        for m, value in inputs.items():
            if m == "text":
                entry[m] = value
                continue
            source = Path(value).expanduser()
            target = out / "inputs" / f"r{run:02d}-s{index:03d}-{m}{source.suffix.lower()}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            entry[m] = str(target.relative_to(out))
        recorded.append(entry)
    return recorded


def write_row(row: dict, out: Path, stem: str, fps: float) -> dict[str, str]:
    """One row's files; video and audio together also give one MP4 with the audio muxed in."""
    outputs, paths = row["outputs"], {}
    for m, data in outputs.items():
        if m == "image":
            path = media.write_png(out / f"{stem}.png", data)
        elif m == "audio":
            path = media.write_wav(out / f"{stem}.wav", data)
        elif m == "text":
            path = media.write_txt(out / f"{stem}.txt", data)
        else:
            path = media.write_mp4(out / f"{stem}.mp4", data, fps, outputs.get("audio"))
        paths[m] = str(path.relative_to(out))
    return paths


def sampling_settings(request: Request, diffusion: DiffusionConfig) -> dict:
    timesteps = sampling_timesteps(build_schedule(diffusion), request.sampling.steps, request.sampling.spacing)
    guidance = {**table12_guidance(request.outputs), **request.guidance}
    return {"sampler": "ddim", "steps": request.sampling.steps, "eta": request.sampling.eta,
            "spacing": request.sampling.spacing, "seed": request.sampling.seed,
            "mode": "joint" if request.joint else "independent", "joint_context": request.joint_context,
            "num_per_prompt": request.num_per_prompt, "weights": request.weights,
            "guidance": {m: to_dict(guidance[m]) for m in request.outputs},
            "size": request.size, "frames": request.frames, "fps": request.fps,
            "resolved": {"timesteps": [int(t) if not isinstance(t, float) else t for t in timesteps],
                         "imagen_guidance_weights": {m: guidance[m].imagen_weights(len(timesteps))
                                                     for m in request.outputs},
                         "clip_x0": "none", "prediction": diffusion.prediction, "schedule": diffusion.schedule}}


def write_generation(rows: list[dict], request: Request, out: Path, checkpoint: str, diffusion: DiffusionConfig,
                     append: bool = False) -> dict:
    """Every file, ``generation.json`` (the schema `codiray eval` reads) and the contact sheet."""
    out.mkdir(parents=True, exist_ok=True)
    record_path = out / "generation.json"
    record = {"samples": [], "runs": []}
    if append and record_path.is_file():
        previous = json.loads(record_path.read_text(encoding="utf-8"))
        record["samples"], record["runs"] = previous.get("samples", []), previous.get("runs", [])
    run = len(record["runs"])
    inputs = copy_inputs(request.input_sets, out, run)
    mode = "joint" if request.joint else "independent"
    for row in rows:
        number = len(record["samples"])
        paths = write_row(row, out, f"{number:04d}", request.fps)
        record["samples"].append({
            "task": "+".join(inputs[row["set"]]) + "->" + "+".join(request.outputs),
            "inputs": inputs[row["set"]], "outputs": paths, "mode": mode, "seed": row["seed"], "run": run,
            "weights": {m: float(request.weights.get(m, 1.0)) for m in inputs[row["set"]]}})
    record["runs"].append({"checkpoint": checkpoint, **sampling_settings(request, diffusion)})
    record_path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    sheet_rows = [{**({"text": request.input_sets[r["set"]]["text"]} if "text" in request.input_sets[r["set"]]
                      else {}), **r["outputs"]} for r in rows]
    media.contact_sheet(sheet_rows, out / f"contact_sheet_{run:02d}.png")
    return record


# ---- CLI --------------------------------------------------------------------------------------------

def parse_pairs(values: Optional[list[str]], flag: str, number: bool = False) -> dict:
    """``MODALITY=VALUE`` flags as a dict (unknown modality or malformed pair: one UsageError)."""
    pairs = {}
    for item in values or []:
        modality, sep, value = item.partition("=")
        if not sep or not modality:
            raise UsageError(f"{flag} {item!r}: expected MODALITY=VALUE")
        if modality not in MODALITY_ORDER:
            raise UsageError(f"{flag} {item!r}: unknown modality {modality!r} (one of {', '.join(MODALITY_ORDER)})")
        if modality in pairs:
            raise UsageError(f"{flag}: {modality} given twice")
        if number:
            try:
                value = float(value)
            except ValueError:
                raise UsageError(f"{flag} {item!r}: {value!r} is not a number") from None
        pairs[modality] = value
    return pairs


def guidance_from_args(args, outputs: Sequence[str]) -> dict[str, Guidance]:
    """Table 12 defaults, overridden by --guidance-scale/--guidance-weight (all) and --guidance M=S (one)."""
    per = parse_pairs(args.guidance, "--guidance", number=True)
    extra = [m for m in per if m not in outputs]
    if extra:
        raise UsageError(f"--guidance {extra[0]}=...: {extra[0]} is not a requested --output")
    guidance = {}
    try:
        for m in outputs:
            if m in per:
                guidance[m] = Guidance(per[m], "scale", low=args.guidance_low,
                                       num_constant_steps=args.guidance_constant_steps)
            elif args.guidance_weight is not None:
                guidance[m] = Guidance(args.guidance_weight, "imagen", low=args.guidance_low,
                                       num_constant_steps=args.guidance_constant_steps)
            elif args.guidance_scale is not None or args.guidance_low is not None:
                scale = table12_guidance([m])[m].weight if args.guidance_scale is None else args.guidance_scale
                guidance[m] = Guidance(scale, "scale", low=args.guidance_low,
                                       num_constant_steps=args.guidance_constant_steps)
            elif args.guidance_constant_steps is not None:
                raise ValueError("num_constant_steps only applies to oscillating guidance (set low)")
    except ValueError as err:
        raise UsageError(f"generate: {err}") from None
    return guidance


def request_from_args(args) -> Request:
    inputs = parse_pairs(args.input, "--input")
    input_sets = [{"text": p} for p in args.prompt or []] + ([inputs] if inputs else [])
    if not input_sets:
        raise UsageError("generate: give --input MODALITY=VALUE (or --prompt TEXT)")
    outputs = [m.strip() for m in (args.output or "image").split(",") if m.strip()]
    if len(set(outputs)) != len(outputs):
        raise UsageError(f"--output {args.output}: a modality is named twice")
    weights = parse_pairs(args.weight, "--weight", number=True)
    named = {m for s in input_sets for m in s}
    extra = [m for m in weights if m not in named]
    if extra:
        raise UsageError(f"--weight {extra[0]}=...: no {extra[0]} input is given")
    for m in outputs:
        if m not in MODALITY_ORDER:
            raise UsageError(f"--output {m}: unknown modality (one of {', '.join(MODALITY_ORDER)})")
    if args.num_per_prompt < 1 or args.batch_size < 1:
        raise UsageError("--num-per-prompt and --batch-size must be >= 1")
    if args.size < 1 or args.frames < 1 or args.fps <= 0:
        raise UsageError("--size, --frames and --fps must be positive")
    try:
        sampling = SamplingConfig(steps=args.steps, eta=1.0 if args.eta is None else args.eta, spacing=args.spacing,
                                  seed=args.seed)
    except ValueError as err:
        raise UsageError(f"generate: {err}") from None
    return Request(input_sets=input_sets, outputs=outputs, weights=weights,
                   guidance=guidance_from_args(args, outputs), sampling=sampling, joint=not args.independent,
                   joint_context=args.joint_context, num_per_prompt=args.num_per_prompt, size=args.size,
                   frames=args.frames, fps=args.fps, batch_size=args.batch_size)


def run(args) -> int:
    request = request_from_args(args)
    model = load_model(args.checkpoint)
    try:
        device = torch.device(args.device)
        model = model.to(device)
        codecs = model.codecs.to(device)
    except (RuntimeError, AssertionError) as err:
        raise UsageError(f"--device {args.device}: {str(err).splitlines()[0]}") from None
    if request.size % codecs.cfg.image.downsample and {"image", "video"} & set(request.outputs):
        raise UsageError(f"--size {request.size}: must be a multiple of the image VAE's downsampling "
                         f"({codecs.cfg.image.downsample})")
    rows = generate(model, request, device)
    out = Path(args.out)
    record = write_generation(rows, request, out, str(args.checkpoint), model.config.diffusion, append=args.append)
    mode = "jointly" if request.joint else "independently"
    print(f"wrote {len(rows)} samples of {'+'.join(request.outputs)} ({mode}) from {args.checkpoint} to {out} "
          f"({len(record['samples'])} in generation.json)")
    return 0
