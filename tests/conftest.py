"""Shared fixtures. Tests never touch the network: models come from prefixlab.engine.tiny."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def seed():
    """Seed torch's global generator so random prefixes and batches repeat run to run."""
    torch.manual_seed(1234)
    return 1234
