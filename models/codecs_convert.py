"""Place released CoDi (and SD/AudioLDM/HiFi-GAN) checkpoint tensors into ``Codecs``' modules.

Source layouts (CoDi's checkpoint keys):
    autokl.*                                   LDM kl-f8 (encoder/decoder/quant_conv/post_quant_conv)
    audioldm.{encoder,decoder,quant_conv,post_quant_conv}.*   LDM KL-VAE on mels
    audioldm.vocoder.*                         HiFi-GAN generator, plain weights (weight norm removed)
    audioldm.fn_STFT.*                         STFT/mel bases: derived, compared with common/melspec.py
    optimus.encoder.*   BERT (embeddings/encoder/pooler) + linear;  optimus.decoder.*  GPT-2 + linear(_emb)
    clip.model.*                               transformers CLIPModel layout (+ CoDi's temporal_self_attn)
    clap.model.*                               LAION-CLAP (audio_branch.* HTSAT, audio_projection.{0,2}, and
                                               unused text_branch.*, logit_scale_*, ...) or transformers'
                                               ClapAudioModelWithProjection layout
Sizes are inferred from tensor shapes. A tensor under these prefixes that cannot be placed is an error
naming it; derived constants (``position_ids``, causal-mask buffers, STFT bases, tied heads) are
compared with what codiray computes and a mismatch is reported, never loaded.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

from common.errors import CodirayError
from common.melspec import AUDIOLDM, MelSpec, mel_basis
from models.codecs_config import (PIECES, AudioConfig, BertConfigLite, ClapConfig, ClipConfig, CodecsConfig,
                                  GPT2ConfigLite, KLVAEConfig, OptimusConfig, VocoderConfig, only)

PREFIXES = ("autokl.", "audioldm.", "optimus.", "clip.model.", "clap.model.")
LDM_NORM_GROUPS = 32          # LDM's Normalize() is GroupNorm(32)


class ConversionError(CodirayError):
    """A checkpoint tensor that cannot be placed (or a checkpoint that cannot be read)."""

    exit_code = 2


@dataclass
class Conversion:
    """The converted ``Codecs`` state dict, the inferred config, and what was checked instead of loaded."""

    config: CodecsConfig
    state: dict[str, torch.Tensor]
    derived_ok: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    origin: dict[str, str] = field(default_factory=dict)     # Codecs key -> checkpoint key
    ignored: dict[str, str] = field(default_factory=dict)    # checkpoint key -> why it is not needed


def _sub(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _count(state: Mapping[str, torch.Tensor], pattern: str) -> int:
    """Number of distinct integers ``i`` in keys matching ``pattern`` (with one ``(\\d+)`` group)."""
    rx = re.compile(pattern)
    return len({int(m.group(1)) for k in state if (m := rx.match(k))})


def _need(state: Mapping[str, torch.Tensor], key: str, where: str) -> torch.Tensor:
    if key not in state:
        raise ConversionError(f"{where}{key}: required tensor missing (cannot infer the architecture)")
    return state[key]


def _heads(hidden: int, base_hidden: int, base_heads: int) -> int:
    """Head counts are not in the shapes: ``base``'s count when its width matches, else width // 64
    (every released model here uses 64-wide heads)."""
    return base_heads if hidden == base_hidden else max(1, hidden // 64)


def _storage_key(t: torch.Tensor) -> tuple[int, int]:
    return t.untyped_storage().data_ptr(), t.storage_offset()


def _check_all_placed(source: Mapping[str, torch.Tensor], placed: Mapping[str, torch.Tensor], where: str,
                      skip: set[str] = frozenset()) -> None:
    """Every source tensor (but ``skip``) must reappear (same storage, maybe reshaped) in ``placed``."""
    used = {_storage_key(t) for t in placed.values()}
    left = sorted(k for k, t in source.items() if k not in skip and _storage_key(t) not in used)
    if left:
        raise ConversionError(f"{where}{left[0]}: cannot place this tensor ({len(left)} unplaced in {where}*)")


def _load_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], where: str,
                 ignore_missing: tuple[str, ...] = ()) -> None:
    """Shapes must match; keys of ``module`` not provided are an error unless they end in ``ignore_missing``."""
    own = module.state_dict()
    for k, v in state.items():
        if k not in own:
            raise ConversionError(f"{where}: converted key {k} has no place in {type(module).__name__}")
        if tuple(own[k].shape) != tuple(v.shape):
            raise ConversionError(f"{where}: {k} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}")
    missing = [k for k in own if k not in state and not k.endswith(ignore_missing)]
    if missing:
        raise ConversionError(f"{where}: checkpoint has no tensor for {missing[0]} ({len(missing)} missing)")


# ---- LDM KL autoencoders (image kl-f8, AudioLDM mel VAE) ---------------------------------------------

def kl_vae_config_from_ldm(ldm: Mapping[str, torch.Tensor], where: str, **extra) -> KLVAEConfig:
    """Infer ``AutoencoderKL`` sizes from LDM keys (encoder.conv_in, encoder.down.i.block.j, quant_conv)."""
    conv_in = _need(ldm, "encoder.conv_in.weight", where)
    levels = _count(ldm, r"encoder\.down\.(\d+)\.")
    blocks = _count(ldm, r"encoder\.down\.0\.block\.(\d+)\.")
    channels = tuple(int(_need(ldm, f"encoder.down.{i}.block.0.conv2.weight", where).shape[0]) for i in range(levels))
    embed = int(_need(ldm, "quant_conv.weight", where).shape[0]) // 2
    z = int(_need(ldm, "encoder.conv_out.weight", where).shape[0]) // 2
    if z != embed:
        raise ConversionError(f"{where}quant_conv.weight: z_channels {z} != embed_dim {embed} (unsupported)")
    return KLVAEConfig(in_channels=int(conv_in.shape[1]), latent_channels=embed, block_out_channels=channels,
                       layers_per_block=blocks, norm_num_groups=LDM_NORM_GROUPS, **extra)


def kl_vae_from_ldm(ldm: Mapping[str, torch.Tensor], where: str, **extra) -> tuple[KLVAEConfig, dict]:
    """LDM-layout VAE tensors -> (config, diffusers ``AutoencoderKL`` state dict); every tensor placed."""
    from models.autoencoders.kl import build_kl_vae

    cfg = kl_vae_config_from_ldm(ldm, where, **extra)
    n = len(cfg.block_out_channels)
    layout = {"down_block_types": ("DownEncoderBlock2D",) * n, "up_block_types": ("UpDecoderBlock2D",) * n}
    state = convert_ldm_vae_checkpoint(dict(ldm), layout)
    _check_all_placed(ldm, state, where)
    _load_strict(build_kl_vae(cfg), state, where.rstrip("."))
    return cfg, state


# ---- HiFi-GAN vocoder ------------------------------------------------------------------------------

def vocoder_from_hifigan(hifi: Mapping[str, torch.Tensor], where: str,
                         defaults: VocoderConfig = VocoderConfig()) -> tuple[VocoderConfig, dict]:
    """HiFi-GAN generator keys (conv_pre, ups.i, resblocks.j.convs{1,2}.k, conv_post) -> SpeechT5HifiGan.

    Kernel sizes and channels come from shapes; upsample rates and dilations are not in the shapes and
    are taken from ``defaults`` (the 16 kHz/64-mel HiFi-GAN) after checking the counts agree."""
    if any(k.endswith(("weight_g", "weight_v")) for k in hifi):
        raise ConversionError(f"{where}: weight-normed tensors (weight_g/weight_v) found; expected plain weights")
    conv_pre = _need(hifi, "conv_pre.weight", where)
    ups = _count(hifi, r"ups\.(\d+)\.")
    kernels = tuple(int(_need(hifi, f"ups.{i}.weight", where).shape[-1]) for i in range(ups))
    n_res = _count(hifi, r"resblocks\.(\d+)\.")
    per_level = n_res // ups if ups else 0
    res_kernels = tuple(int(_need(hifi, f"resblocks.{j}.convs1.0.weight", where).shape[-1]) for j in range(per_level))
    dilation_counts = [_count(hifi, rf"resblocks\.{j}\.convs1\.(\d+)\.") for j in range(per_level)]
    if ups != len(defaults.upsample_rates) or dilation_counts != [len(d) for d in defaults.resblock_dilation_sizes]:
        raise ConversionError(f"{where}: {ups} upsampling layers / dilations {dilation_counts} do not match the "
                              f"16 kHz HiFi-GAN ({len(defaults.upsample_rates)} layers)")
    cfg = dataclasses.replace(defaults, model_in_dim=int(conv_pre.shape[1]),
                              upsample_initial_channel=int(conv_pre.shape[0]), upsample_kernel_sizes=kernels,
                              resblock_kernel_sizes=res_kernels)
    state = {re.sub(r"^ups\.", "upsampler.", k): v for k, v in hifi.items()}
    _check_all_placed(hifi, state, where)
    from models.audio import build_vocoder
    _load_strict(build_vocoder(cfg), state, where.rstrip("."), ignore_missing=("mean", "scale"))
    return cfg, state


# ---- derived constants -----------------------------------------------------------------------------

STFT_BUFFERS = ("stft_fn.forward_basis", "stft_fn.inverse_basis", "mel_basis")


def tacotron_buffer(name: str, spec: MelSpec = AUDIOLDM) -> torch.Tensor:
    """One of TacotronSTFT's buffers as AudioLDM builds them: the windowed Fourier basis (real rows, then
    imaginary), its scaled pseudo-inverse, or the Slaney mel filterbank."""
    if name == "mel_basis":
        return mel_basis(spec)
    n, cut = spec.n_fft, spec.n_fft // 2 + 1
    fourier = np.fft.fft(np.eye(n))
    basis = np.vstack([np.real(fourier[:cut]), np.imag(fourier[:cut])])
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(spec.win_length) / spec.win_length)
    window = np.pad(window, ((n - spec.win_length) // 2, (n - spec.win_length + 1) // 2))
    if name == "stft_fn.forward_basis":
        return torch.tensor(basis[:, None, :] * window, dtype=torch.float32)
    return torch.tensor(np.linalg.pinv(n / spec.hop_length * basis).T[:, None, :] * window, dtype=torch.float32)


def _compare(out: Conversion, name: str, got: torch.Tensor, expected: torch.Tensor, atol: float = 1e-4) -> None:
    if tuple(got.shape) != tuple(expected.shape):
        out.mismatches.append(f"{name}: shape {tuple(got.shape)}, codiray computes {tuple(expected.shape)}")
    elif not torch.allclose(got.float(), expected.float(), atol=atol, rtol=1e-4):
        diff = (got.float() - expected.float()).abs().max().item()
        out.mismatches.append(f"{name}: differs from codiray's value by up to {diff:.3g}")
    else:
        out.derived_ok.append(name)


# ---- Optimus -----------------------------------------------------------------------------------------

def optimus_from_codi(enc: Mapping[str, torch.Tensor], dec: Mapping[str, torch.Tensor], out: Conversion,
                      base: OptimusConfig) -> tuple[OptimusConfig, dict]:
    word = _need(enc, "embeddings.word_embeddings.weight", "optimus.encoder.")
    hidden = int(word.shape[1])
    bert = BertConfigLite(
        vocab_size=int(word.shape[0]), hidden_size=hidden,
        num_hidden_layers=_count(enc, r"encoder\.layer\.(\d+)\."),
        num_attention_heads=_heads(hidden, base.bert.hidden_size, base.bert.num_attention_heads),
        intermediate_size=int(_need(enc, "encoder.layer.0.intermediate.dense.weight", "optimus.encoder.").shape[0]),
        max_position_embeddings=int(_need(enc, "embeddings.position_embeddings.weight", "optimus.encoder.").shape[0]))
    latent = int(_need(enc, "linear.weight", "optimus.encoder.").shape[0]) // 2
    wte = _need(dec, "transformer.wte.weight", "optimus.decoder.")
    n_embd = int(wte.shape[1])
    gpt2 = GPT2ConfigLite(vocab_size=int(wte.shape[0]), n_embd=n_embd, n_layer=_count(dec, r"transformer\.h\.(\d+)\."),
                          n_head=_heads(n_embd, base.gpt2.n_embd, base.gpt2.n_head),
                          n_positions=int(_need(dec, "transformer.wpe.weight", "optimus.decoder.").shape[0]))
    cfg = dataclasses.replace(base, bert=bert, gpt2=gpt2, latent_size=latent)
    state, skip_enc, skip_dec = {}, set(), set()
    origin = out.origin
    for k, v in enc.items():
        if k.endswith(("position_ids", "token_type_ids")):
            skip_enc.add(k)
            if k.endswith("position_ids"):
                _compare(out, "optimus.encoder." + k, v, torch.arange(v.shape[-1]).expand_as(v))
        else:
            target = "text.encoder.linear.weight" if k == "linear.weight" else "text.encoder.bert." + k
            state[target], origin[target] = v, "optimus.encoder." + k
    n_ctx = gpt2.n_positions
    for k, v in dec.items():
        if re.fullmatch(r"transformer\.h\.\d+\.attn\.(bias|masked_bias)", k):
            skip_dec.add(k)
            expected = (torch.tril(torch.ones(n_ctx, n_ctx)).view(1, 1, n_ctx, n_ctx) if k.endswith(".bias")
                        else torch.tensor(-1e4))
            _compare(out, "optimus.decoder." + k, v, expected.to(v.dtype))
        elif k == "lm_head.weight":
            skip_dec.add(k)
            _compare(out, "optimus.decoder.lm_head.weight (tied to wte)", v, wte)
        else:
            target = ("text.decoder." + k.split(".", 1)[1] if k in ("transformer.linear.weight",
                                                                     "transformer.linear_emb.weight")
                      else "text.decoder.gpt2." + k)
            state[target], origin[target] = v, "optimus.decoder." + k
    _check_all_placed(enc, state, "optimus.encoder.", skip_enc)
    _check_all_placed(dec, state, "optimus.decoder.", skip_dec)
    return cfg, state


# ---- CLIP / CLAP -------------------------------------------------------------------------------------

def clip_config_from_hf(clip: Mapping[str, torch.Tensor], base: ClipConfig) -> ClipConfig:
    w = "clip.model."
    tok = _need(clip, "text_model.embeddings.token_embedding.weight", w)
    patch = _need(clip, "vision_model.embeddings.patch_embedding.weight", w)
    positions = int(_need(clip, "vision_model.embeddings.position_embedding.weight", w).shape[0])
    th, vh = int(tok.shape[1]), int(patch.shape[0])
    return dataclasses.replace(
        base, text_hidden_size=th, text_layers=_count(clip, r"text_model\.encoder\.layers\.(\d+)\."),
        text_heads=_heads(th, base.text_hidden_size, base.text_heads),
        text_intermediate_size=int(_need(clip, "text_model.encoder.layers.0.mlp.fc1.weight", w).shape[0]),
        vocab_size=int(tok.shape[0]),
        max_position_embeddings=int(_need(clip, "text_model.embeddings.position_embedding.weight", w).shape[0]),
        vision_hidden_size=vh, vision_layers=_count(clip, r"vision_model\.encoder\.layers\.(\d+)\."),
        vision_heads=_heads(vh, base.vision_hidden_size, base.vision_heads),
        vision_intermediate_size=int(_need(clip, "vision_model.encoder.layers.0.mlp.fc1.weight", w).shape[0]),
        patch_size=int(patch.shape[-1]), image_size=int(round(math.sqrt(positions - 1))) * int(patch.shape[-1]),
        projection_dim=int(_need(clip, "text_projection.weight", w).shape[0]), pretrained=None)


def clap_config_from_hf(clap: Mapping[str, torch.Tensor], base: ClapConfig) -> ClapConfig:
    w, enc = "clap.model.", "audio_model.audio_encoder."
    embed = int(_need(clap, enc + "patch_embed.proj.weight", w).shape[0])
    stages = _count(clap, r"audio_model\.audio_encoder\.layers\.(\d+)\.")
    depths = tuple(_count(clap, rf"audio_model\.audio_encoder\.layers\.{i}\.blocks\.(\d+)\.") for i in range(stages))
    table = [_need(clap, f"{enc}layers.{i}.blocks.0.attention.self.relative_position_bias_table", w)
             for i in range(stages)]
    window = (int(round(math.sqrt(table[0].shape[0]))) + 1) // 2
    return dataclasses.replace(
        base, patch_embeds_hidden_size=embed, depths=depths, num_attention_heads=tuple(int(t.shape[1]) for t in table),
        window_size=window, num_mel_bins=int(_need(clap, enc + "batch_norm.weight", w).shape[0]),
        projection_dim=int(_need(clap, "audio_projection.linear2.weight", w).shape[0]), pretrained=None)


def _library_part(src: Mapping[str, torch.Tensor], target: str, out: Conversion, where: str) -> dict:
    state, skip = {}, set()
    for k, v in src.items():
        if k.endswith("position_ids"):
            skip.add(k)
            _compare(out, where + k, v, torch.arange(v.shape[-1]).expand_as(v))
        else:
            state[f"{target}.{k}"] = v
            out.origin[f"{target}.{k}"] = where + k
    _check_all_placed(src, state, where, skip)
    return state


# CoDi's temporal attention in the CLIP vision tower (models/encoders/clip_temporal.py)
TEMPORAL_KEY = re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.temporal_self_attn\.(.+)$")
TEMPORAL_UNUSED = {"temporal_attn.pos_embeds": "frame-position embedding, added only when a frame rate is "
                                               "passed (CoDi's video prompt path never passes one)",
                   "temporal_attn.frame_rate_embeds": "frame-rate embedding, never read by the released forward"}


def clip_temporal_from_codi(temporal: Mapping[str, torch.Tensor], out: Conversion) -> dict[str, torch.Tensor]:
    """``clip.model.vision_model.encoder.layers.i.temporal_self_attn.*`` -> ``clip.temporal.i.*``."""
    state = {}
    for k, v in temporal.items():
        m = TEMPORAL_KEY.match(k)
        if m is None:
            raise ConversionError(f"clip.model.{k}: temporal attention outside the vision tower's layers")
        if m.group(2) in TEMPORAL_UNUSED:
            out.ignored["clip.model." + k] = TEMPORAL_UNUSED[m.group(2)]
            continue
        target = f"clip.temporal.{m.group(1)}.{m.group(2)}"
        state[target], out.origin[target] = v, "clip.model." + k
    return state


# ---- LAION-CLAP (HTSAT) -> transformers ClapAudioModelWithProjection ------------------------------------

def clap_from_laion(clap: Mapping[str, torch.Tensor], out: Conversion, where: str = "clap.model."
                    ) -> dict[str, torch.Tensor]:
    """LAION-CLAP keys -> transformers ``ClapAudioModelWithProjection`` keys (``models.encoders.clap_laion``);
    tensors CoDi's audio embedding never reads go to ``out.ignored`` with the reason; any other tensor
    that cannot be placed is an error naming it."""
    from models.encoders.clap_laion import laion_to_hf

    hf, origin, ignored, unplaced = laion_to_hf(clap)
    if unplaced:
        raise ConversionError(f"{where}{unplaced[0]}: LAION-CLAP tensor with no place in ClapAudioModelWithProjection "
                              f"and not on the list of tensors CoDi's audio conditioning ignores ({len(unplaced)} such)")
    out.ignored.update({where + k: why for k, why in ignored.items()})
    out.origin.update({f"{where}{k}": where + v for k, v in origin.items()})
    return hf


# ---- the whole CoDi checkpoint -----------------------------------------------------------------------

def convert_codi_codecs(state: Mapping[str, torch.Tensor], base: CodecsConfig | None = None
                        ) -> tuple[Conversion, dict[str, torch.Tensor]]:
    """Place every ``autokl./audioldm./optimus./clip.model./clap.model.`` tensor of a CoDi checkpoint.

    Returns the conversion (config inferred from shapes on top of ``base``: tokenizer paths, scales and
    flags come from ``base``; a piece the checkpoint does not carry is absent — ``None`` — in the config,
    never a randomly initialised stand-in) and the tensors outside these prefixes, for the caller to place."""
    base = base or CodecsConfig()
    defaults = CodecsConfig()
    b = {name: getattr(base, name) or getattr(defaults, name) for name in PIECES}   # per-piece bases
    cfg = only()
    cfg.sample_rate = base.sample_rate
    out = Conversion(config=cfg, state={})
    rest = {k: v for k, v in state.items() if not k.startswith(PREFIXES)}

    autokl = _sub(state, "autokl.")
    if autokl:
        cfg.image, vae = kl_vae_from_ldm(autokl, "autokl.", scale=b["image"].scale, trainable=b["image"].trainable)
        out.state.update({f"image.vae.{k}": v for k, v in vae.items()})

    audioldm = _sub(state, "audioldm.")
    if audioldm:
        known = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.", "vocoder.", "fn_STFT.")
        stray = sorted(k for k in audioldm if not k.startswith(known))
        if stray:
            raise ConversionError(f"audioldm.{stray[0]}: cannot place this tensor ({len(stray)} unplaced)")
        ldm = {k: v for k, v in audioldm.items() if not k.startswith(("vocoder.", "fn_STFT."))}
        vae_cfg, vae = kl_vae_from_ldm(ldm, "audioldm.", scale=b["audio"].vae.scale,
                                       trainable=b["audio"].vae.trainable)
        voc_cfg, voc = vocoder_from_hifigan(_sub(audioldm, "vocoder."), "audioldm.vocoder.",
                                           dataclasses.replace(b["audio"].vocoder, pretrained=None))
        cfg.audio = AudioConfig(vae=vae_cfg, vocoder=voc_cfg, frames=b["audio"].frames, peak=b["audio"].peak)
        out.state.update({f"audio.vae.{k}": v for k, v in vae.items()})
        out.state.update({f"audio.vocoder.{k}": v for k, v in voc.items()})
        for k, v in _sub(audioldm, "fn_STFT.").items():
            if k not in STFT_BUFFERS:
                raise ConversionError(f"audioldm.fn_STFT.{k}: unknown STFT buffer (expected one of {STFT_BUFFERS})")
            _compare(out, f"audioldm.fn_STFT.{k}", v, tacotron_buffer(k), atol=1e-3)

    enc, dec = _sub(state, "optimus.encoder."), _sub(state, "optimus.decoder.")
    stray = sorted(k for k in state if k.startswith("optimus.") and not k.startswith(("optimus.encoder.",
                                                                                       "optimus.decoder.")))
    if stray:
        raise ConversionError(f"{stray[0]}: cannot place this tensor ({len(stray)} unplaced under optimus.)")
    if enc or dec:
        cfg.text, text_state = optimus_from_codi(enc, dec, out, b["text"])
        out.state.update(text_state)

    clip = _sub(state, "clip.model.")
    temporal = {k: v for k, v in clip.items() if ".temporal_self_attn." in k}
    clip = {k: v for k, v in clip.items() if k not in temporal}
    if temporal and not clip:
        raise ConversionError(f"clip.model.{min(temporal)}: temporal attention without the CLIP model it sits in")
    if clip:
        cfg.clip = dataclasses.replace(clip_config_from_hf(clip, b["clip"]), temporal=bool(temporal))
        out.state.update(_library_part(clip, "clip.model", out, "clip.model."))
        out.state.update(clip_temporal_from_codi(temporal, out))
    clap = _sub(state, "clap.model.")
    if any(k.startswith("audio_branch.") for k in clap):      # LAION-CLAP's own layout, as CoDi releases it
        hf = clap_from_laion(clap, out)
        cfg.clap = clap_config_from_hf(hf, b["clap"])
        out.state.update({f"clap.model.{k}": v for k, v in hf.items()})
    elif clap:                                                # transformers' layout
        cfg.clap = clap_config_from_hf(clap, b["clap"])
        out.state.update(_library_part(clap, "clap.model", out, "clap.model."))
    _check_against_codecs(out, {"autokl.": "image.", "audioldm.": "audio.", "optimus.": "text.",
                                "clip.model.": "clip.", "clap.model.": "clap."}, state)
    return out, rest


# Model tensors a checkpoint need not carry: HiFi-GAN input stats (unused by AudioLDM), GPT-2's head
# (tied to wte), constant index buffers.
OPTIONAL = ("vocoder.mean", "vocoder.scale", "gpt2.lm_head.weight", "position_ids", "token_type_ids")


def _check_against_codecs(out: Conversion, pieces: dict[str, str], source: Mapping[str, torch.Tensor]) -> None:
    """Every converted tensor must name a Codecs tensor of the same shape, and every tensor of a piece the
    checkpoint carries must be provided (checked on a weightless ``meta`` build of the inferred config)."""
    from models.codecs import Codecs

    with torch.device("meta"):
        own = {k: tuple(v.shape) for k, v in Codecs(out.config).state_dict().items()}
    for k, v in out.state.items():
        name = out.origin.get(k, k)
        if k not in own:
            raise ConversionError(f"{name}: cannot place this tensor (no {k} in the inferred model)")
        if own[k] != tuple(v.shape):
            raise ConversionError(f"{name}: shape {tuple(v.shape)}, the inferred model expects {own[k]} at {k}")
    present = {target for prefix, target in pieces.items() if any(k.startswith(prefix) for k in source)}
    missing = sorted(k for k in own if k.startswith(tuple(present)) and k not in out.state
                     and not k.endswith(OPTIONAL))
    if missing:
        raise ConversionError(f"checkpoint has no tensor for {missing[0]} ({len(missing)} model tensors missing)")


def load_into(codecs, conversion: Conversion) -> None:
    """Load a conversion into a ``Codecs`` built from ``conversion.config`` (whose pieces are exactly those
    the checkpoint carries); a converted tensor with no place is an error."""
    own = codecs.state_dict()
    for k, v in conversion.state.items():
        if k not in own:
            raise ConversionError(f"converted tensor {k} has no place in Codecs")
        if tuple(own[k].shape) != tuple(v.shape):
            raise ConversionError(f"{k}: shape {tuple(v.shape)}, Codecs expects {tuple(own[k].shape)}")
    codecs.load_state_dict(conversion.state, strict=False)


# ---- `convert sd --vae`: a diffusers folder or an LDM checkpoint ---------------------------------------

def read_state(path: str | Path) -> dict[str, torch.Tensor]:
    """A safetensors file or a torch checkpoint (``weights_only``; a ``state_dict`` entry is unwrapped)."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: checkpoint file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(path))
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any reader failure is one line naming the file
        raise ConversionError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from None
    data = data.get("state_dict", data) if isinstance(data, dict) else data
    if not isinstance(data, dict):
        raise ConversionError(f"{path}: expected a mapping of tensors, got {type(data).__name__}")
    return data


def image_vae_from_path(path: str | Path, base: KLVAEConfig = KLVAEConfig()) -> tuple[KLVAEConfig, dict]:
    """``--vae``: a diffusers ``AutoencoderKL`` folder, or an LDM file (``first_stage_model.*``, ``vae.*``,
    ``autokl.*`` or bare encoder/decoder keys) -> (config, diffusers state dict)."""
    path = Path(path)
    if path.is_dir():
        from diffusers import AutoencoderKL
        vae = AutoencoderKL.from_pretrained(str(path))
        c = vae.config
        cfg = dataclasses.replace(base, in_channels=c.in_channels, latent_channels=c.latent_channels,
                                  block_out_channels=tuple(c.block_out_channels), layers_per_block=c.layers_per_block,
                                  norm_num_groups=c.norm_num_groups, pretrained=None)
        return cfg, vae.state_dict()
    state = read_state(path)
    for prefix in ("first_stage_model.", "vae.", "autokl."):
        if any(k.startswith(prefix) for k in state):
            state = _sub(state, prefix)
            break
    return kl_vae_from_ldm(state, f"{path}: ", scale=base.scale, trainable=base.trainable)


def image_only_codecs(path: str | Path, base: KLVAEConfig = KLVAEConfig()):
    """``convert sd --vae PATH``: a ``Codecs`` holding only the image VAE (every other piece absent)."""
    from models.codecs import Codecs

    cfg, state = image_vae_from_path(path, base)
    codecs = Codecs(only(image=cfg))
    load_into(codecs, Conversion(config=codecs.cfg, state={f"image.vae.{k}": v for k, v in state.items()}))
    missing = sorted(set(codecs.state_dict()) - {f"image.vae.{k}" for k in state})
    if missing:
        raise ConversionError(f"{path}: no tensor for {missing[0]} ({len(missing)} VAE tensors missing)")
    return codecs
