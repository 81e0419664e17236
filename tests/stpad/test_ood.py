"""The OOD protocol: a split by a physical parameter, usable by any method."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from stpad_helpers import toy_ns_file

from physforecast.config import Config, apply_overrides
from physforecast.data.ood import OOD_SPLITS, parse_ood
from physforecast.data.prepare import prepare_data
from physforecast.errors import ConfigError
from physforecast.training.run import train

LOW, HIGH = 5e-4, 2e-3


def _ns2d_cfg(**over) -> Config:
    items = {
        "data.dataset": "ns2d",
        "data.options": "{n_trajectories: 16, size: 16, n_steps: 5, "
        "viscosity_range: [1.0e-4, 1.0e-2], progress: false}",
        "data.in_steps": 2,
        "data.out_steps": 1,
        "data.params": "[viscosity]",
        "data.split": "[0.6, 0.2, 0.2]",
        "data.ood": f"{{param: viscosity, train_range: [{LOW}, {HIGH}]}}",
        **over,
    }
    return apply_overrides(Config(), [f"{k}={v}" for k, v in items.items()])


def _window_viscosities(windows, ds) -> np.ndarray:
    traj = np.asarray(windows.selection["trajectory"])
    nu = ds["viscosity"].values
    return np.array([nu[traj[windows.locate(i)[0]]] for i in range(len(windows))])


def test_ood_split_of_ns2d_keeps_every_test_ood_window_outside_the_training_range():
    data = prepare_data(_ns2d_cfg())
    ds = data.dataset
    nu = ds["viscosity"].values
    assert ((nu >= LOW) & (nu <= HIGH)).any() and ((nu < LOW) | (nu > HIGH)).any()
    for name in ("train", "val", "test"):
        inside = _window_viscosities(getattr(data, name), ds)
        assert len(inside) and ((inside >= LOW) & (inside <= HIGH)).all(), name
    assert set(data.extra) <= set(OOD_SPLITS) and "test_ood" in data.extra
    for name, windows in data.extra.items():
        values = _window_viscosities(windows, ds)
        assert len(values) and not ((values >= LOW) & (values <= HIGH)).any(), name
    if "test_ood_below" in data.extra:
        assert (_window_viscosities(data.extra["test_ood_below"], ds) < LOW).all()
    if "test_ood_above" in data.extra:
        assert (_window_viscosities(data.extra["test_ood_above"], ds) > HIGH).all()
    # every trajectory is in exactly one of train/val/test/val_ood/test_ood
    parts = [data.train, data.val, data.test] + [
        data.extra[k] for k in ("val_ood", "test_ood") if k in data.extra
    ]
    seen = np.concatenate([np.asarray(w.selection["trajectory"]) for w in parts])
    assert sorted(seen.tolist()) == list(range(ds.sizes["trajectory"]))
    # the normalization saw the training range only
    train_nu = nu[np.asarray(data.train.selection["trajectory"])]
    stat = np.log10(train_nu) if data.normalizer.param_log[0] else train_nu
    assert data.normalizer.param_mean[0] == pytest.approx(stat.mean())


def test_ood_option_errors():
    assert parse_ood({}) is None
    with pytest.raises(ConfigError, match="needs 'param'"):
        parse_ood({"param": "viscosity"})
    with pytest.raises(ConfigError, match="low <= high"):
        parse_ood({"param": "viscosity", "train_range": [2, 1]})
    with pytest.raises(ConfigError, match="unknown key"):
        parse_ood({"param": "viscosity", "train_range": [1, 2], "test": 1})
    with pytest.raises(ConfigError, match="both must be non-empty"):
        prepare_data(_ns2d_cfg(**{"data.ood": "{param: viscosity, train_range: [1.0, 2.0]}"}))


def test_a_supervised_run_reports_in_and_out_of_distribution_side_by_side(tmp_path, capsys):
    items = {
        "data.dataset": toy_ns_file(tmp_path),
        "data.in_steps": 2,
        "data.out_steps": 2,
        "data.batch_size": 8,
        "data.params": "[viscosity]",
        "data.split": "[0.6, 0.2, 0.2]",
        "data.ood": "{param: viscosity, train_range: [5.0e-4, 2.0e-3]}",
        "model.backbone": "fno",
        "model.options": "{modes: 4, hidden: 8, n_layers: 2}",
        "train.epochs": 1,
        "train.device": "cpu",
        "out": str(tmp_path / "run"),
    }
    cfg = apply_overrides(Config(), [f"{k}={v}" for k, v in items.items()])
    run = train(cfg)
    out = capsys.readouterr().out
    assert "in and out of distribution" in out and "ood/in" in out
    card = json.loads((run / "scorecard_ood.json").read_text())
    assert {"in", "test_ood"} <= set(card)
    rmse_in = card["in"]["metrics"]["rmse"]["variables"]["vorticity"]["summary"]
    main = json.loads((run / "scorecard.json").read_text())
    assert rmse_in == pytest.approx(main["metrics"]["rmse"]["variables"]["vorticity"]["summary"])
    rmse_out = card["test_ood"]["metrics"]["rmse"]["variables"]["vorticity"]["summary"]
    assert math.isfinite(rmse_out) and rmse_out != rmse_in
