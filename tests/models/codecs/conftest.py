"""Tiny local tokenizers (vocabularies written here, nothing downloaded) and the debug codecs config."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import BertTokenizer, CLIPTokenizer, GPT2Tokenizer

from models.codecs_config import debug

WORDS = ("a an the red blue green small big dog cat bird fish car boat tree house runs sits flies swims "
         "drives sails grows stands on in under near park lake road sky sea garden").split()


def byte_chars() -> list[str]:
    """GPT-2's byte-to-unicode alphabet (256 printable stand-ins for the bytes)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def word_bpe(alphabet: list[str], words) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level BPE whose merges spell out ``words`` (with and without GPT-2's leading-space mark Ġ):
    one token per known word, bytes for anything else."""
    vocab = {c: i for i, c in enumerate(alphabet)}
    merges = []
    for word in words:
        for form in ("\u0120" + word, word):
            for end in range(2, len(form) + 1):
                piece = form[:end]
                if piece not in vocab:
                    vocab[piece] = len(vocab)
                    merges.append((form[: end - 1], form[end - 1]))
    return vocab, merges


def write_tokenizers(root) -> dict[str, str]:
    bert = BertTokenizer(vocab={t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
                                                            *WORDS])}, do_lower_case=False)
    gpt2_vocab, merges = word_bpe(byte_chars(), WORDS)
    gpt2 = GPT2Tokenizer(vocab=gpt2_vocab, merges=merges)
    clip_vocab = {c: i for i, c in enumerate(byte_chars())}
    clip_vocab.update({c + "</w>": 256 + i for i, c in enumerate(byte_chars())})
    clip_vocab.update({"<|startoftext|>": 512, "<|endoftext|>": 513})
    clip = CLIPTokenizer(vocab=clip_vocab, merges=[])
    paths = {}
    for name, tok in (("bert", bert), ("gpt2", gpt2), ("clip", clip)):
        paths[name] = str(root / name)
        tok.save_pretrained(paths[name])
    return paths


@pytest.fixture(scope="session")
def tokenizer_dirs(tmp_path_factory):
    return write_tokenizers(tmp_path_factory.mktemp("tokenizers"))


@pytest.fixture
def debug_cfg(tokenizer_dirs):
    torch.manual_seed(0)
    cfg = debug()
    cfg.text = dataclasses.replace(cfg.text, encoder_tokenizer=tokenizer_dirs["bert"],
                                   decoder_tokenizer=tokenizer_dirs["gpt2"])
    cfg.clip = dataclasses.replace(cfg.clip, tokenizer=tokenizer_dirs["clip"])
    return cfg


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread is several times faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
