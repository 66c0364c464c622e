"""Load DeepSpeed checkpoints with ``torch.load(weights_only=True)``.

DeepSpeed's own engine unpickles arbitrary objects (``weights_only=False``). Checkpoints live in
shared storage that other jobs can write, so codiray swaps in a loader that only accepts tensors,
plain containers and the few DeepSpeed/PyTorch types a ZeRO checkpoint really holds.
"""

from __future__ import annotations

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
