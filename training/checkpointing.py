"""Load DeepSpeed checkpoints with ``torch.load(weights_only=True)``; fingerprint training state.

DeepSpeed's own engine unpickles arbitrary objects (``weights_only=False``). Checkpoints live in
shared storage that other jobs can write, so codiray swaps in a loader that only accepts tensors,
plain containers and the few DeepSpeed/PyTorch types a ZeRO checkpoint really holds.

``state_digest`` is a SHA-256 over every tensor (and number) of a nested state, so each rank can
state in its checkpoint record exactly which weights and optimizer state it held.
"""

from __future__ import annotations

import hashlib
import numbers

import torch


def _allowed_globals() -> list:
    """Non-tensor types found in DeepSpeed ZeRO-0..2 checkpoints, fp32 and bf16 (tests/training/test_deepspeed_checkpoints.py)."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    import argparse
    import collections

    return [ZeroStageEnum, LossScaler, fragment_address, argparse.Namespace, collections.OrderedDict,
            collections.defaultdict, set, dict]


def safe_load(path: str, map_location=None):
    """``torch.load`` restricted to weights and an allowlist of checkpoint metadata types."""
    with torch.serialization.safe_globals(_allowed_globals()):
        return torch.load(path, map_location=map_location, weights_only=True)


def use_safe_checkpoint_loading(engine) -> None:
    """Make ``engine.load_checkpoint`` read every file through ``safe_load``."""
    engine.checkpoint_engine.load = safe_load


def _feed(hasher, path: str, value) -> None:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous().reshape(-1)
        hasher.update(f"{path}:{tensor.dtype}:{tuple(value.shape)}:".encode())
        hasher.update(tensor.view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        for key in sorted(value, key=str):
            _feed(hasher, f"{path}/{key}", value[key])
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _feed(hasher, f"{path}/{index}", item)
    elif isinstance(value, (numbers.Number, str)) or value is None:
        hasher.update(f"{path}={value!r};".encode())
    # other objects (loss scalers, fragment addresses) carry no training state of their own


def state_digest(state) -> str:
    """SHA-256 of every tensor, number and string in a nested dict/list state (keys sorted)."""
    hasher = hashlib.sha256()
    _feed(hasher, "", state)
    return hasher.hexdigest()
