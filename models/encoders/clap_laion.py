"""LAION-CLAP's key layout (HTSAT ``audio_branch.*``, ``audio_projection.{0,2}``, ...) -> transformers'
``ClapAudioModelWithProjection`` keys, for CoDi's released CLAP (``models.codecs_convert`` places them).

transformers' CLAP was converted from LAION-CLAP (``convert_clap_original_pytorch_to_hf.py``); the renames
below follow that script's table for the audio branch. LAION-CLAP's audio embedding, which CoDi conditions
on, is ``normalize(audio_projection(HTSAT(x)["embedding"]))``: every tensor off that path is listed in
``LAION_IGNORED`` with the reason, never dropped silently.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

LAION_BLOCK_RENAMES = (("norm1.", "layernorm_before."), ("norm2.", "layernorm_after."),
                       ("attn.proj.", "attention.output.dense."),
                       ("attn.relative_position_bias_table", "attention.self.relative_position_bias_table"),
                       ("attn.relative_position_index", "attention.self.relative_position_index"),
                       ("mlp.fc1.", "intermediate.dense."), ("mlp.fc2.", "output.dense."))
# Outside the blocks (names kept unless listed): patch_embed.*, layers.i.downsample.*, norm.*
LAION_TOP_RENAMES = (("bn0.", "batch_norm."),)
LAION_KEPT = re.compile(r"^(patch_embed\.(proj|norm)\.|layers\.\d+\.downsample\.(reduction|norm)\.|norm\.)")
LAION_QKV = re.compile(r"^(layers\.\d+\.blocks\.\d+\.)attn\.qkv\.(weight|bias)$")
LAION_BLOCK = re.compile(r"^(layers\.\d+\.blocks\.\d+\.)(.+)$")
LAION_PROJECTION = {"audio_projection.0.": "audio_projection.linear1.", "audio_projection.2.": "audio_projection.linear2."}
# LAION-CLAP tensors CoDi's audio conditioning never reads (normalize(audio_projection(HTSAT(x)["embedding"]))):
LAION_IGNORED = (
    (r"text_branch\..+", "LAION-CLAP's RoBERTa text tower (CoDi conditions text through CLIP)"),
    (r"(text_projection|text_transform|audio_transform)\..+", "contrastive-training heads, not on the audio "
                                                               "embedding path"),
    (r"logit_scale_[at]", "contrastive temperature"),
    (r"audio_branch\.(spectrogram_extractor|logmel_extractor)\..+", "STFT/mel filter buffers: the log-mel comes "
                                                                     "from transformers' ClapFeatureExtractor"),
    (r"audio_branch\.layers\.\d+\.blocks\.\d+\.attn_mask", "shifted-window mask, recomputed by transformers"),
    (r"audio_branch\.(tscam_conv|head)\..+", "HTSAT's sound-event classifier, not on the embedding path"),
)


def _laion_audio_key(k: str) -> str | None:
    """One ``audio_branch.``-relative LAION key -> its transformers ``audio_model.audio_encoder.`` key."""
    if m := LAION_BLOCK.match(k):
        for old, new in LAION_BLOCK_RENAMES:
            if m.group(2).startswith(old):
                return "audio_model.audio_encoder." + m.group(1) + new + m.group(2)[len(old):]
        return None
    for old, new in LAION_TOP_RENAMES:
        if k.startswith(old):
            return "audio_model.audio_encoder." + new + k[len(old):]
    return "audio_model.audio_encoder." + k if LAION_KEPT.match(k) else None


def laion_to_hf(clap: Mapping[str, torch.Tensor]) -> tuple[dict, dict, dict, list]:
    """LAION keys -> (transformers state, {transformers key: LAION key}, {ignored LAION key: reason},
    [LAION keys with no place]); the fused ``attn.qkv`` is split into query/key/value (views, no copy)."""
    hf, origin, ignored, unplaced = {}, {}, {}, []
    skip = [(re.compile(p), why) for p, why in LAION_IGNORED]
    for k, v in clap.items():
        reason = next((why for rx, why in skip if rx.fullmatch(k)), None)
        if reason is not None:
            ignored[k] = reason
            continue
        rel = k[len("audio_branch."):] if k.startswith("audio_branch.") else None
        if rel is not None and (m := LAION_QKV.match(rel)):
            if v.shape[0] % 3:
                unplaced.append(k)
                continue
            for part, t in zip(("query", "key", "value"), v.chunk(3, dim=0)):
                target = f"audio_model.audio_encoder.{m.group(1)}attention.self.{part}.{m.group(2)}"
                hf[target], origin[target] = t, k
            continue
        if rel is not None:
            target = _laion_audio_key(rel)
        else:
            prefix = next((p for p in LAION_PROJECTION if k.startswith(p)), None)
            target = LAION_PROJECTION[prefix] + k[len(prefix):] if prefix is not None else None
        if target is None:
            unplaced.append(k)
        else:
            hf[target], origin[target] = v, k
    return hf, origin, ignored, unplaced
