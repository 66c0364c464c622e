"""CoDi's CLAP as released: LAION-CLAP's own key layout (HTSAT ``audio_branch.*``, ``audio_projection.{0,2}``,
plus the text tower and training heads CoDi does not use) converts onto transformers'
``ClapAudioModelWithProjection`` and gives the same audio embeddings.

The LAION-layout checkpoint is made here from a tiny transformers model by the INVERSE of transformers'
own LAION->HF rename table (``convert_clap_original_pytorch_to_hf.py``: text_branch->text_model,
audio_branch->audio_model.audio_encoder, attn->attention.self, self.proj->output.dense, mlp.fc1->
intermediate.dense, mlp.fc2->output.dense, norm1->layernorm_before, norm2->layernorm_after, bn0->batch_norm,
qkv split into query/key/value, _projection.0->linear1 / _projection.2->linear2), written independently
of the converter."""

from __future__ import annotations

import re

import pytest
import torch

from models.codecs import Codecs
from models.codecs_config import only
from models.codecs_convert import ConversionError, convert_codi_codecs, load_into

UPSTREAM_TABLE = {  # transformers' KEYS_TO_MODIFY_MAPPING (LAION name -> HF name), audio-relevant entries
    "audio_branch": "audio_model.audio_encoder", "attn": "attention.self", "self.proj": "output.dense",
    "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense", "norm1": "layernorm_before",
    "norm2": "layernorm_after", "bn0": "batch_norm"}


def to_laion(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF ClapAudioModelWithProjection state -> LAION-CLAP names (inverse of the upstream table)."""
    out, qkv = {}, {}
    for k, v in hf.items():
        if k.startswith("audio_projection."):
            k = k.replace("linear1", "0").replace("linear2", "2")
            out[k] = v
            continue
        k = k.replace("audio_model.audio_encoder.", "audio_branch.")
        if m := re.match(r"(.+)\.attention\.self\.(query|key|value)\.(weight|bias)$", k):
            qkv.setdefault((m[1], m[3]), {})[m[2]] = v
            continue
        # upstream applied attn->attention.self then self.proj->output.dense: attn.proj became attention.output.dense
        k = k.replace("attention.output.dense", "attn.proj").replace("attention.self.", "attn.")
        k = k.replace("intermediate.dense", "mlp.fc1").replace(".output.dense", ".mlp.fc2")
        k = k.replace("layernorm_before", "norm1").replace("layernorm_after", "norm2").replace("batch_norm", "bn0")
        out[k] = v
    for (block, kind), parts in qkv.items():
        out[f"{block}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    return out


def laion_extras(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What a LAION-CLAP checkpoint carries besides the audio path (values irrelevant to the embedding)."""
    blocks = sorted({m[1] for k in hf if (m := re.match(r"audio_model\.audio_encoder\.(layers\.\d+\.blocks\.\d+)\.", k))})
    extras = {f"audio_branch.{b}.attn_mask": torch.randn(4, 16, 16) for b in blocks}
    extras.update({"audio_branch.spectrogram_extractor.stft.conv_real.weight": torch.randn(513, 1, 1024),
                   "audio_branch.spectrogram_extractor.stft.conv_imag.weight": torch.randn(513, 1, 1024),
                   "audio_branch.logmel_extractor.melW": torch.randn(513, 16),
                   "audio_branch.tscam_conv.weight": torch.randn(527, 16, 2, 3),
                   "audio_branch.tscam_conv.bias": torch.randn(527), "audio_branch.head.weight": torch.randn(527, 527),
                   "audio_branch.head.bias": torch.randn(527),
                   "text_branch.embeddings.word_embeddings.weight": torch.randn(50, 8),
                   "text_branch.encoder.layer.0.attention.self.query.weight": torch.randn(8, 8),
                   "text_projection.0.weight": torch.randn(768, 8), "text_projection.2.weight": torch.randn(768, 768),
                   "audio_transform.sequential.0.weight": torch.randn(768, 768),
                   "text_transform.sequential.3.bias": torch.randn(768),
                   "logit_scale_a": torch.tensor(2.0), "logit_scale_t": torch.tensor(2.0)})
    return extras


@pytest.fixture
def source(debug_cfg):
    torch.manual_seed(0)
    codecs = Codecs(only(clap=debug_cfg.clap))
    with torch.no_grad():                       # every tensor off its init, so a swapped name shows
        for p in codecs.parameters():
            p.add_(0.1 * torch.randn_like(p))
        bn = codecs.clap.model.audio_model.audio_encoder.batch_norm
        bn.running_mean.normal_(0, 0.5), bn.running_var.uniform_(0.5, 2.0)
    return codecs


def test_laion_clap_layout_converts_to_identical_audio_embeddings(source, debug_cfg):
    hf = source.clap.model.state_dict()
    laion = {**to_laion(hf), **laion_extras(hf)}
    assert any(k.endswith("attn.qkv.weight") for k in laion) and not any("audio_model" in k for k in laion)
    # the base config gives what shapes cannot tell (spec_size, clip length); every piece is named in it
    conversion, rest = convert_codi_codecs({"clap.model." + k: v for k, v in laion.items()}, debug_cfg)
    assert rest == {} and conversion.config.present() == ["clap"]
    assert conversion.config.clap.projection_dim == 768
    assert set(conversion.ignored) == {"clap.model." + k for k in laion_extras(hf)}
    assert all(conversion.ignored.values())                      # each with its reason
    codecs = Codecs(conversion.config)
    load_into(codecs, conversion)
    wav = torch.randn(2, 16000)
    with torch.no_grad():
        ours, theirs = codecs.condition("audio", wav), source.condition("audio", wav)
    assert ours.shape == (2, 1, 768)
    assert torch.equal(ours, theirs)


def test_laion_clap_tensors_with_no_place_are_refused_by_name(source):
    laion = {"clap.model." + k: v for k, v in to_laion(source.clap.model.state_dict()).items()}
    with pytest.raises(ConversionError, match=r"clap\.model\.audio_branch\.fusion_model\.w"):
        convert_codi_codecs({**laion, "clap.model.audio_branch.fusion_model.w": torch.zeros(2)})
    del laion["clap.model.audio_branch.layers.0.blocks.0.norm2.weight"]
    with pytest.raises(ConversionError, match="layernorm_after.weight"):
        convert_codi_codecs(laion)
