"""DeepSpeed checkpoints are read with weights_only=True: tensors load, arbitrary objects do not."""

from __future__ import annotations

import collections
import pickle

import pytest
import torch

from training.checkpointing import safe_load


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_safe_load_reads_tensors_and_containers(tmp_path):
    state = {"w": torch.arange(4.0), "nested": collections.OrderedDict(step=3), "ids": [1, 2]}
    torch.save(state, tmp_path / "ok.pt")
    loaded = safe_load(str(tmp_path / "ok.pt"))
    assert torch.equal(loaded["w"], state["w"]) and loaded["nested"]["step"] == 3


def test_safe_load_refuses_arbitrary_objects(tmp_path):
    torch.save({"evil": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(pickle.UnpicklingError):
        safe_load(str(tmp_path / "evil.pt"))
