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


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A one-epoch FNO on a 6-trajectory ns2d set, trained once per test session."""
    from physforecast.config import Config, apply_overrides
    from physforecast.training.run import train

    path = tmp_path_factory.getbasetemp() / "tiny-ns2d-fno-run"
    if not (path / "checkpoints" / "best.pt").exists():
        cfg = apply_overrides(
            Config(),
            [
                "train.epochs=1",
                "data.options.n_trajectories=6",
                "data.options.n_steps=12",
                "data.in_steps=2",
                "data.out_steps=2",
                "data.split=[0.5,0.25,0.25]",
                "model.options.hidden=8",
                "model.options.modes=4",
                f"out={path}",
            ],
        )
        train(cfg, evaluate=False)
    return path
