"""The tiny ``Codecs`` of the toy schedules, written once as a ``Codecs.from_pretrained`` folder.

No tokenizer can be downloaded, so the folder's BERT / GPT-2 / CLIP tokenizers are built here from a
fixed vocabulary (one token per known word, bytes for anything else) and saved by
``Codecs.save_pretrained`` beside the seeded random weights. Every stage of a schedule loads the same
folder, so the frozen parts agree between stages. Two variants (``CodecsSource.path``):

- ``debug``: ``models.codecs_config.debug()`` sizes, a generic word list; the unit tests' codecs.
- ``toy``: the toy world's caption words (pipelines/toyworld_spec.py), 1.28 s of audio (128 mel frames:
  two pulses of the slowest rhythm), f = 4 autoencoders and a CLIP with one token per caption word and
  two layers per tower, what ``codi_demo`` trains on (its ``clip_pretraining`` stage trains that CLIP).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path

import torch

from models.codecs import WEIGHTS_FILE

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
    """Byte-level BPE whose merges spell out ``words`` (with and without GPT-2's leading-space mark Ġ).

    Each form is built left to right, one character per merge. The Ġ forms come first, longest word
    first, so inside a Ġ word the only merge that applies before the bare words' is the next link of
    its own chain (every Ġ merge extends the leftmost piece): every known word after a space is one token.
    """
    vocab = {c: i for i, c in enumerate(alphabet)}
    merges = []
    by_length = sorted(dict.fromkeys(words), key=lambda w: (-len(w), w))
    for form in ["\u0120" + w for w in by_length] + by_length:
        for end in range(2, len(form) + 1):
            piece = form[:end]
            if piece not in vocab:
                vocab[piece] = len(vocab)
                merges.append((form[: end - 1], form[end - 1]))
    return vocab, merges


VARIANTS = ("debug", "toy")
# LDM's latent scale factor (§4.3.2: ≈ 1 / std of the latents) of the toy autoencoders, measured on
# autoencoders trained as the demo's stages train them (posterior-mean std 1.45 image, 1.90 audio)
TOY_SCALE = {"image": 0.69, "audio": 0.53}


def toy_words() -> list[str]:
    """Every word of the toy world's caption grammar (its templates filled with every value)."""
    from pipelines.toyworld_spec import (COLORS, PITCHES, POSITION_PHRASES, RHYTHMS, SHAPES, SPEEDS, DIRECTIONS,
                                         TEMPLATES)

    text = " ".join([*TEMPLATES.values(), *COLORS, *SHAPES, *POSITION_PHRASES.values(), *DIRECTIONS, *SPEEDS,
                     *(w for w, _ in PITCHES.values()), *(w for w, _ in RHYTHMS.values())])
    words = [w.strip(",") for w in text.replace("{", " ").replace("}", " ").split()]
    return list(dict.fromkeys(w for w in words if w.isalpha() and w not in
                              {"colour", "shape", "position", "motion", "speed", "pitch", "rhythm"}))


def clip_word_bpe(alphabet: list[str], words) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's BPE (words end in ``</w>``) whose merges spell out ``words``, each built right to left.

    Every merge extends a piece that ends the word (``x`` + ``…</w>``), and no merge joins two inner
    pieces, so inside a word the only merges that apply are the links of its own chain, in any rank
    order: every known word is one token; anything else falls back to characters."""
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab.update({c + "</w>": len(alphabet) + i for i, c in enumerate(alphabet)})
    merges: dict[tuple[str, str], None] = {}
    for word in dict.fromkeys(words):
        piece = word[-1] + "</w>"
        for start in range(len(word) - 2, -1, -1):
            merges[(word[start], piece)] = None
            piece = word[start] + piece
            vocab.setdefault(piece, len(vocab))
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    return vocab, list(merges)


def write_tokenizers(root: Path, words=WORDS, clip_words: bool = False) -> dict[str, str]:
    """Local BERT / GPT-2 / CLIP tokenizers under ``root`` (directories by name); CLIP's tokens are
    characters, or with ``clip_words`` one per known word."""
    from transformers import BertTokenizer, CLIPTokenizer, GPT2Tokenizer

    bert = BertTokenizer(vocab={t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])},
                         do_lower_case=False)
    gpt2_vocab, merges = word_bpe(byte_chars(), words)
    gpt2 = GPT2Tokenizer(vocab=gpt2_vocab, merges=merges)
    clip_vocab, clip_merges = clip_word_bpe(byte_chars(), words if clip_words else [])
    clip = CLIPTokenizer(vocab=clip_vocab, merges=clip_merges)
    paths = {}
    for name, tok in (("bert", bert), ("gpt2", gpt2), ("clip", clip)):
        paths[name] = str(root / name)
        tok.save_pretrained(paths[name])
    return paths


def debug_codecs_config(tokenizer_dirs: dict[str, str], variant: str = "debug"):
    """``models.codecs_config.debug()`` sizes with the tokenizers of ``write_tokenizers`` (``toy``: 128 mel frames)."""
    from models.codecs_config import debug

    cfg = debug()
    if variant == "toy":
        # f = 4 autoencoders (8x8 latents of 32 px images; 16x32 of 1.28 s of 64-bin mel: two pulses of
        # the slowest rhythm); whole video captions fit CLIP's character tokens
        cfg.image = dataclasses.replace(cfg.image, block_out_channels=(8, 16, 32), scale=TOY_SCALE["image"])
        cfg.audio = dataclasses.replace(cfg.audio, frames=128, vae=dataclasses.replace(
            cfg.audio.vae, block_out_channels=(8, 16, 32), scale=TOY_SCALE["audio"]),
            vocoder=dataclasses.replace(cfg.audio.vocoder, decode_with="griffin_lim"))
        # one token per word (a video caption is 14 with BOS/EOS); two layers a tower: the CLIP that
        # the clip_pretraining stage trains on video- and image-text pairs
        vocab = len(clip_word_bpe(byte_chars(), toy_words())[0])
        cfg.clip = dataclasses.replace(cfg.clip, vocab_size=vocab, max_position_embeddings=32, text_hidden_size=64,
                                       text_layers=2, text_heads=4, text_intermediate_size=128,
                                       vision_hidden_size=64, vision_layers=2, vision_heads=4,
                                       vision_intermediate_size=128)
        # a BERT from scratch does not learn to gather a caption into its [CLS] state (Optimus' pooler):
        # 0 of 16 toy captions came back after 3000 steps, 14 of 16 after 500 with mean pooling
        cfg.text = dataclasses.replace(cfg.text, pooling="mean")
    cfg.text = dataclasses.replace(cfg.text, encoder_tokenizer=tokenizer_dirs["bert"],
                                   decoder_tokenizer=tokenizer_dirs["gpt2"])
    cfg.clip = dataclasses.replace(cfg.clip, tokenizer=tokenizer_dirs["clip"])
    return cfg


def debug_codecs(tokenizer_dirs: dict[str, str], seed: int = 0, variant: str = "debug", temporal: bool = False):
    """The debug (or toy) codecs with these tokenizers and seeded random weights (``temporal``: with CoDi's
    temporal attention in CLIP's vision tower, its video prompt encoder)."""
    from models.codecs import Codecs

    cfg = debug_codecs_config(tokenizer_dirs, variant)
    cfg.clip = dataclasses.replace(cfg.clip, temporal=temporal)
    torch.manual_seed(seed)
    return Codecs(cfg)


def ensure_debug_codecs(directory: str | Path, seed: int = 0, variant: str = "debug") -> Path:
    """Write the ``variant`` codecs folder at ``directory`` unless it is there; concurrent writers are safe
    (each writes a temporary sibling and renames it into place; the loser's copy is dropped)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown codecs variant {variant!r} (one of {', '.join(VARIANTS)})")
    directory = Path(directory)
    if (directory / WEIGHTS_FILE).is_file():
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".debug_codecs-", dir=directory.parent))
    try:
        with tempfile.TemporaryDirectory() as toks:
            words = toy_words() if variant == "toy" else WORDS
            tokenizers = write_tokenizers(Path(toks), words, clip_words=variant == "toy")
            # the schedules' codecs carry CoDi's video prompt encoder (video bridging trains its temporal blocks)
            debug_codecs(tokenizers, seed, variant, temporal=True).save_pretrained(tmp / "codecs")
        try:
            os.rename(tmp / "codecs", directory)
        except OSError:
            if not (directory / WEIGHTS_FILE).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory
