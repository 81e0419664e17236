"""Shared fixtures. Tests run on CPU with one thread so that they time the same on 2 cores."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault(
    "PHYSFORECAST_CACHE", os.path.join(os.path.dirname(__file__), "..", ".cache", "tests")
)
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
