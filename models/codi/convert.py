"""Released weights → ``CoDi`` folders: CoDi's own checkpoints and Stable Diffusion 1.x UNets.

CoDi's files (``CoDi_video_diffuser_8frames.pth``, ``CoDi_audio_diffuser_m.pth``,
``CoDi_text_diffuser.pth``) are plain tensor state dicts keyed
``model.diffusion_model.unet_{image,audio,text}.<LDM/CoDi name>``. Every size is read off the tensor
shapes (channels, multipliers, blocks per level, attention and connector levels, context and V
widths, video heads); only the spatial-transformer head count is not in the shapes (CoDi: 8). Every
tensor must land on a parameter of the same shape and every parameter must be filled, or the
conversion fails listing the tensors it could not place (CoDi's own loader is non-strict and
hides them).

A full CoDi model checkpoint also carries its autoencoders and prompt encoders (``autokl.*``,
``audioldm.*``, ``optimus.*``, ``clip.model.*``, ``clap.model.*``): ``models.codecs_convert`` places
those into a ``Codecs`` that rides along as ``model.codecs``. LDM's DDPM buffers (``betas``,
``alphas_cumprod``, the posterior coefficients, …) are derived constants: they are compared with what
the shared core computes for the model's schedule and reported, never loaded.
"""

from __future__ import annotations

import re
from pathlib import Path
from dataclasses import dataclass, field
from typing import Iterable, Optional

import torch
from torch import Tensor

from models.diffusion.config import DiffusionConfig, build_schedule
from models.diffusion.process import q_posterior_variance, snr_ratio

from .config import MODALITIES, CoDiConfig, UNetSpec
from .convert_sd import diffusers_unet_to_ldm, read_diffusers_folder
from .model import CoDi
from .tensors import ConversionError, listing as _listing, read_state_dict

CODI_PREFIX = "model.diffusion_model."
CODEC_PREFIXES = ("autokl.", "audioldm.", "optimus.", "clip.model.", "clap.model.")
LDM_PREFIX = "model.diffusion_model."
DEFAULT_SCALE = {"image": 0.18215, "audio": 0.9228, "text": 4.3108}


# ---------------------------------------------------------------------------------------------
# sizes from shapes
# ---------------------------------------------------------------------------------------------

def _indices(state: dict, prefix: str) -> list[int]:
    """Sorted child indices i of keys ``prefix.i.…``."""
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    return sorted({int(m.group(1)) for k in state if (m := pattern.match(k))})


def _has(state: dict, prefix: str) -> bool:
    return any(k.startswith(prefix + ".") for k in state)


def _resblock_prefix(state: dict, block: str) -> str:
    """``block.0`` (plain ResBlock/FCBlock) or ``block.0.0`` (CoDi's [ResBlock, video layers] pair)."""
    return f"{block}.0.0" if f"{block}.0.0.out_layers.3.weight" in state else f"{block}.0"


def _levels(state: dict, root: str, is_step) -> list[list[int]]:
    """Block indices of ``root`` (skipping the stem at 0) grouped into levels split by step blocks."""
    levels, current = [], []
    for i in _indices(state, root)[1:]:
        if is_step(f"{root}.{i}"):
            levels.append(current)
            current = []
        else:
            current.append(i)
    return levels + [current]


def infer_unet_spec(state: dict[str, Tensor], num_heads: int = 8, scale_factor: float = 0.18215) -> UNetSpec:
    """A ``UNetSpec`` whose module shapes match LDM/CoDi-named tensors ``state`` (keys without prefix)."""
    stem = state["input_blocks.0.0.weight"]
    text = stem.ndim == 2
    C = state["time_embed.0.weight"].shape[1]
    width = lambda block: state[f"{_resblock_prefix(state, block)}.out_layers.3.weight"].shape[0]
    attn_width = lambda block: state[f"{block}.1.norm.weight"].shape[0] if f"{block}.1.norm.weight" in state else None

    if text:
        step = lambda block: state.get(f"{block}.0.weight") is not None and state[f"{block}.0.weight"].ndim == 2
    else:
        step = lambda block: f"{block}.0.op.weight" in state
    levels = _levels(state, "input_blocks", step)
    channel_mult, second_dim, attention = [], [], []
    for idx, blocks in enumerate(levels):
        block = f"input_blocks.{blocks[0]}"
        channels = width(block)
        attn = attn_width(block)
        if text:
            mid = state["middle_block.1.norm.weight"].shape[0] if idx == len(levels) - 1 else None
            per_token = attn or mid
            sdim = channels // per_token if per_token else (second_dim[-1] if second_dim else 4)
            second_dim.append(sdim)
            channels //= sdim
        channel_mult.append(channels // C)
        attention.append(attn is not None)

    connectors = _has(state, "connecters_out")
    spec = dict(
        kind="text" if text else "2d",
        in_channels=stem.shape[1],
        out_channels=state["out.2.weight"].shape[0],
        model_channels=C, channel_mult=channel_mult, num_res_blocks=[len(b) for b in levels],
        attention_levels=attention, num_heads=num_heads,
        context_dim=state["middle_block.1.transformer_blocks.0.attn2.to_k.weight"].shape[1],
        connectors=connectors, scale_factor=scale_factor,
        connector_levels=[any(_has(state, f"input_block_connecters_in.{i}") for i in blocks) for blocks in levels],
    )
    if text:
        spec["second_dim"] = second_dim
    temporal = "input_blocks.1.0.1"   # the first [ResBlock, video layers] pair, if there are video layers
    if not text and f"{temporal}.temporal_rel_pos_bias.net.2.weight" in state:
        heads = state[f"{temporal}.temporal_rel_pos_bias.net.2.weight"].shape[0]
        inner, dim = state[f"{temporal}.temporal_attn.to_q.weight"].shape
        spec.update(video=True, video_heads=heads, video_head_ratio=heads * dim // inner)
    if connectors:
        spec.update(_infer_connector(state, C, text, second_dim))
    return UNetSpec(**spec)


def _infer_connector(state: dict, C: int, text: bool, second_dim: list[int]) -> dict:
    blocks = _indices(state, "connecters_out")
    last = f"connecters_out.{blocks[-1]}"
    out_weight = state[f"{last}.2.weight"]
    mults, counts, sdims, count = [], [], [], 0
    for i in blocks[1:-1]:
        block = f"connecters_out.{i}"
        if f"{block}.0.op.weight" in state or (text and f"{block}.0.weight" in state):
            counts.append(count)
            count = 0
            continue
        channels = state[f"{_resblock_prefix(state, block)}.out_layers.3.weight"].shape[0]
        if count == 0:
            level = len(counts)
            sdim = second_dim[level] if text and level < len(second_dim) else 1
            mults.append(channels // sdim // C)
            sdims.append(sdim)
        count += 1
    counts.append(count)
    found = dict(connector_mult=mults, connector_blocks=counts, connector_dim=out_weight.shape[0])
    if text:
        found["connector_second_dim"] = sdims
    return found


# ---------------------------------------------------------------------------------------------
# placing tensors
# ---------------------------------------------------------------------------------------------

def place(model: CoDi, state: dict[str, Tensor], source: str) -> None:
    """Copy ``state`` (CoDi-model names) into ``model``: every tensor placed, every parameter filled."""
    own = model.state_dict()
    unplaced = [k for k in state if k not in own]
    misshaped = [f"{k} {tuple(v.shape)} (expected {tuple(own[k].shape)})"
                 for k, v in state.items() if k in own and v.shape != own[k].shape]
    if unplaced or misshaped:
        raise ConversionError(f"{source}: cannot place {len(unplaced) + len(misshaped)} tensor(s): "
                              + _listing(unplaced + misshaped))
    missing = [k for k in own if k not in state]
    if missing:
        raise ConversionError(f"{source}: no tensor for {len(missing)} parameter(s): {_listing(missing)}")
    model.load_state_dict(state, strict=True, assign=True)


def build_and_place(specs: dict[str, UNetSpec], state: dict[str, Tensor], source: str,
                    dtype: torch.dtype = torch.float32) -> CoDi:
    """The model built on the meta device, then given the checkpoint's tensors (cast to ``dtype``)."""
    with torch.device("meta"):
        model = CoDi(CoDiConfig(**specs))
    place(model, {k: v.to(dtype) for k, v in state.items()}, source)
    return model


# ---------------------------------------------------------------------------------------------
# CoDi's released checkpoints
# ---------------------------------------------------------------------------------------------

def split_codi_state(state: dict[str, Tensor], source: str) -> dict[str, dict[str, Tensor]]:
    """``model.diffusion_model.unet_<m>.<key>`` → {m: {key: tensor}}; any other key is listed as unplaceable."""
    pattern = re.compile(re.escape(CODI_PREFIX) + r"unet_(" + "|".join(MODALITIES) + r")\.(.+)")
    parts: dict[str, dict[str, Tensor]] = {}
    stray = []
    for key, value in state.items():
        m = pattern.fullmatch(key)
        if m is None:
            stray.append(key)
            continue
        parts.setdefault(m.group(1), {})[m.group(2)] = value
    if stray:
        raise ConversionError(f"{source}: cannot place {len(stray)} tensor(s) (not under "
                              f"{CODI_PREFIX}unet_{{{','.join(MODALITIES)}}}.): {_listing(stray)}")
    return parts


@dataclass
class CodiConversion:
    """A converted release: the model (with ``model.codecs`` when the files carried them) and what was
    checked instead of loaded (derived constants that matched, and those that did not)."""

    model: CoDi
    checked: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    ignored: dict[str, str] = field(default_factory=dict)    # release tensors codiray does not need -> why


# LDM's DDPM (``ldm.models.diffusion.ddpm``; CoDi's ``core/models/sd.py``) registers these per-timestep
# tables beside the UNets.
DDPM_BUFFERS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                "posterior_mean_coef1", "posterior_mean_coef2")


def ddpm_buffers(diffusion: DiffusionConfig) -> dict[str, Tensor]:
    """LDM's DDPM tables for ``diffusion``, from the core's schedule (ᾱ, α = √ᾱ, σ) and its posterior
    q(z_{t−1} | z_t, x): mean = coef1·x + coef2·z_t, variance β̃_t (DDPM Eq. 6–7, Imagen Video Eq. 3)."""
    schedule = build_schedule(diffusion)
    if not getattr(schedule, "discrete", False):
        raise ValueError("LDM's DDPM tables exist only for discrete schedules")
    t = torch.arange(schedule.num_timesteps)
    alpha_t, sigma_t, alpha_s, sigma_s = schedule.alpha(t), schedule.sigma(t), schedule.alpha(t - 1), schedule.sigma(t - 1)
    r = snr_ratio(alpha_s, sigma_s, alpha_t, sigma_t)
    variance = q_posterior_variance(alpha_s, sigma_s, alpha_t, sigma_t)
    tables = {
        "betas": schedule.beta(t), "alphas_cumprod": alpha_t**2, "alphas_cumprod_prev": alpha_s**2,
        "sqrt_alphas_cumprod": alpha_t, "sqrt_one_minus_alphas_cumprod": sigma_t,
        "log_one_minus_alphas_cumprod": torch.log(sigma_t**2), "sqrt_recip_alphas_cumprod": 1 / alpha_t,
        "sqrt_recipm1_alphas_cumprod": sigma_t / alpha_t, "posterior_variance": variance,
        "posterior_log_variance_clipped": torch.log(variance.clamp(min=1e-20)),
        "posterior_mean_coef1": (1 - r) * alpha_s, "posterior_mean_coef2": r * alpha_s / alpha_t,
    }
    return {name: value.float() for name, value in tables.items()}


def compare_ddpm_buffers(state: dict[str, Tensor], diffusion: DiffusionConfig, out: CodiConversion) -> None:
    """Check every DDPM table the checkpoint carries against ``diffusion``'s (relative 1e-4)."""
    ours = ddpm_buffers(diffusion)
    for name in DDPM_BUFFERS:
        if name not in state:
            continue
        theirs = state[name].float()
        if theirs.shape != ours[name].shape:
            out.mismatches.append(f"{name}: shape {tuple(theirs.shape)}, codiray's schedule has {tuple(ours[name].shape)}")
        elif not torch.allclose(theirs, ours[name], rtol=1e-4, atol=1e-7):
            worst = (theirs - ours[name]).abs().max().item()
            out.mismatches.append(f"{name}: differs from codiray's {diffusion.schedule} schedule "
                                  f"(β {diffusion.beta_start}→{diffusion.beta_end}, {diffusion.num_timesteps} steps) "
                                  f"by up to {worst:.3g}")
        else:
            out.checked.append(name)


def convert_codi(checkpoints: Iterable[str | Path], num_heads: int = 8, dtype: torch.dtype = torch.float32,
                 codecs_base=None) -> CoDi:
    """One ``CoDi`` holding every UNet (and the codecs) found in CoDi's released files."""
    return convert_codi_release(checkpoints, num_heads, dtype, codecs_base).model


def convert_codi_release(checkpoints: Iterable[str | Path], num_heads: int = 8, dtype: torch.dtype = torch.float32,
                         codecs_base=None) -> CodiConversion:
    """CoDi's released files (fp16 or fp32 in, ``dtype`` out) → ``CodiConversion``. ``codecs_base`` (a
    ``CodecsConfig``) gives what tensor shapes cannot (heads, vocoder dilations, tokenizer dirs)."""
    whole: dict[str, Tensor] = {}
    seen: dict[str, str] = {}
    for path in checkpoints:
        for key, value in read_state_dict(path).items():
            if key in whole:
                unet = re.match(re.escape(CODI_PREFIX) + r"unet_(\w+?)\.", key)
                what = f"the {unet.group(1)} UNet" if unet else f"tensor {key}"
                raise ConversionError(f"{path}: {what} is also in {seen[key]}")
            whole[key], seen[key] = value, str(path)
    codecs = None
    checked, mismatches, ignored = [], [], {}
    if any(k.startswith(CODEC_PREFIXES) for k in whole):
        from models.codecs import Codecs
        from models.codecs_convert import convert_codi_codecs, load_into

        conversion, whole = convert_codi_codecs(whole, codecs_base)
        codecs = Codecs(conversion.config)
        load_into(codecs, conversion)
        codecs.to(dtype)
        checked += conversion.derived_ok
        mismatches += conversion.mismatches
        ignored = dict(conversion.ignored)
    buffers = {k: whole.pop(k) for k in DDPM_BUFFERS if k in whole}
    merged: dict[str, dict[str, Tensor]] = {}
    origin: dict[str, str] = {}
    for key, value in whole.items():
        seen_in = seen[key]
        for modality, part in split_codi_state({key: value}, seen_in).items():
            merged.setdefault(modality, {}).update(part)
            if origin.setdefault(modality, seen_in) != seen_in:
                raise ConversionError(f"{seen_in}: the {modality} UNet is also in {origin[modality]}")
    if not merged:
        raise ConversionError("no CoDi UNet tensors (model.diffusion_model.unet_*) in the given checkpoint(s)"
                              + ("; they hold only autoencoders/prompt encoders: give a diffuser checkpoint too"
                                 if codecs is not None else ""))
    specs, state = {}, {}
    for modality, part in merged.items():
        try:
            specs[modality] = infer_unet_spec(part, num_heads, DEFAULT_SCALE[modality])
        except (KeyError, ValueError, ZeroDivisionError, IndexError) as err:
            raise ConversionError(f"{origin[modality]}: cannot read the {modality} UNet's sizes "
                                  f"from its tensors ({type(err).__name__}: {err})") from None
        state.update({f"unets.{modality}.{k}": v for k, v in part.items()})
    model = build_and_place(specs, state, ", ".join(dict.fromkeys(origin.values())), dtype)
    model.codecs = codecs
    out = CodiConversion(model, checked, mismatches, ignored)
    compare_ddpm_buffers(buffers, model.config.diffusion, out)
    return out


def to_codi_state_dict(model: CoDi) -> dict[str, Tensor]:
    """``model``'s tensors under CoDi's released names (``model.diffusion_model.unet_<m>.…``)."""
    return {f"{CODI_PREFIX}unet_{modality}.{key}": value
            for modality, unet in model.unets.items() for key, value in unet.state_dict().items()}


# ---------------------------------------------------------------------------------------------
# Stable Diffusion 1.x
# ---------------------------------------------------------------------------------------------

def convert_sd(path: str | Path, num_heads: Optional[int] = None, dtype: torch.dtype = torch.float32) -> CoDi:
    """An image-only ``CoDi`` from an SD 1.x UNet: diffusers folder, or single-file LDM checkpoint."""
    path = Path(path)
    if path.is_dir():
        state, config, source = read_diffusers_folder(path)
        heads = num_heads or config["num_heads"]
        state = diffusers_unet_to_ldm(state, config, source)
    else:
        source = str(path)
        full = read_state_dict(path)
        state = {k[len(LDM_PREFIX):]: v for k, v in full.items() if k.startswith(LDM_PREFIX)}
        if not state:
            raise ConversionError(f"{path}: no '{LDM_PREFIX}*' tensors — not a Stable Diffusion checkpoint")
        heads = num_heads or 8
    try:
        spec = infer_unet_spec(state, heads, DEFAULT_SCALE["image"])
    except (KeyError, ValueError, ZeroDivisionError, IndexError) as err:
        raise ConversionError(f"{source}: cannot read the UNet's sizes from its tensors "
                              f"({type(err).__name__}: {err})") from None
    return build_and_place({"image": spec}, {f"unets.image.{k}": v for k, v in state.items()}, source, dtype)


# ---------------------------------------------------------------------------------------------
# growing a trained network: new video layers / V / connectors keep their (zero) init
# ---------------------------------------------------------------------------------------------

_PLAIN_RESBLOCK = re.compile(r"^(unets\.image\.(?:input_blocks|output_blocks|connecters_out)\.\d+\.0"
                             r"|unets\.image\.middle_block\.[02])\.(.+)$")


def load_into_larger(model: CoDi, state: dict[str, Tensor], source: str = "<state dict>") -> list[str]:
    """Load a smaller model's tensors (e.g. an image UNet without video layers, V or connectors) into
    ``model``; plain ResBlock names move into CoDi's ``[ResBlock, video layers]`` pairs. Every given
    tensor must be placed; the parameters left at their initialisation are returned."""
    own = model.state_dict()
    renamed = {}
    for key, value in state.items():
        if key not in own and (m := _PLAIN_RESBLOCK.match(key)) and f"{m[1]}.0.{m[2]}" in own:
            key = f"{m[1]}.0.{m[2]}"
        renamed[key] = value
    unplaced = [k for k, v in renamed.items() if k not in own or v.shape != own[k].shape]
    if unplaced:
        raise ConversionError(f"{source}: cannot place {len(unplaced)} tensor(s): {_listing(unplaced)}")
    model.load_state_dict(renamed, strict=False)
    return sorted(set(own) - set(renamed))
