"""Tiny local tokenizers (built from a toy vocabulary, nothing downloaded) and the debug codecs config."""

from __future__ import annotations

import pytest
import torch

# One toy vocabulary for the tests and the debug schedules: training/debug_codecs.py.
from training.debug_codecs import debug_codecs_config, write_tokenizers


@pytest.fixture(scope="session")
def tokenizer_dirs(tmp_path_factory):
    return write_tokenizers(tmp_path_factory.mktemp("tokenizers"))


@pytest.fixture
def debug_cfg(tokenizer_dirs):
    torch.manual_seed(0)
    return debug_codecs_config(tokenizer_dirs)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread is several times faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
