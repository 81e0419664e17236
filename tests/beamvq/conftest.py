"""Fixtures of the BeamVQ tests: a tiny backbone."""

from __future__ import annotations

import pytest
import torch
from beamvq_helpers import TinyBackbone


@pytest.fixture
def tiny_backbone() -> TinyBackbone:
    torch.manual_seed(0)
    return TinyBackbone()
