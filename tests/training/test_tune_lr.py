"""``physforecast tune-lr`` on a tiny grid."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from physforecast.cli import main
from physforecast.training.surge import LRGrid, adam_optimal_lr, sgd_optimal_lr
from physforecast.training.tune_lr import default_lrs, law_for_optimizer

TINY = [
    "data.options.n_trajectories=6",
    "data.options.n_steps=10",
    "data.options.size=16",
    "data.in_steps=3",
    "data.out_steps=2",
    "model.options.hidden=8",
    "model.options.modes=4",
    "model.options.n_layers=2",
    "train.device=cpu",
    "train.comm_hook=dlcp",  # ignored: tune-lr trains on one process
]


def test_tune_lr_fits_plots_and_recommends(tmp_path, capsys):
    out = tmp_path / "tune"
    argv = ["tune-lr", "--batch-sizes", "2,4", "--lrs", "1e-3,1e-2,1e-1", "--examples", "8"]
    argv += ["--batch-size", "6", "--out", str(out), "--set", *TINY]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "lr_grid.json").read_text())
    assert (out / "surge.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary["batch_sizes"] == [2, 4] and summary["lrs"] == [1e-3, 1e-2, 1e-1]
    losses = np.array(summary["val_loss"], dtype=float)
    assert losses.shape == (2, 3) and np.isfinite(losses).all() and (losses > 0).all()
    # the best lrs are those of the grid's losses, the fits go through them
    best = LRGrid([2, 4], summary["lrs"], losses).best_lrs()
    np.testing.assert_allclose(summary["best_lrs"], best)
    adam = summary["fits"]["adam"]
    assert summary["law"] == "adam"  # train.optimizer adamw
    expected = adam_optimal_lr(6, adam["lr_max"], adam["b_noise"])
    assert summary["recommended_lr"] == pytest.approx(expected)
    for name, law in (("adam", adam_optimal_lr), ("sgd", sgd_optimal_lr)):
        fit = summary["fits"][name]  # the reported error is that of the reported fit
        residual = np.log(law(np.array([2.0, 4.0]), fit["lr_max"], fit["b_noise"])) - np.log(best)
        assert fit["rms_log_error"] == pytest.approx(np.sqrt(np.mean(residual**2)), abs=1e-9)
    assert f"recommended lr for batch size 6 (adam law): {expected:.3g}" in printed
    assert f"train.lr_b_noise={adam['b_noise']:.4g} train.lr_base_batch=6" in printed
    assert summary["examples_per_run"] == 8


def test_tune_lr_refuses_what_cannot_be_fitted(tmp_path, capsys):
    base = ["tune-lr", "--out", str(tmp_path / "t"), "--set", *TINY]
    assert main([*base, "--batch-sizes", "4"]) == 2
    assert "at least two distinct sizes" in capsys.readouterr().err
    assert main([*base, "--batch-sizes", "4,x"]) == 2
    assert "--batch-sizes '4,x' is not a comma-separated list of ints" in capsys.readouterr().err
    assert main([*base, "--batch-sizes", "4,512", "--examples", "512"]) == 2
    assert "larger than the" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


def test_defaults():
    lrs = default_lrs(1e-3)
    assert len(lrs) == 7 and lrs[0] == pytest.approx(1e-4) and lrs[-1] == pytest.approx(1e-2)
    assert math.isclose(lrs[3], 1e-3)
    assert law_for_optimizer("adamw") == "adam" and law_for_optimizer("momentum") == "sgd"
    assert law_for_optimizer("SGD") == "sgd" and law_for_optimizer("lamb") == "adam"
