"""The frozen codecs of a training stage, with what they computed per example remembered.

An LDM or latent-alignment stage runs every batch through frozen encoders before its UNet sees it: the
autoencoders' latents (the posterior mean, no sampling: ``kl_encode``) and the CLIP/CLAP condition
embeddings. Neither changes while the stage trains, and a small corpus passes by many times (the demo's
audio LDM: 75 epochs of 256 sounds), so each example's outputs are kept after their first batch, the way
diffusers' and kohya's trainers cache latents. Only the noise, timesteps and condition dropout are drawn
afresh each step (``diffusion_draw``, ``condition_inputs``), so the inputs a step sees are those of an
uncached run, to the last bits a batched convolution may change with the batch's other examples.

Examples are named by their content (a hash of the bytes, dtype and shape the encoder receives), not by
their key: the video curriculum's phases cut different frames from the same clip, and a 1-frame video
from an image is not that image. ``max_mb`` bounds what is kept; once it is full, further examples are
encoded every time, as without a cache.

Measured in one process on one thread of a 2-core Xeon: the frozen part of the demo's audio LDM took
67 ms a batch of 16 (mel spectrogram, VAE encoder, CLIP text) beside 284 ms for the UNet's forward and
backward; the image LDM's 11 ms, the video LDM's 33 ms for 8 clips. With the cache, the audio LDM's whole
step went from 273 to 229 ms, the video LDM's from 540 to 506.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Hashable, Sequence

import numpy as np
import torch


def example_digests(data) -> list[bytes]:
    """One digest per example of a batch: a ``list[str]`` of captions, or an array/tensor ``(b, ...)``."""
    if isinstance(data, (list, tuple)):
        return [hashlib.blake2b(str(x).encode(), digest_size=16, person=b"text").digest() for x in data]
    array = data.detach().cpu().numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
    head = f"{array.dtype}{array.shape[1:]}".encode()
    return [hashlib.blake2b(head + np.ascontiguousarray(row).tobytes(), digest_size=16).digest() for row in array]


def take(data, index: Sequence[int]):
    """The examples ``index`` of a batch, in the batch's own type."""
    if isinstance(data, (list, tuple)):
        return [data[i] for i in index]
    return data[torch.as_tensor(index, dtype=torch.long)] if isinstance(data, torch.Tensor) else np.asarray(data)[index]


class EncoderCache:
    """``codecs`` (a frozen ``models.codecs.Codecs``) whose ``encode``, ``condition`` and ``null`` remember their
    outputs; everything else is the codecs' own."""

    def __init__(self, codecs, max_mb: float):
        self.codecs, self.max_bytes = codecs, int(max_mb * 2**20)
        self.kept: dict[Hashable, torch.Tensor] = {}
        self.bytes = self.hits = self.misses = 0

    def __getattr__(self, name: str):
        return getattr(self.codecs, name)

    def encode(self, modality: str, data) -> torch.Tensor:
        return self._per_example(("encode", modality), data, lambda part: self.codecs.encode(modality, part))

    def condition(self, modality: str, data) -> torch.Tensor:
        return self._per_example(("condition", modality), data, lambda part: self.codecs.condition(modality, part))

    def null(self, modality: str, batch: int) -> torch.Tensor:
        key = ("null", modality, batch)
        if key in self.kept:
            return self.kept[key].clone()
        value = self.codecs.null(modality, batch)
        self._keep(key, value)
        return value

    def _per_example(self, verb: tuple, data, compute: Callable) -> torch.Tensor:
        keys = [(*verb, d) for d in example_digests(data)]
        missing = [i for i, k in enumerate(keys) if k not in self.kept]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if not missing:
            return torch.stack([self.kept[k] for k in keys])
        fresh = compute(take(data, missing) if len(missing) < len(keys) else data)
        out = torch.empty((len(keys), *fresh.shape[1:]), dtype=fresh.dtype, device=fresh.device)
        out[torch.as_tensor(missing, dtype=torch.long)] = fresh
        computed = set(missing)
        for i, k in enumerate(keys):
            if i not in computed:
                out[i] = self.kept[k]
        for row, i in zip(fresh, missing):
            self._keep(keys[i], row)
        return out

    def _keep(self, key: Hashable, value: torch.Tensor) -> None:
        """Keep a copy (on the codecs' device) while ``max_mb`` allows; the first of equal examples wins."""
        size = value.numel() * value.element_size()
        if key not in self.kept and self.bytes + size <= self.max_bytes:
            self.kept[key] = value.detach().clone()
            self.bytes += size
