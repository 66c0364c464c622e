"""``batches_forever`` keeps a small share of the data in memory after its first epoch and reshuffles it
for the next ones (no streaming read per epoch); a share over ``data.cache_mb`` keeps streaming."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from training.config import DataConfig, TrainConfig
from training.loop import batches_forever

pytestmark = [pytest.mark.ray, pytest.mark.slow]


class Counting:
    """A real Ray Data iterator, counting how often a streaming epoch is started."""

    def __init__(self, iterator):
        self.iterator, self.epochs = iterator, 0

    def iter_batches(self, **kwargs):
        self.epochs += 1
        return self.iterator.iter_batches(**kwargs)


def run(ray, cache_mb: float, steps: int):
    dataset = ray.data.from_items([{"key": f"k{i:02d}", "x": np.full(64, i, np.float32)} for i in range(22)])
    shard = Counting(dataset.iterator())
    cfg = dataclasses.replace(TrainConfig(), batch_size_per_worker=4, seed=3,
                              data=DataConfig(shuffle_buffer=0, cache_mb=cache_mb))
    drawn = list(itertools.islice(batches_forever(shard, cfg), steps))
    return shard.epochs, drawn


@pytest.mark.timeout(120)
def test_small_share_is_cached_and_reshuffled_per_epoch(ray_local):
    epochs, drawn = run(ray_local, cache_mb=1.0, steps=5 * 5)        # 22 samples, batch 4: 5 batches an epoch
    assert epochs == 1                                                 # one streaming read, then memory
    by_epoch = {}
    for epoch, batch in drawn:
        assert (batch["x"][:, 0] == [int(k[1:]) for k in batch["key"]]).all()   # columns stay aligned
        by_epoch.setdefault(epoch, []).extend(batch["key"].tolist())
    assert sorted(by_epoch) == [0, 1, 2, 3, 4]
    first = by_epoch[0]
    for epoch in (1, 2, 3, 4):
        assert len(set(by_epoch[epoch])) == 20 and set(by_epoch[epoch]) <= set(first)   # the kept share, no repeats
    assert len({tuple(by_epoch[e]) for e in (1, 2, 3, 4)}) == 4        # a new order every epoch


@pytest.mark.timeout(120)
def test_share_over_the_limit_or_cache_off_streams_every_epoch(ray_local):
    for cache_mb in (0.0, 1e-4):                                        # off; 100 bytes < one batch
        epochs, drawn = run(ray_local, cache_mb=cache_mb, steps=5 * 3)
        assert epochs == 3, cache_mb
        assert [e for e, _ in drawn] == [0] * 5 + [1] * 5 + [2] * 5
