"""Latent alignment (CoDi §3.4): exactly the phase's V / connector weights train, the joint loss falls,
and the V–V contrastive term is CoDi's InfoNCE between the paired modalities' V outputs."""

from __future__ import annotations

import math

import pytest
import torch

from models.codi import CoDi
from training.objectives import info_nce
from training.tasks.latent_alignment import (PHASES, LatentAlignmentObjective, LatentAlignmentTask,
                                             alignment_parameter_names, set_alignment_trainable)
from training import recipes_codi as rc
from training.schedules import JOINT_VIDEO_AUDIO
from training.tasks.ldm import ConditionConfig

from objectives_helpers import (audiocaps_batch, debug_codecs, laion_batch, randomize, tiny_audio, tiny_codi,
                                tiny_image, tiny_text, webvid_batch, write_tokenizers)


@pytest.fixture(scope="module")
def codecs(tmp_path_factory):
    return debug_codecs(write_tokenizers(tmp_path_factory.mktemp("tokenizers")))



def make_codi(video: bool = False) -> CoDi:
    torch.manual_seed(0)
    return randomize(CoDi(tiny_codi(image=tiny_image(video=video), audio=tiny_audio(), text=tiny_text())), seed=3)


def test_trainable_names_are_exactly_v_and_connectors():
    codi = make_codi()
    params = set_alignment_trainable(codi, ("audio",))
    names = set(params)
    assert names and all(n.startswith("unets.audio.") for n in names)
    assert all(n.split(".")[2] in ("connecters_out", "input_block_connecters_in", "output_block_connecters_in")
               for n in names)
    # every audio V / connector parameter, nothing of the audio UNet's own blocks, nothing of the others
    expected = {n for n, _ in codi.named_parameters()
                if n.startswith("unets.audio.") and "connecters" in n}
    assert names == expected
    assert {n for n, p in codi.named_parameters() if p.requires_grad} == expected


def demo_video_audio_phase():
    """The demo's last phase, as its recipe builds it: audio's V / connectors train beside video's."""
    return rc.alignment("video_audio", train=JOINT_VIDEO_AUDIO).task.latent_alignment.phase


@pytest.mark.parametrize("phase,batch", [("text_image", laion_batch(4)), ("audio_text", audiocaps_batch(4)),
                                         ("video_audio", webvid_batch(4, frames=2, size=8)),
                                         ("video_audio+audio", webvid_batch(4, frames=2, size=8))])
def test_only_phase_weights_move_and_joint_loss_falls(codecs, phase, batch):
    phase = demo_video_audio_phase() if phase == "video_audio+audio" else PHASES[phase]
    task = LatentAlignmentTask(LatentAlignmentObjective(phase, ConditionConfig({"text": 1.0}, 0.1)),
                               codi=lambda: make_codi(video=phase.name == "video_audio"), codecs=lambda: codecs)
    module = task.build_trainable()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    inputs = task.batch_inputs(batch, codecs, torch.Generator().manual_seed(0), torch.device("cpu"))
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=2e-3, weight_decay=0.0)
    with torch.no_grad():
        first = task.loss_terms(module, inputs, torch.float32)
    losses = []
    for _ in range(20):
        loss = task.loss(module, inputs)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        last = task.loss_terms(module, inputs, torch.float32)
    moved = {k for k, v in module.state_dict().items() if not torch.equal(v, before[k])}
    expected = {f"codi.{n}" for n in alignment_parameter_names(module.codi, phase.train)}
    assert moved == expected                      # every V / connector weight of the trained UNets, nothing else
    frozen_unet = {"audio_text": "text", "video_audio": "audio"}.get(phase.name)
    if frozen_unet and frozen_unet not in phase.train:   # phase 2 keeps text's V / connectors, phase 3 audio's
        assert not any(k.startswith(f"codi.unets.{frozen_unet}.") for k in moved)
    assert losses[-1] < 0.9 * losses[0], losses             # the joint loss (Σ ε terms + λ·contrastive) falls
    assert last["contrastive"] < 0.9 * first["contrastive"]  # V outputs of the pairs align
    for m in phase.train:                            # and each trained modality denoises better
        assert last[m] < first[m], (m, first[m], last[m])


def test_contrastive_term_is_info_nce_of_v_outputs(codecs):
    task = LatentAlignmentTask(LatentAlignmentObjective(PHASES["text_image"], ConditionConfig({"text": 1.0}, 0.0),
                                                        contrastive_temperature=0.1),
                               codi=make_codi, codecs=lambda: codecs)
    module = task.build_trainable()
    inputs = task.batch_inputs(laion_batch(4), codecs, torch.Generator().manual_seed(1), torch.device("cpu"))
    with torch.no_grad():
        terms = task.loss_terms(module, inputs, torch.float32)
        t = inputs["t"].float()
        v = {m: module.codi.unet(m).environment(inputs[f"{m}.z_t"], module.codi.unet(m).embed_time(t, torch.float32),
                                                 inputs["context"]) for m in ("image", "text")}
        want = info_nce(v["image"].flatten(1), v["text"].flatten(1), torch.tensor(math.log(10.0)))
        # and the joint ε equals CoDi's own joint forward (the wrapper adds nothing but the V outputs)
        eps, _ = module({m: inputs[f"{m}.z_t"] for m in ("image", "text")}, t, inputs["context"])
        ref = module.codi({m: inputs[f"{m}.z_t"] for m in ("image", "text")}, t, inputs["context"])
    assert terms["contrastive"].item() == pytest.approx(want.item(), rel=1e-5)
    for m in ("image", "text"):
        torch.testing.assert_close(eps[m], ref[m])
    assert inputs["image.z_t"].shape[0] == inputs["text.z_t"].shape[0] == inputs["t"].shape[0] == 4
