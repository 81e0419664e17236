"""Small ns2d party files shared by the federated tests."""

from __future__ import annotations

import pytest

pytest.importorskip("tenseal")
pytest.importorskip("phe")


def _write(tmp_path_factory, name: str, n_trajectories: int, seed: int, n_steps: int = 8):
    from physforecast.data import open_dataset, write_dataset

    path = tmp_path_factory.getbasetemp() / "federated-data" / f"{name}.nc"
    if not path.exists():
        ds = open_dataset(
            "ns2d",
            options={
                "n_trajectories": n_trajectories,
                "size": 32,
                "n_steps": n_steps,
                "seed": seed,
                "progress": False,
            },
        )
        write_dataset(ds, path)
    return path


@pytest.fixture(scope="session")
def party_files(tmp_path_factory):
    """Three tiny parties: ``a`` and ``b`` (6 trajectories each) and ``c`` (4)."""
    return [
        _write(tmp_path_factory, "a", 6, 11),
        _write(tmp_path_factory, "b", 6, 12),
        _write(tmp_path_factory, "c", 4, 13),
    ]


@pytest.fixture(scope="session")
def transfer_files(tmp_path_factory):
    """A data-rich source (16 trajectories) and a data-poor target (4)."""
    return (
        _write(tmp_path_factory, "source", 16, 1, n_steps=10),
        _write(tmp_path_factory, "target", 4, 2, n_steps=10),
    )


def _tiny_config(**overrides):
    from physforecast.federated.runner import FederatedConfig

    base = dict(
        backbone_options={"hidden": 4, "padding_mode": "circular"},
        split=(0.5, 0.25, 0.25),
        rounds=1,
        local_steps=2,
        batch_size=4,
        finetune_steps=0,
        round_timeout=60.0,
        setup_timeout=180.0,
    )
    base.update(overrides)
    return FederatedConfig(**base)


@pytest.fixture
def tiny_config():
    """``tiny_config(**overrides)``: a config small enough for a test (U-Net, 4 channels, 1 round)."""
    return _tiny_config
