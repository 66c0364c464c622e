"""Optimus: trained here on toy captions, it reconstructs them from μ; the latent reaches GPT-2 both as
a memory key/value position and through the token embeddings."""

from __future__ import annotations

import dataclasses
import itertools
import time

import pytest
import torch

from models.codecs_config import debug
from models.optimus import Optimus, kl_divergence

COLOURS = ["red", "blue", "green"]
SIZES = ["small", "big"]
THINGS = ["dog", "cat", "bird", "fish", "car", "boat", "tree", "house"]
PLACES = ["park", "lake", "road", "sky", "sea", "garden"]


def captions() -> list[str]:
    combos = list(itertools.product(SIZES, COLOURS, THINGS, PLACES))
    rng = torch.Generator().manual_seed(0)
    pick = torch.randperm(len(combos), generator=rng)[:56].tolist()
    return [f"a {s} {c} {t} in the {p}" for s, c, t, p in (combos[i] for i in pick)]


def optimus(tokenizer_dirs, **kw) -> Optimus:
    cfg = dataclasses.replace(debug().text, encoder_tokenizer=tokenizer_dirs["bert"],
                              decoder_tokenizer=tokenizer_dirs["gpt2"], dropout=0.0, **kw)
    return Optimus(cfg)


def token_accuracy(model: Optimus, texts: list[str]) -> float:
    """Position-wise agreement of the greedy decode from μ with the caption's tokens (+ <EOS>)."""
    tok = model.dec_tok
    with torch.no_grad():
        decoded = model.greedy_ids(model.posterior(texts)[0])
    hits = total = 0
    for text, got in zip(texts, decoded):
        target = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        got = got + [tok.eos_token_id]            # greedy_ids strips the <EOS> it stopped at
        hits += sum(a == b for a, b in zip(target, got))
        total += len(target)
    return hits / total


@pytest.mark.timeout(300)
def test_optimus_learns_to_reconstruct_toy_captions_from_mu(tokenizer_dirs):
    torch.manual_seed(0)
    texts = captions()
    assert len(set(texts)) >= 50
    model = optimus(tokenizer_dirs, latent_size=32)
    before = token_accuracy(model.eval(), texts)
    steps = 800
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    start = time.time()
    for step in range(steps):
        model.train()
        loss, parts = model.loss(texts, beta=0.0, sample=False)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 49 and token_accuracy(model.eval(), texts) >= 0.99:
            break
    model.eval()
    after = token_accuracy(model, texts)
    print(f"optimus token accuracy {before:.3f} -> {after:.3f} after {step + 1} steps, {time.time() - start:.0f} s")
    assert before < 0.5 and after >= 0.95, (before, after, step, time.time() - start)
    # decode() works on the diffusion latent s·μ and returns the captions themselves
    decoded = model.decode(model.encode(texts[:8]))
    assert sum(d == t for d, t in zip(decoded, texts[:8])) >= 6, decoded


def test_latent_enters_as_memory_and_as_embedding(tokenizer_dirs):
    """Zeroing W_mem or W_emb each changes the logits: both paths carry z (Optimus' 'memory' + 'embedding')."""
    torch.manual_seed(0)
    model = optimus(tokenizer_dirs).eval()
    z = torch.randn(2, model.cfg.latent_size)
    ids = torch.tensor([[model.dec_tok.bos_token_id, 70, 71]] * 2)
    with torch.no_grad():
        full = model.decoder(z, ids).logits
        for name in ("linear", "linear_emb"):
            saved = getattr(model.decoder, name).weight.clone()
            getattr(model.decoder, name).weight.zero_()
            assert not torch.allclose(model.decoder(z, ids).logits, full, atol=1e-5), name
            getattr(model.decoder, name).weight.copy_(saved)
        # with both zeroed, z has no influence at all
        model.decoder.linear.weight.zero_()
        model.decoder.linear_emb.weight.zero_()
        assert torch.allclose(model.decoder(z, ids).logits, model.decoder(-3 * z, ids).logits, atol=1e-6)


def test_memory_is_one_raw_key_value_position_per_layer(tokenizer_dirs):
    model = optimus(tokenizer_dirs).eval()
    g = model.decoder.gpt2.config
    z = torch.randn(3, model.cfg.latent_size)
    cache = model.decoder.memory(z)
    assert cache.get_seq_length() == 1
    raw = model.decoder.linear(z).view(3, g.n_layer, g.n_embd)
    for layer in range(g.n_layer):
        k, v = cache.layers[layer].keys, cache.layers[layer].values
        assert k.shape == (3, g.n_head, 1, g.n_embd // g.n_head)
        assert torch.equal(k, v)
        assert torch.allclose(k.permute(0, 2, 1, 3).reshape(3, g.n_embd), raw[:, layer])


def test_kl_divergence_closed_form():
    mu, logvar = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, float(torch.log(torch.tensor(4.0)))]])
    # ½[(1 + 1 − 0 − 1) + (0 + 4 − ln 4 − 1)]
    assert torch.allclose(kl_divergence(mu, logvar), torch.tensor([0.5 * (1 + 3 - float(torch.log(torch.tensor(4.0))))]))
