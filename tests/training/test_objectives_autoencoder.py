"""Autoencoder stages: the KL term is the closed-form Gaussian KL of the encoder's moments, the loss is
the L1 + β·KL of the step's noise, the Optimus wrapper equals ``Optimus.loss``, the audio input equals the
codec's own log-mel, each piece's loss falls on a fixed batch, and export names match ``Codecs``."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from models.audio import AudioCodec
from models.codecs import Codecs
from training.tasks.autoencoder import AutoencoderObjective, AutoencoderTask, waveform_to_vae_mel

from objectives_helpers import (adam_steps, audiocaps_batch, debug_codecs_config, laion_batch, webvid_batch,
                                write_tokenizers)


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    return debug_codecs_config(write_tokenizers(tmp_path_factory.mktemp("tokenizers")))



def test_kl_vae_loss_is_l1_plus_beta_closed_form_kl(cfg):
    torch.manual_seed(0)
    task = AutoencoderTask(AutoencoderObjective("image", beta=0.5), cfg)
    module = task.build_trainable()
    inputs = task.batch_inputs(laion_batch(3), None, torch.Generator().manual_seed(0), torch.device("cpu"))
    with torch.no_grad():
        moments = module.vae.quant_conv(module.vae.encoder(inputs["x"]))
        mu, logvar = moments.chunk(2, dim=1)
        kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(dim=(1, 2, 3))
        x_hat = module.vae.decode(mu + (0.5 * logvar).exp() * inputs["noise"]).sample
        want = ((inputs["x"] - x_hat).abs().sum(dim=(1, 2, 3)) + 0.5 * kl).mean()
        assert task.loss(module, inputs).item() == pytest.approx(want.item(), rel=1e-5)


@pytest.mark.parametrize("piece,batch", [("image", laion_batch(2)), ("video", webvid_batch(1, frames=2)),
                                         ("audio", audiocaps_batch(2)), ("vocoder", audiocaps_batch(2)),
                                         ("text", laion_batch(4))])
def test_loss_falls_and_export_names_match_codecs(cfg, piece, batch):
    torch.manual_seed(0)
    task = AutoencoderTask(AutoencoderObjective(piece, beta=1.0 if piece == "text" else 1e-6), cfg)
    module = task.build_trainable()
    inputs = task.batch_inputs(batch, None, torch.Generator().manual_seed(0), torch.device("cpu"))
    module.train(False)                      # no dropout: the same fixed batch gives the same loss
    losses = adam_steps(task, module, inputs, steps=15, lr=2e-3)
    assert losses[-1] < 0.8 * losses[0], losses
    exported = task.export_state(module.state_dict())
    with torch.device("meta"):
        codecs_keys = set(Codecs(cfg).state_dict())
    assert exported and set(exported) <= codecs_keys     # loads into a Codecs by name


def test_optimus_wrapper_equals_optimus_loss(cfg):
    torch.manual_seed(0)
    task = AutoencoderTask(AutoencoderObjective("text", beta=0.7), cfg)
    module = task.build_trainable()
    module.train(False)
    texts = ["a red dog runs", "a blue boat sails on the lake"]
    inputs = task.batch_inputs({"caption": np.array(texts)}, None, torch.Generator().manual_seed(0), torch.device("cpu"))
    torch.manual_seed(5)
    want, _ = module.optimus.loss(texts, beta=0.7)       # draws ε = randn_like(μ) from the global generator
    torch.manual_seed(5)
    inputs["noise"] = torch.randn(2, cfg.text.latent_size)
    assert task.loss(module, inputs).item() == pytest.approx(want.item(), rel=1e-5)


def test_audio_input_is_the_codecs_log_mel(cfg):
    wave = torch.from_numpy(audiocaps_batch(2)["audio"].astype(np.float32))
    codec = AudioCodec(cfg.audio)
    torch.testing.assert_close(waveform_to_vae_mel(wave, cfg.audio), codec.waveform_to_mel(wave))


def test_mean_pooled_optimus_learns_toy_captions_where_cls_pooling_does_not(tmp_path):
    """The toy codecs' Optimus pools BERT by the masked mean (``text.pooling: mean``): after 400 steps from
    scratch it reconstructs most toy captions exactly; the same model pooling [CLS] (Optimus' own, for the
    released weights) keeps only a few. Also: the mean is over real tokens only (padding ignored)."""
    from pipelines.toyworld import all_scenes
    from training.debug_codecs import toy_words

    toy = debug_codecs_config(write_tokenizers(tmp_path, toy_words(), clip_words=True), "toy")
    assert toy.text.pooling == "mean"
    captions = [s.caption for s in all_scenes()]                    # 60 captions of the image grammar
    held = captions[::4]

    def exact_after(pooling: str, steps: int = 400) -> float:
        torch.manual_seed(0)
        cfg = dataclasses.replace(toy, text=dataclasses.replace(toy.text, pooling=pooling))
        task = AutoencoderTask(AutoencoderObjective("text", beta=1e-6), cfg)
        module = task.build_trainable()
        opt = torch.optim.AdamW(module.parameters(), lr=2e-3)
        g = torch.Generator().manual_seed(0)
        for _ in range(steps):
            batch = {"caption": np.array([captions[i] for i in torch.randint(0, len(captions), (32,), generator=g)])}
            loss = task.loss(module, task.batch_inputs(batch, None, g, torch.device("cpu")))
            opt.zero_grad()
            loss.backward()
            opt.step()
        module.train(False)
        with torch.no_grad():
            out = module.optimus.decode(module.optimus.encode(held))
        if pooling == "mean":      # padding does not move the mean: one caption alone == in a padded batch
            ids, mask = module.optimus._encoder_inputs([held[0], "a red circle moving left slowly, with a low tone"])
            alone = module.optimus.encoder(*module.optimus._encoder_inputs([held[0]]))[0]
            assert torch.allclose(module.optimus.encoder(ids, mask)[0][:1], alone, atol=1e-5)
        return float(np.mean([a == b for a, b in zip(held, out)]))

    mean, cls = exact_after("mean"), exact_after("cls")
    print(f"exact toy-caption reconstructions: mean pooling {mean:.2f}, CLS pooling {cls:.2f}")
    assert mean >= 0.6 and cls <= 0.3, (mean, cls)
