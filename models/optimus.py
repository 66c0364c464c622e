"""Optimus text VAE (Li et al. 2020), CoDi's text autoencoder, on transformers' BERT and GPT-2.

Encoder:  h = BERT(x).pooler_output;   [μ, log σ²] = W h   (W: hidden -> 2·latent, no bias)
          (``pooling: mean``: h = masked mean of BERT's last hidden states, for toy encoders from scratch)
Latent:   z = μ + σ ⊙ ε  while training;  CoDi's diffusion latent is s · μ  (s = 4.3108)
Decoder:  GPT-2 receives z twice —
          memory:     for every layer l, one extra key/value position  k_l = v_l = (W_mem z)_l
                      (W_mem: latent -> hidden·layers, split per layer into heads, no projection);
          embedding:  every token embedding gets  W_emb z  added (W_emb: latent -> hidden).
          Positions therefore start at 1 (the memory holds position 0).
Text is ``<BOS> tokens <EOS>`` for GPT-2 (``<PAD>`` ignored in the loss); greedy decoding from ``<BOS>``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (BertConfig, BertModel, BertTokenizer, DynamicCache, GPT2Config, GPT2LMHeadModel,
                          GPT2Tokenizer)

from models.codecs_config import OptimusConfig

SPECIAL_TOKENS = {"pad_token": "<PAD>", "bos_token": "<BOS>", "eos_token": "<EOS>"}


def load_tokenizers(cfg: OptimusConfig) -> tuple[BertTokenizer, GPT2Tokenizer]:
    """The encoder's BERT tokenizer and the decoder's GPT-2 tokenizer (+ <PAD>, <BOS>, <EOS>), local dirs."""
    if not cfg.encoder_tokenizer or not cfg.decoder_tokenizer:
        raise ValueError("text.encoder_tokenizer and text.decoder_tokenizer must name local tokenizer "
                         "directories (BERT vocab.txt / GPT-2 vocab.json + merges.txt)")
    enc = BertTokenizer.from_pretrained(cfg.encoder_tokenizer, do_lower_case=False)
    dec = GPT2Tokenizer.from_pretrained(cfg.decoder_tokenizer)
    dec.add_special_tokens(SPECIAL_TOKENS)
    return enc, dec


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²) ‖ N(0, I)) per example = ½ Σ (μ² + σ² − log σ² − 1)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1).sum(dim=-1)


class BertLatentEncoder(nn.Module):
    def __init__(self, cfg: OptimusConfig):
        super().__init__()
        b = cfg.bert
        self.bert = BertModel(BertConfig(
            vocab_size=b.vocab_size, hidden_size=b.hidden_size, num_hidden_layers=b.num_hidden_layers,
            num_attention_heads=b.num_attention_heads, intermediate_size=b.intermediate_size,
            max_position_embeddings=b.max_position_embeddings, hidden_dropout_prob=cfg.dropout,
            attention_probs_dropout_prob=cfg.dropout))
        self.linear = nn.Linear(b.hidden_size, 2 * cfg.latent_size, bias=False)
        self.pooling = cfg.pooling

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.bert(input_ids=ids, attention_mask=mask)
        if self.pooling == "mean":
            weights = mask.unsqueeze(-1).to(out.last_hidden_state.dtype)
            pooled = (out.last_hidden_state * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        else:
            pooled = out.pooler_output
        mu, logvar = self.linear(pooled).chunk(2, dim=-1)
        return mu, logvar


class GPT2LatentDecoder(nn.Module):
    def __init__(self, cfg: OptimusConfig):
        super().__init__()
        g = cfg.gpt2
        self.gpt2 = GPT2LMHeadModel(GPT2Config(
            vocab_size=g.vocab_size, n_embd=g.n_embd, n_layer=g.n_layer, n_head=g.n_head,
            n_positions=g.n_positions, resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout,
            attn_pdrop=cfg.dropout, bos_token_id=None, eos_token_id=None))
        self.linear = nn.Linear(cfg.latent_size, g.n_embd * g.n_layer, bias=False)   # memory
        self.linear_emb = nn.Linear(cfg.latent_size, g.n_embd, bias=False)          # embedding

    def memory(self, z: torch.Tensor) -> DynamicCache:
        """One key/value position per layer: k_l = v_l = (W_mem z)_l split into heads."""
        g = self.gpt2.config
        per_layer = self.linear(z).view(z.shape[0], g.n_layer, g.n_head, 1, g.n_embd // g.n_head)
        cache = DynamicCache()
        for layer in range(g.n_layer):
            kv = per_layer[:, layer]
            cache.update(kv, kv, layer)
        return cache

    def forward(self, z: torch.Tensor, ids: torch.Tensor, cache: DynamicCache | None = None):
        """Logits of ``ids`` given z (a fresh memory unless an ongoing ``cache`` is passed)."""
        embeds = self.gpt2.transformer.wte(ids) + self.linear_emb(z).unsqueeze(1)
        cache = self.memory(z) if cache is None else cache
        return self.gpt2(inputs_embeds=embeds, past_key_values=cache, use_cache=True)


class Optimus(nn.Module):
    """Text <-> latent. ``encode`` gives s·μ; ``decode`` greedy-decodes up to ``max_length`` tokens."""

    def __init__(self, cfg: OptimusConfig, tokenizers: tuple[BertTokenizer, GPT2Tokenizer] | None = None):
        super().__init__()
        self.cfg = cfg
        self.encoder = BertLatentEncoder(cfg)
        self.decoder = GPT2LatentDecoder(cfg)
        if tokenizers is None and (cfg.encoder_tokenizer or cfg.decoder_tokenizer):
            tokenizers = load_tokenizers(cfg)
        self.enc_tok, self.dec_tok = tokenizers if tokenizers is not None else (None, None)
        for name, tok, size in (("encoder", self.enc_tok, cfg.bert.vocab_size),
                                ("decoder", self.dec_tok, cfg.gpt2.vocab_size)):
            if tok is not None and len(tok) > size:
                raise ValueError(f"text.{name}_tokenizer has {len(tok)} tokens, the model's vocabulary {size}")

    @property
    def device(self) -> torch.device:
        return self.encoder.linear.weight.device

    def _need_tokenizers(self) -> None:
        if self.enc_tok is None or self.dec_tok is None:
            raise ValueError("text.encoder_tokenizer and text.decoder_tokenizer must name local tokenizer "
                             "directories (BERT vocab.txt / GPT-2 vocab.json + merges.txt) to encode or decode text")

    def _encoder_inputs(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        self._need_tokenizers()
        t = self.enc_tok(list(texts), padding=True, truncation=True, max_length=self.cfg.max_input_tokens,
                         return_tensors="pt")
        return t["input_ids"].to(self.device), t["attention_mask"].to(self.device)

    def _decoder_targets(self, texts: list[str]) -> torch.Tensor:
        """``<BOS> tokens <EOS> <PAD>...`` ids, ``(b, t)``."""
        tok = self.dec_tok
        rows = [[tok.bos_token_id] + tok(t, add_special_tokens=False)["input_ids"][: self.cfg.max_length]
                + [tok.eos_token_id] for t in texts]
        width = max(len(r) for r in rows)
        rows = [r + [tok.pad_token_id] * (width - len(r)) for r in rows]
        return torch.tensor(rows, dtype=torch.long, device=self.device)

    def posterior(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, log σ²), each ``(b, latent)``."""
        return self.encoder(*self._encoder_inputs(texts))

    def encode(self, texts: list[str]) -> torch.Tensor:
        """``list[str]`` -> ``(b, latent)`` diffusion latent s · μ."""
        return self.posterior(texts)[0] * self.cfg.scale

    def loss(self, texts: list[str], beta: float = 1.0, sample: bool = True) -> tuple[torch.Tensor, dict]:
        """Optimus' β-VAE objective: mean over the batch of −log p(x|z) + β·KL (token CE summed per text)."""
        mu, logvar = self.posterior(texts)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if sample else mu
        ids = self._decoder_targets(texts)
        logits = self.decoder(z, ids[:, :-1]).logits
        rec = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], ignore_index=self.dec_tok.pad_token_id,
                              reduction="none").sum(dim=1)
        kl = kl_divergence(mu, logvar)
        return (rec + beta * kl).mean(), {"rec": rec.mean().detach(), "kl": kl.mean().detach()}

    @torch.no_grad()
    def greedy_ids(self, z: torch.Tensor) -> list[list[int]]:
        """Greedy decoding from <BOS> with the latent memory; stops at <EOS> or ``max_length`` tokens."""
        tok = self.dec_tok
        b = z.shape[0]
        cache = self.decoder.memory(z)
        current = torch.full((b, 1), tok.bos_token_id, dtype=torch.long, device=z.device)
        out = torch.empty((b, 0), dtype=torch.long, device=z.device)
        done = torch.zeros(b, dtype=torch.bool, device=z.device)
        for _ in range(self.cfg.max_length):
            step = self.decoder(z, current, cache=cache)
            cache = step.past_key_values
            current = step.logits[:, -1].argmax(dim=-1, keepdim=True)
            out = torch.cat([out, current], dim=1)
            done |= current.squeeze(1) == tok.eos_token_id
            if bool(done.all()):
                break
        rows = []
        for row in out.tolist():
            rows.append(row[: row.index(tok.eos_token_id)] if tok.eos_token_id in row else row)
        return rows

    def decode(self, latent: torch.Tensor) -> list[str]:
        """``(b, latent)`` s·μ -> ``list[str]``."""
        self._need_tokenizers()
        z = latent.to(self.device, self.encoder.linear.weight.dtype) / self.cfg.scale
        return [self.dec_tok.decode(r, skip_special_tokens=True).strip() for r in self.greedy_ids(z)]
