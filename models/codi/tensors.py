"""Reading checkpoint tensors safely (safetensors, or torch files loaded weights-only) and the
conversion error that lists the tensors at fault."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from common.errors import UsageError

_LIST = 20   # tensors named in an error before "… and N more"


class ConversionError(UsageError):
    """A checkpoint cannot be converted; the message names the file and the tensors at fault."""


def listing(items: list[str]) -> str:
    shown = ", ".join(items[:_LIST])
    return shown + (f" … and {len(items) - _LIST} more" if len(items) > _LIST else "")


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a .safetensors file or a weights-only torch file (never unpickles code)."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # weights_only refusals, corrupt files, safetensors header errors
        problem = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise ConversionError(f"{path}: cannot read tensors ({type(err).__name__}: {problem})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]   # Lightning-style wrapper (SD .ckpt files)
    if not isinstance(state, dict):
        raise ConversionError(f"{path}: expected a state dict (name → tensor), got {type(state).__name__}")
    bad = [str(k) for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise ConversionError(f"{path}: entries that are not tensors: {listing(bad)}")
    return state
