"""The tiny debug ``Codecs`` of the toy schedules, written once as a ``Codecs.from_pretrained`` folder.

No tokenizer can be downloaded, so the folder's BERT / GPT-2 / CLIP tokenizers are built here from a
fixed toy-world vocabulary (one token per known word, bytes for anything else) and saved by
``Codecs.save_pretrained`` beside the seeded random weights. Every stage of a debug schedule loads
the same folder, so the frozen parts agree between stages.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path

import torch

WORDS = ("a an the red blue green small big dog cat bird fish car boat tree house runs sits flies swims "
         "drives sails grows stands on in under near park lake road sky sea garden").split()  # sizes fit debug()'s vocabularies


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
    """Byte-level BPE whose merges spell out ``words`` (with and without GPT-2's leading-space mark Ġ)."""
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


def write_tokenizers(root: Path) -> dict[str, str]:
    """Local BERT / GPT-2 / CLIP tokenizers under ``root`` (directories by name)."""
    from transformers import BertTokenizer, CLIPTokenizer, GPT2Tokenizer

    bert = BertTokenizer(vocab={t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])},
                         do_lower_case=False)
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


def debug_codecs_config(tokenizer_dirs: dict[str, str]):
    """``models.codecs_config.debug()`` sizes with the tokenizers of ``write_tokenizers``."""
    from models.codecs_config import debug

    cfg = debug()
    cfg.text = dataclasses.replace(cfg.text, encoder_tokenizer=tokenizer_dirs["bert"],
                                   decoder_tokenizer=tokenizer_dirs["gpt2"])
    cfg.clip = dataclasses.replace(cfg.clip, tokenizer=tokenizer_dirs["clip"])
    return cfg


def debug_codecs(tokenizer_dirs: dict[str, str], seed: int = 0):
    """The debug codecs with these tokenizers and seeded random weights."""
    from models.codecs import Codecs

    torch.manual_seed(seed)
    return Codecs(debug_codecs_config(tokenizer_dirs))


def ensure_debug_codecs(directory: str | Path, seed: int = 0) -> Path:
    """Write the debug codecs folder at ``directory`` unless it is there; concurrent writers are safe
    (each writes a temporary sibling and renames it into place; the loser's copy is dropped)."""
    directory = Path(directory)
    if (directory / "model.safetensors").is_file():
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".debug_codecs-", dir=directory.parent))
    try:
        with tempfile.TemporaryDirectory() as toks:
            debug_codecs(write_tokenizers(Path(toks)), seed).save_pretrained(tmp / "codecs")
        try:
            os.rename(tmp / "codecs", directory)
        except OSError:
            if not (directory / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory
