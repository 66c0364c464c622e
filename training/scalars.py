"""Rank 0's training scalars in ``<run dir>/tensorboard/``: ``scalars.jsonl`` always (one JSON object
per logged step: ``{"step": 10, "loss": 0.31, "lr": 1e-3, ...}``), plus TensorBoard event files when
the ``tensorboard`` package is installed (``tensorboard --logdir <run dir>/tensorboard``).

A resumed run appends: steps between its checkpoint and a crash appear twice, the later value last.
"""

from __future__ import annotations

import json
from pathlib import Path

from common import storage
from common.storage import S3Config

DIR_NAME = "tensorboard"
JSONL_NAME = "scalars.jsonl"


class ScalarLog:
    def __init__(self, run_dir: str, s3: S3Config | None = None):
        self.uri = storage.join(run_dir, DIR_NAME)
        self.s3 = s3
        self.remote = storage.is_remote(run_dir)
        self._lines: list[str] = []
        if self.remote and storage.exists(storage.join(self.uri, JSONL_NAME), s3):
            self._lines = storage.read_bytes(storage.join(self.uri, JSONL_NAME), s3).decode().splitlines()
        self._writer = None
        if not self.remote:
            Path(self.uri).mkdir(parents=True, exist_ok=True)
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional: the JSON lines carry the same scalars
                SummaryWriter = None
            if SummaryWriter is not None:
                self._writer = SummaryWriter(self.uri)

    def log(self, metrics: dict) -> None:
        step = int(metrics["step"])
        line = json.dumps({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        if self._writer is not None:
            for key, value in metrics.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._writer.add_scalar(key, value, step)
            self._writer.flush()
        if self.remote:  # objects cannot be appended to: rewrite the (small) file
            self._lines.append(line)
            storage.write_bytes(storage.join(self.uri, JSONL_NAME), ("\n".join(self._lines) + "\n").encode(), self.s3)
        else:
            with open(Path(self.uri) / JSONL_NAME, "a") as f:
                f.write(line + "\n")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
