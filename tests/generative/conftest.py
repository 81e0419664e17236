"""A small conditional DiT trained once per session on a 2-D Gaussian whose mean moves
with one physical parameter (the toy distribution of the denoiser and distillation tests)."""

from __future__ import annotations

import pytest
import torch
from generative_helpers import toy_data


@pytest.fixture(scope="session")
def toy_teacher():
    pytest.importorskip("diffusers")
    from physforecast.generative import DiTDenoiser, FlowMatching

    torch.manual_seed(0)
    model = DiTDenoiser(2, cond_dim=1, hidden=32, depth=2, heads=2, patch=(1, 1, 1), rope=None)
    flow = FlowMatching(density="logit_normal")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        p = torch.rand(256, 1, generator=g) * 2 - 1
        flow.train_step(model, optimizer, toy_data(p, g), params=p, param_dropout=0.1, generator=g)
    model.eval()
    return model, flow
