"""Bridging alignment (CoDi §3.2): the InfoNCE equals its closed form; training the tiny CLAP against the
frozen CLIP text tower lifts audio→text top-1 retrieval from chance to ≥ 0.9; CLIP text never moves."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.encoders.clap import ClapEncoder
from training.objectives import info_nce, logit_scale, top1_retrieval
from training.tasks.bridging import BridgingObjective, BridgingTask

from objectives_helpers import CAPTIONS, audiocaps_batch, debug_codecs, debug_codecs_config, write_tokenizers



def closed_form_info_nce(a: np.ndarray, b: np.ndarray, scale: float) -> float:
    """½ (mean_i −log softmax_j(s·cos(a_i, b_j))_i + mean_j −log softmax_i(s·cos(a_i, b_j))_j), in numpy float64."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    logits = scale * a @ b.T

    def ce(rows):
        rows = rows - rows.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(rows).sum(axis=1)) - np.diag(rows)))

    return 0.5 * (ce(logits) + ce(logits.T))


def pretrain_until_retrieved(task, module, inputs, max_steps: int) -> tuple[tuple, tuple, int]:
    """CLIP pretraining (both towers) on one fixed batch until top-1 retrieval is perfect both ways (checked
    every 10 steps) or ``max_steps``: (before, after, steps taken), each a (data→text, text→data) pair."""
    def accuracy() -> tuple[float, float]:
        with torch.no_grad():
            data, text, _ = module(inputs["data"], inputs["ids"])
        return top1_retrieval(data, text), top1_retrieval(text, data)

    before = accuracy()
    opt = torch.optim.AdamW(module.parameters(), lr=3e-3, weight_decay=0.0)
    for step in range(max_steps):
        loss = task.loss(module, inputs)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 9 and min(accuracy()) == 1.0:
            break
    return before, accuracy(), step + 1


def test_info_nce_equals_closed_form():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    for s in (0.0, math.log(1 / 0.07), 2.5):
        got = info_nce(torch.tensor(a), torch.tensor(b), torch.tensor(s)).item()
        assert got == pytest.approx(closed_form_info_nce(a, b, math.exp(s)), rel=1e-5)
    # CLIP's clamp: e^s never exceeds 100, and s above log 100 gets no gradient
    s = torch.tensor(10.0, requires_grad=True)
    got = info_nce(torch.tensor(a), torch.tensor(b), s)
    assert got.item() == pytest.approx(closed_form_info_nce(a, b, 100.0), rel=1e-5)
    got.backward()
    assert s.grad.item() == 0.0 and logit_scale(torch.tensor(10.0)).item() == pytest.approx(100.0)
    # perfectly paired, well separated embeddings: the loss tends to 0
    eye = np.eye(6)
    assert info_nce(torch.tensor(eye), torch.tensor(eye), torch.tensor(math.log(100))).item() < 1e-3


def test_training_clap_lifts_retrieval_from_chance(tmp_path):
    tokenizers = write_tokenizers(tmp_path)
    codecs = debug_codecs(tokenizers)            # frozen: its CLIP text tower gives the targets
    clap_cfg = debug_codecs_config(tokenizers).clap
    torch.manual_seed(1)
    task = BridgingTask(BridgingObjective("audio", shard_set="audiocaps"),
                        encoder=lambda: ClapEncoder(clap_cfg, input_rate=16000), text=lambda: codecs)
    module = task.build_trainable()
    text_before = {k: v.clone() for k, v in codecs.clip.state_dict().items()}
    batch = audiocaps_batch(n=len(CAPTIONS))      # 8 tones, each paired with its own caption
    inputs = task.batch_inputs(batch, task.build_frozen(), torch.Generator().manual_seed(0), torch.device("cpu"))

    def accuracy() -> float:
        with torch.no_grad():
            embed, _ = module(inputs["data"])
        return top1_retrieval(embed, inputs["text"])

    before = accuracy()
    opt = torch.optim.AdamW(module.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for step in range(150):
        loss = task.loss(module, inputs)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % 10 == 9 and accuracy() == 1.0:
            break
    after = accuracy()
    print(f"audio→text top-1: {before:.3f} before, {after:.3f} after {step + 1} steps")
    assert before <= 3 / len(CAPTIONS), before
    assert after >= 0.9, (before, after, losses[::10])
    assert losses[-1] < losses[0]
    assert module.log_scale.grad is not None                  # the temperature is learned
    for k, v in codecs.clip.state_dict().items():             # the bridge (CLIP text) is frozen
        assert torch.equal(v, text_before[k]), k


def test_training_video_temporal_attention_lifts_retrieval_from_chance(tmp_path):
    """The video side: CoDi's temporal attention in CLIP's vision tower (frames averaged after it, as
    ``Codecs`` conditions on video) aligned to the frozen CLIP text tower on 8 clips of distinct colours
    and motions. Only the temporal blocks move (image conditions stay as they were) and only they are
    exported; codecs without temporal blocks are refused in one line."""
    import dataclasses

    from common.errors import UsageError
    from models.encoders.clip import ClipEncoder

    tokenizers = write_tokenizers(tmp_path)
    codecs = debug_codecs(tokenizers)
    clip_cfg = dataclasses.replace(debug_codecs_config(tokenizers).clip, temporal=True)
    torch.manual_seed(2)
    task = BridgingTask(BridgingObjective("video", shard_set="webvid"), encoder=lambda: ClipEncoder(clip_cfg),
                        text=lambda: codecs)
    module = task.build_trainable()
    before_state = {k: v.clone() for k, v in module.state_dict().items()}
    rng = np.random.default_rng(0)
    frames = np.zeros((len(CAPTIONS), 2, 32, 32, 3), np.uint8)
    for i in range(len(CAPTIONS)):
        frames[i] = rng.integers(0, 256, 3, dtype=np.uint8)           # one colour per clip ...
        frames[i, 1, (4 * i) % 32:(4 * i) % 32 + 8] = 255 - frames[i, 0, 0, 0]   # ... and a moving band
    batch = {"caption": np.array(CAPTIONS), "frames": frames}
    inputs = task.batch_inputs(batch, task.build_frozen(), torch.Generator().manual_seed(0), torch.device("cpu"))

    def accuracy() -> float:
        with torch.no_grad():
            return top1_retrieval(module(inputs["data"])[0], inputs["text"])

    before = accuracy()
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=3e-3, weight_decay=0.0)
    for step in range(300):
        loss = task.loss(module, inputs)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 9 and accuracy() == 1.0:
            break
    print(f"video→text top-1: {before:.3f} before, {accuracy():.3f} after {step + 1} steps")
    assert before <= 3 / len(CAPTIONS) and accuracy() >= 0.9, (before, accuracy(), step)
    moved = {k for k, v in module.state_dict().items() if not torch.equal(v, before_state[k])}
    assert moved and all(k.startswith(("encoder.temporal.", "log_scale")) for k in moved), sorted(moved)[:5]
    export = task.export_state(dict(module.state_dict()), codecs)
    assert export and all(k.startswith("clip.temporal.") for k in export)
    assert set(export) == {f"clip.{k}" for k in ClipEncoder(clip_cfg).state_dict() if k.startswith("temporal.")}

    no_temporal = dataclasses.replace(clip_cfg, temporal=False)
    plain = BridgingTask(BridgingObjective("video"), encoder=lambda: ClipEncoder(no_temporal), text=lambda: codecs)
    with pytest.raises(UsageError, match="clip.temporal: true"):
        plain.build_trainable()


def test_clip_pretraining_trains_both_towers_to_retrieve_toy_scenes(tmp_path):
    """``modality: image`` (the toy schedules' CLIP pretraining): both towers of the toy codecs' CLIP learn
    12 toy-world scenes (distinct colour, shape, position) from chance to ≥ 0.9 top-1 retrieval both ways;
    the export is exactly the ``clip.*`` tensors, under the codecs' names."""
    from pipelines.toyworld import render_image
    from pipelines.toyworld_spec import COLORS, POSITIONS, SHAPES, Scene
    from training.debug_codecs import toy_words

    tokenizers = write_tokenizers(tmp_path, toy_words(), clip_words=True)
    codecs = debug_codecs(tokenizers, variant="toy")
    scenes = [Scene(c, s, p) for c, s, p in zip(list(COLORS) * 3, SHAPES * 4, list(POSITIONS) * 3)][:12]
    assert len({s.caption for s in scenes}) == 12
    batch = {"caption": np.array([s.caption for s in scenes]),
             "image": np.stack([np.asarray(render_image(s, size=32)) for s in scenes])}
    # two instances, as on a worker: the frozen codecs (for its tokenizer) and the CLIP that trains
    task = BridgingTask(BridgingObjective("image", shard_set="laion"),
                        encoder=lambda: debug_codecs(tokenizers, variant="toy").clip, text=lambda: codecs)
    assert task.required == ["image", "text"]
    module = task.build_trainable()
    before_state = {k: v.clone() for k, v in module.state_dict().items()}
    inputs = task.batch_inputs(batch, task.build_frozen(), torch.Generator().manual_seed(0), torch.device("cpu"))
    assert inputs["ids"].shape == (12, 32) and inputs["ids"].dtype == torch.long
    before, after, steps = pretrain_until_retrieved(task, module, inputs, 200)
    print(f"image↔text top-1: {before} before, {after} after {steps} steps")
    assert max(before) <= 3 / 12 and min(after) >= 0.9, (before, after, steps)
    moved = [k for k, v in module.state_dict().items() if not torch.equal(v, before_state[k])]
    assert any(k.startswith("encoder.text_model.") for k in moved)
    assert any(k.startswith("encoder.vision_model.") for k in moved)
    assert all(p.dim() > 0 for p in module.parameters())     # DeepSpeed's broadcast refuses 0-dim parameters
    # the export: both towers under their codecs names, not CLIP's own logit scale (the stage learns s) nor
    # the temporal blocks (video bridging trains those; images never run them)
    export = task.export_state(dict(module.state_dict()), None)
    assert set(export) == {k for k in codecs.state_dict() if k.startswith("clip.model.")} - {"clip.model.logit_scale"}
    trained = module.encoder.clip.state_dict()
    assert all(torch.equal(export[k], trained[k.removeprefix("clip.")]) for k in export)


def test_clip_pretraining_on_clips_learns_the_words_only_motion_shows(tmp_path):
    """``modality: image+video``: CLIP pretraining on clips (through CoDi's temporal blocks) and on images
    (a ``data.images`` batch, as 1-frame videos). Eight clips of one red circle differ only in direction
    and speed, and so do their captions; a frame average cannot tell a path from its reverse (each is
    centred mid-clip), so retrieval starts near chance both ways and must reach ≥ 0.9 both ways. A 1-frame
    video encodes exactly as the image path does; the export is the two towers, not the temporal blocks."""
    from models.encoders.clip import ClipEncoder
    from pipelines.toyworld import render_image
    from pipelines.toyworld_av import render_frames
    from pipelines.toyworld_spec import DIRECTIONS, SPEEDS, TEMPLATES, Clip, Scene
    from training.debug_codecs import toy_words

    tokenizers = write_tokenizers(tmp_path, toy_words(), clip_words=True)
    codecs = debug_codecs(tokenizers, variant="toy", temporal=True)
    clips = [Clip("red", "circle", m, s) for m in DIRECTIONS for s in SPEEDS]
    captions = [TEMPLATES["silent_video"].format(colour=c.color, shape=c.shape, motion=c.motion, speed=c.speed)
                for c in clips]
    videos = {"caption": np.array(captions), "frames": np.stack([render_frames(c, size=32)[::2] for c in clips])}
    assert videos["frames"].shape == (8, 8, 32, 32, 3)
    task = BridgingTask(BridgingObjective("image+video", shard_set="webvid"),
                        encoder=lambda: debug_codecs(tokenizers, variant="toy", temporal=True).clip,
                        text=lambda: codecs)
    assert task.required == ["text", "video"]
    torch.manual_seed(0)
    module = task.build_trainable()
    before_state = {k: v.clone() for k, v in module.state_dict().items()}
    frozen_text = task.build_frozen()
    inputs = task.batch_inputs(videos, frozen_text, torch.Generator().manual_seed(0), torch.device("cpu"))
    before, after, steps = pretrain_until_retrieved(task, module, inputs, 400)
    print(f"clip↔caption top-1: {before} before, {after} after {steps} steps")
    assert max(before) <= 3 / 8 and min(after) >= 0.9, (before, after, steps)
    moved = {k for k, v in module.state_dict().items() if not torch.equal(v, before_state[k])}
    for part in ("encoder.text_model.", "encoder.vision_model.", "encoder.temporal."):
        assert any(k.startswith(part) for k in moved), part

    # a batch of images (the stage's data.images turn) runs as 1-frame videos: the image path, exactly
    scenes = [Scene("red", "circle", p) for p in ("left", "right", "top", "bottom")]
    images = {"caption": np.array([s.caption for s in scenes]),
              "image": np.stack([np.asarray(render_image(s, size=32)) for s in scenes])}
    image_inputs = task.batch_inputs(images, frozen_text, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert image_inputs["data"].shape == (4, 1, 32, 32, 3)
    with torch.no_grad():
        as_video = module(image_inputs["data"], image_inputs["ids"])[0]
        torch.testing.assert_close(as_video, module.encoder.image(torch.from_numpy(images["image"])).flatten(1))
    assert torch.isfinite(task.loss(module, image_inputs))

    export = task.export_state(dict(module.state_dict()), None)
    assert set(export) == {k for k in codecs.state_dict() if k.startswith("clip.model.")} - {"clip.model.logit_scale"}
    assert not any("temporal" in k for k in export)
    assert isinstance(module.encoder.clip, ClipEncoder)
