"""The registered ``vae`` method: a tiny run end to end, its report, its refusals."""

from __future__ import annotations

import json

import pytest
import torch

from physforecast.config import Config, apply_overrides
from physforecast.errors import ConfigError
from physforecast.generative.method import VAEModel, clips_of
from physforecast.generative.vae import CausalVAE3D
from physforecast.registry import METHODS

BASE = [
    "method=vae",
    "train.epochs=1",
    "data.options.n_trajectories=6",
    "data.options.n_steps=10",
    "data.in_steps=2",
    "data.out_steps=3",
    "data.split=[0.5,0.25,0.25]",
    "vae.block_channels=[8,8,8]",
    "vae.latent_channels=2",
]


def test_vae_is_a_registered_method():
    assert "vae" in METHODS.names()


def test_clips_and_persistence_forecast():
    frames = torch.arange(7.0).reshape(1, 7, 1, 1, 1).expand(2, 7, 1, 4, 4)
    assert clips_of(frames, 4).shape == (2, 1, 5, 4, 4)
    torch.testing.assert_close(clips_of(frames, 4)[0, 0, :, 0, 0], torch.arange(5.0))
    torch.testing.assert_close(
        clips_of(frames, 4, last=True)[0, 0, :, 0, 0], torch.arange(2.0, 7.0)
    )
    vae = CausalVAE3D(
        1,
        latent_channels=2,
        spatial_compression=2,
        temporal_compression=4,
        block_channels=(8, 8, 8),
    )
    model = VAEModel(vae, in_steps=7, out_steps=3)
    out = model(torch.randn(2, 7, 1, 8, 8))
    assert out.shape == (2, 3, 1, 8, 8)
    torch.testing.assert_close(out[:, 0], out[:, 2])


def test_tiny_vae_run_reports_reconstruction_and_spectra(tmp_path, capsys):
    from physforecast.training.run import train

    cfg = apply_overrides(Config(), [*BASE, f"out={tmp_path / 'run'}"])
    train(cfg)
    report = json.loads((tmp_path / "run" / "vae_evaluation.json").read_text())
    assert report["clip_shape"] == [1, 5, 32, 32]
    assert report["latent_shape"] == [2, 2, 8, 8]
    assert 0 < report["rel_l2"] < 10
    assert len(report["spectrum"]) == 17 and all(row["truth"] >= 0 for row in report["spectrum"])
    assert (tmp_path / "run" / "checkpoints" / "vae" / "last.pt").exists()
    assert "relative L2" in capsys.readouterr().out
    # the run loads back as its model
    from physforecast.run_dir import RunDir

    loaded = RunDir(tmp_path / "run").load_model("best")
    assert isinstance(loaded.model, VAEModel) and loaded.model.vae.padding_mode == "circular"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.out_steps=1", "1 \\+ 4"),
        ("vae.spatial_compression=64", "divisible|halvings"),
        ("vae.padding_mode=mirror", "padding_mode"),
    ],
)
def test_vae_refuses_what_it_cannot_train(tmp_path, override, message):
    from physforecast.training.run import train

    cfg = apply_overrides(Config(), [*BASE, override, f"out={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match=message):
        train(cfg)
