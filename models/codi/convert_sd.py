"""Stable Diffusion 1.x UNets in diffusers' folder format → LDM (``openaimodel``) names.

diffusers' ``UNet2DConditionModel`` names blocks ``down_blocks.i.{resnets,attentions,downsamplers}``;
LDM numbers them ``input_blocks.k``: with n layers per block, down level i's j-th ResBlock (and its
transformer) is input block i·(n+1)+j+1 and its downsampler input block (i+1)·(n+1); up level i's
j-th ResBlock is output block i·(n+1)+j, its upsampler sits after the transformer in output block
i·(n+1)+n. Inside ResBlocks ``norm1/conv1/time_emb_proj/norm2/conv2/conv_shortcut`` are
``in_layers.0/in_layers.2/emb_layers.1/out_layers.0/out_layers.3/skip_connection``; transformers
keep their names.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from torch import Tensor

from .tensors import ConversionError, listing as _listing, read_state_dict

CONFIG = "config.json"
WEIGHTS = "diffusion_pytorch_model.safetensors"
RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
          "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
TOP = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
       "time_embedding.linear_2": "time_embed.2", "conv_norm_out": "out.0", "conv_out": "out.2"}
# Config values an SD 1.x UNet has; anything else is a different architecture.
SD1 = {"act_fn": "silu", "center_input_sample": False, "class_embed_type": None, "addition_embed_type": None,
       "encoder_hid_dim": None, "flip_sin_to_cos": True, "freq_shift": 0, "mid_block_type": "UNetMidBlock2DCrossAttn",
       "norm_num_groups": 32, "resnet_time_scale_shift": "default", "time_embedding_type": "positional",
       "upcast_attention": False, "use_linear_projection": False, "only_cross_attention": False,
       "transformer_layers_per_block": 1, "num_class_embeds": None, "time_cond_proj_dim": None}


def read_diffusers_folder(folder: Path) -> tuple[dict[str, Tensor], dict, str]:
    """(tensors, config with ``num_heads`` and ``layers``, source) of a diffusers UNet folder."""
    config_path, weights = folder / CONFIG, folder / WEIGHTS
    if not config_path.is_file() or not weights.is_file():
        raise ConversionError(f"{folder}: expected a diffusers UNet folder with {CONFIG} and {WEIGHTS}")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise ConversionError(f"{config_path}: not valid JSON ({err})") from None
    if config.get("_class_name", "UNet2DConditionModel") != "UNet2DConditionModel":
        raise ConversionError(f"{config_path}: _class_name {config['_class_name']!r} is not UNet2DConditionModel")
    for key, expected in SD1.items():
        if key in config and config[key] != expected and config[key] != [expected] * len(config["down_block_types"]):
            raise ConversionError(f"{config_path}: key '{key}' is {config[key]!r}; an SD 1.x UNet has {expected!r}")
    heads = config.get("num_attention_heads") or config.get("attention_head_dim", 8)
    layers = config.get("layers_per_block", 2)
    for name, value in (("attention_head_dim/num_attention_heads", heads), ("layers_per_block", layers)):
        if isinstance(value, list):
            if len(set(value)) != 1:
                raise ConversionError(f"{config_path}: per-level {name} {value} is not supported (SD 1.x has one value)")
    config = dict(config, num_heads=heads[0] if isinstance(heads, list) else heads,
                  layers=layers[0] if isinstance(layers, list) else layers)
    return read_state_dict(weights), config, str(weights)


def _attention_levels(config: dict) -> list[bool]:
    return ["CrossAttn" in block for block in config["down_block_types"]]


def ldm_name(key: str, layers: int, attention: list[bool]) -> str | None:
    """LDM name of one diffusers UNet tensor name (None when it has no place in SD 1.x's UNet)."""
    n1 = layers + 1
    for prefix, target in TOP.items():
        if key.startswith(prefix + "."):
            return target + key[len(prefix):]
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        level, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        block = f"input_blocks.{level * n1 + j + 1}"
        return f"{block}.0.{_resnet(rest)}" if kind == "resnets" else f"{block}.1.{rest}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{(int(m[1]) + 1) * n1}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.([01])\.(.+)", key):
        return f"middle_block.{2 * int(m[1])}.{_resnet(m[2])}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        level, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        block = f"output_blocks.{level * n1 + j}"
        return f"{block}.0.{_resnet(rest)}" if kind == "resnets" else f"{block}.1.{rest}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        level = int(m[1])
        has_attention = attention[len(attention) - 1 - level]
        return f"output_blocks.{level * n1 + layers}.{1 + has_attention}.conv.{m[2]}"
    return None


def _resnet(rest: str) -> str:
    name, _, param = rest.rpartition(".")
    return f"{RESNET.get(name, name)}.{param}"


def diffusers_unet_to_ldm(state: dict[str, Tensor], config: dict, source: str) -> dict[str, Tensor]:
    """Rename every tensor; fail listing the ones with no place in an SD 1.x UNet."""
    attention = _attention_levels(config)
    out, unplaced = {}, []
    for key, value in state.items():
        name = ldm_name(key, config["layers"], attention)
        if name is None:
            unplaced.append(key)
        else:
            out[name] = value
    if unplaced:
        raise ConversionError(f"{source}: cannot place {len(unplaced)} tensor(s): {_listing(unplaced)}")
    return out
