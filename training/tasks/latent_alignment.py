"""Latent alignment (CoDi §3.4, Eq. 3): joint generation of two paired modalities with the UNets frozen.

    L = Σ_{A ∈ pair} E ‖ε − ε_{θ_c}(z_t^A, V_B(z_t^B), t, C(y))‖²  +  λ · InfoNCE(V_A(z_t^A), V_B(z_t^B))

Only the environment encoders V (``connecters_out``) and the cross-modal attention sublayers
(``input_block_connecters_in``, ``output_block_connecters_in``) of the phase's ``train`` modalities
learn; both modalities share t per example ("z_t^A and z_t^B at any time step can be sampled with
closed form", §3.4). CoDi's three phases (§3.4, Fig. 2(b)(3)) are ``PHASES``: text+image on
image–text pairs; audio (text's V/connectors frozen) on audio–text; video (audio's frozen) on
audio–video.

Task shape: trainable = ``JointDenoiser`` (a ``CoDi`` whose forward also returns the V outputs,
``requires_grad`` set by ``set_alignment_trainable``); frozen = ``Codecs``; ``batch_inputs`` encodes
both modalities, embeds the prompt, draws one t and an ε per modality; ``loss`` as above.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional

import torch
from torch import Tensor, nn

from models.codecs import Codecs
from models.codi import CoDi, CoDiConfig
from models.codi.model import JointContext, joint_env, unet_for
from models.diffusion.config import build_schedule, conditioning_time
from models.diffusion.losses import diffusion_loss
from models.diffusion.schedules import sample_timesteps
from training.objectives import diffusion_draw, info_nce
from training.tasks.base import frozen, save_codi_folder, strip_prefix, weighted_mean
from training.tasks.ldm import ConditionConfig, condition_inputs, encode_target

ALIGNMENT_MODULES = ("connecters_out.", "input_block_connecters_in.", "output_block_connecters_in.")


@dataclass
class AlignmentPhase:
    """Two modalities generated jointly from one shard set; ``train`` names whose V + connectors learn."""

    name: str
    modalities: tuple[str, str]
    train: tuple[str, ...]
    shard_set: str

    def __post_init__(self):
        self.modalities, self.train = tuple(self.modalities), tuple(self.train)
        if len(set(self.modalities)) != 2 or {unet_for(m) for m in self.modalities} == {"image"}:
            raise ValueError(f"phase {self.name}: needs two modalities on two different UNets, got {self.modalities}")
        if not self.train or not set(self.train) <= set(self.modalities):
            raise ValueError(f"phase {self.name}: train must name some of {self.modalities}, got {self.train}")


PHASES = {   # CoDi §3.4: (1) image+text, (2) audio with text frozen, (3) video with audio frozen
    "text_image": AlignmentPhase("text_image", ("image", "text"), ("image", "text"), "laion"),
    "audio_text": AlignmentPhase("audio_text", ("audio", "text"), ("audio",), "audiocaps"),
    "video_audio": AlignmentPhase("video_audio", ("video", "audio"), ("video",), "webvid"),
}


@dataclass
class LatentAlignmentObjective:
    phase: AlignmentPhase = field(default_factory=lambda: PHASES["text_image"])
    condition: ConditionConfig = field(default_factory=ConditionConfig)
    contrastive_weight: float = 1.0         # λ
    contrastive_temperature: float = 0.07   # fixed τ of the V–V InfoNCE (CoDi gives none; CLIP's initial value)
    joint_context: JointContext = "paper"


def alignment_parameter_names(codi: CoDi, modalities) -> list[str]:
    """Names of the V and cross-modal attention parameters of the UNets serving ``modalities``."""
    prefixes = {f"unets.{unet_for(m)}." for m in modalities}
    names = []
    for name, _ in codi.named_parameters():
        for prefix in prefixes:
            if name.startswith(prefix) and name[len(prefix):].startswith(ALIGNMENT_MODULES):
                names.append(name)
    return names


def set_alignment_trainable(codi: CoDi, modalities) -> dict[str, nn.Parameter]:
    """Freeze everything, then unfreeze V and the connectors of ``modalities``' UNets; returns those parameters."""
    for unet in {unet_for(m) for m in modalities}:
        if unet not in codi.unets or not codi.unets[unet].has_connectors():
            raise ValueError(f"the {unet} UNet is missing or has no V / connectors to align")
    names = set(alignment_parameter_names(codi, modalities))
    params = {}
    for name, p in codi.named_parameters():
        p.requires_grad_(name in names)
        if name in names:
            params[name] = p
    return params


class JointDenoiser(nn.Module):
    """``CoDi``'s joint generation (Eq. 3) returning the ε of each modality AND the V outputs it attended with."""

    def __init__(self, codi: CoDi, joint_context: JointContext = "paper"):
        super().__init__()
        self.codi, self.joint_context = codi, joint_context

    def forward(self, latents: dict[str, Tensor], t: Tensor, context: Tensor) -> tuple[dict, dict]:
        unets = {m: self.codi.unet(m) for m in latents}
        emb = {m: unets[m].embed_time(t, z.dtype) for m, z in latents.items()}
        env = {m: unets[m].environment(z, emb[m], context) for m, z in latents.items()}
        eps = {m: unets[m](z, emb[m], context, joint_env(env, m, self.joint_context)) for m, z in latents.items()}
        return eps, env


class LatentAlignmentTask:
    """The ``latent_alignment`` stage kind, one phase per task (phases run as consecutive stages)."""

    def __init__(self, objective: LatentAlignmentObjective, codi: Callable[[], CoDi], codecs: Callable[[], Codecs]):
        self.objective, self.make_codi, self.make_codecs = objective, codi, codecs
        self.diffusion = None

    @property
    def required(self) -> list[str]:
        return sorted({*self.objective.phase.modalities, *self.objective.condition.weights})

    def build_trainable(self) -> nn.Module:
        codi = self.make_codi()
        set_alignment_trainable(codi, self.objective.phase.train)
        self.codi_config: CoDiConfig = codi.config
        self.diffusion, self.schedule = codi.config.diffusion, build_schedule(codi.config.diffusion)
        return JointDenoiser(codi, self.objective.joint_context)

    def build_frozen(self) -> Optional[nn.Module]:
        return frozen(self.make_codecs())

    def batch_inputs(self, batch: Mapping, codecs: Codecs, generator: torch.Generator,
                     device: torch.device) -> dict[str, Tensor]:
        if self.diffusion is None:
            raise RuntimeError("build_trainable() first: the diffusion process comes from the CoDi model")
        phase = self.objective.phase
        inputs = condition_inputs(codecs, batch, self.objective.condition, phase.shard_set, generator, device)
        weight = torch.ones(inputs["context"].shape[0], device=device)
        t = None
        for m in phase.modalities:
            x0, present = encode_target(codecs, batch, m, phase.shard_set, device)
            if t is None:
                t = sample_timesteps(self.schedule, x0.shape[0], generator=generator).to(device)
            draw = diffusion_draw(x0, self.diffusion, self.schedule, generator, t=t)
            inputs.update({f"{m}.{k}": draw[k] for k in ("x0", "eps", "z_t")})
            inputs.update({"t": t, "alpha": draw["alpha"], "sigma": draw["sigma"]})
            weight = weight * present
        return {**inputs, "weight": weight}

    def loss_terms(self, module, inputs: Mapping[str, Tensor], dtype: torch.dtype) -> dict[str, Tensor]:
        """Each modality's weighted ε loss and the V–V contrastive term (before λ)."""
        phase, o = self.objective.phase, self.objective
        latents = {m: inputs[f"{m}.z_t"].to(dtype) for m in phase.modalities}
        eps, env = module(latents, conditioning_time(self.diffusion, inputs["t"]), inputs["context"].to(dtype))
        weight = inputs["weight"]
        terms = {m: weighted_mean(diffusion_loss(eps[m], inputs[f"{m}.x0"], inputs[f"{m}.eps"], inputs["alpha"],
                                                 inputs["sigma"], self.diffusion.prediction,
                                                 self.diffusion.min_snr_gamma), weight)
                 for m in phase.modalities}
        a, b = (env[m].flatten(1)[weight > 0] for m in phase.modalities)
        scale = torch.tensor(math.log(1.0 / o.contrastive_temperature), device=a.device)
        terms["contrastive"] = info_nce(a, b, scale) if a.shape[0] > 1 else a.sum() * 0.0
        return terms

    def loss(self, module, inputs: Mapping[str, Tensor], dtype: torch.dtype = torch.float32) -> Tensor:
        terms = self.loss_terms(module, inputs, dtype)
        contrastive = terms.pop("contrastive")
        return sum(terms.values()) + self.objective.contrastive_weight * contrastive

    def export_state(self, trainable: dict[str, Tensor], frozen_part=None) -> dict[str, Tensor]:
        return strip_prefix(trainable, "codi.")

    def save_pretrained(self, directory: Path, state: dict[str, Tensor], weights_name: str) -> None:
        save_codi_folder(directory, state, self.codi_config, weights_name)
