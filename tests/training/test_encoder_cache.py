"""training/encoder_cache.py: the frozen codecs' outputs are kept per example and computed once; what a
task's batch sees is what the codecs compute (oracle: the same codecs, uncached)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.config import DataConfig
from training.encoder_cache import EncoderCache, example_digests
from training.tasks.ldm import ConditionConfig, LDMObjective, LDMTask

from objectives_helpers import (audiocaps_batch, debug_codecs, laion_batch, tiny_audio, tiny_codi, tiny_image,
                                webvid_batch, write_tokenizers)


@pytest.fixture(scope="module")
def codecs(tmp_path_factory):
    return debug_codecs(write_tokenizers(tmp_path_factory.mktemp("tokenizers")))


def batch_sizes(module: torch.nn.Module) -> list[int]:
    """The batch size of every forward call of ``module`` from now on."""
    seen: list[int] = []
    module.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    return seen


def test_each_example_is_encoded_once_and_the_outputs_are_the_codecs_own(codecs):
    cache = EncoderCache(codecs, max_mb=64)
    encoder = batch_sizes(codecs.audio.vae.encoder)
    waves = torch.from_numpy(audiocaps_batch(6)["audio"].astype(np.float32))
    with torch.no_grad():
        want = codecs.encode("audio", waves)
        encoder.clear()
        first = cache.encode("audio", waves[:4])
        again = cache.encode("audio", waves[[3, 1, 0, 2]])               # all seen: no encoder call
        mixed = cache.encode("audio", waves[[5, 0, 4, 1]])               # two new ones: a batch of two
    assert encoder == [4, 2]
    torch.testing.assert_close(first, want[:4], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(again, want[[3, 1, 0, 2]], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mixed, want[[5, 0, 4, 1]], rtol=1e-5, atol=1e-5)
    assert (cache.hits, cache.misses) == (6, 6)


def test_examples_are_named_by_content_dtype_and_shape():
    frames = np.random.default_rng(0).integers(0, 256, (2, 4, 8, 8, 3), dtype=np.uint8)
    assert example_digests(frames[:, :2]) != example_digests(frames[:, ::2])       # two curriculum phases' frames
    assert example_digests(frames[:, :1])[0] != example_digests(frames[:, 0])[0]   # a 1-frame video is not its image
    assert example_digests(frames)[1] == example_digests(frames[1:])[0]
    assert example_digests(["a red dog", "a red dog", "a cat"])[:2] == [example_digests(["a red dog"])[0]] * 2


def test_captions_repeated_across_examples_are_embedded_once(codecs):
    cache = EncoderCache(codecs, max_mb=64)
    text = batch_sizes(codecs.clip.model.text_projection)
    captions = ["a red dog runs", "a blue cat sits", "a red dog runs", "a blue cat sits", "a green bird flies"]
    with torch.no_grad():
        want = codecs.condition("text", captions)
        text.clear()
        got = cache.condition("text", captions)
        got_again = cache.condition("text", captions[::-1])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_again, want.flip(0), rtol=1e-5, atol=1e-5)
    assert len(text) == 1 and cache.misses == 5 and cache.hits == 5


def test_a_full_cache_keeps_nothing_more_and_still_answers(codecs):
    waves = torch.from_numpy(audiocaps_batch(4)["audio"].astype(np.float32))
    with torch.no_grad():
        one = codecs.encode("audio", waves[:1])
        cache = EncoderCache(codecs, max_mb=1.5 * one.numel() * one.element_size() / 2**20)   # room for one
        encoder = batch_sizes(codecs.audio.vae.encoder)
        got = cache.encode("audio", waves)
        again = cache.encode("audio", waves)
    assert len(cache.kept) == 1 and encoder == [4, 3]
    torch.testing.assert_close(again, got, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="encoder_cache_mb"):
        DataConfig(encoder_cache_mb=-1)


@pytest.mark.parametrize("modality, unets, batch", [
    ("audio", {"audio": tiny_audio()}, audiocaps_batch(4)),
    ("video", {"image": tiny_image(video=True)}, webvid_batch(2, frames=2, size=8)),
])
def test_an_ldm_stage_sees_the_inputs_it_would_without_the_cache(codecs, modality, unets, batch):
    """Same generator, same draws: the latents, contexts, noise and dropout of a cached run (second pass:
    every encoder output from the cache) are those of an uncached one."""
    task = LDMTask(LDMObjective(modality, ConditionConfig({"text": 1.0}, drop_prob=0.3)), tiny_codi(**unets),
                   lambda: codecs)
    cache = EncoderCache(codecs, max_mb=64)
    uncached = [task.batch_inputs(batch, codecs, torch.Generator().manual_seed(s), torch.device("cpu")) for s in (0, 1)]
    cached = [task.batch_inputs(batch, cache, torch.Generator().manual_seed(s), torch.device("cpu")) for s in (0, 1)]
    assert cache.hits > 0 and cache.misses > 0
    for want, got in zip(uncached, cached):
        assert want.keys() == got.keys()
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-5, msg=name)
    assert not torch.equal(cached[0]["eps"], cached[1]["eps"])          # the noise is still drawn each step
