"""Two variables, one of them on three levels: train, load, forecast, and per-channel
statistics that survive the round trip through the run directory."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import physforecast as pf
from physforecast.config import Config, apply_overrides
from physforecast.run_dir import RunDir
from physforecast.training.run import train


def two_variable_file(path) -> str:
    rng = np.random.default_rng(1)
    n, t, s = 6, 8, 16
    g = np.arange(s) / s
    y, x = np.meshgrid(g, g, indexing="ij")
    phase = rng.uniform(0, 2 * np.pi, (n, 1, 1, 1))
    time = np.arange(t)[None, :, None, None]
    u = np.sin(2 * np.pi * (x + 0.1 * time) + phase)
    level_scale = np.array([1.0, 10.0, 100.0])[None, None, :, None, None]
    temp = 250.0 + level_scale * (np.cos(2 * np.pi * (y - 0.05 * time) + phase))[:, :, None]
    ds = xr.Dataset(
        {
            "u": (("trajectory", "time", "y", "x"), u.astype("float32"), {"units": "m s-1"}),
            "t": (
                ("trajectory", "time", "level", "y", "x"),
                temp.astype("float32"),
                {"units": "K"},
            ),
        },
        coords={"level": [850.0, 500.0, 250.0], "y": g, "x": g, "time": np.arange(t, dtype=float)},
    )
    out = path / "two.nc"
    ds.to_netcdf(out)
    return str(out)


@pytest.mark.parametrize("per", ["channel", "variable"])
def test_two_variables_with_levels_train_and_forecast(tmp_path, per):
    source = two_variable_file(tmp_path)
    cfg = apply_overrides(
        Config(),
        [
            f"data.dataset={source}",
            "data.variables=[u, t]",
            f"data.normalize={per}",
            "data.in_steps=2",
            "data.out_steps=2",
            "data.split=[0.5, 0.25, 0.25]",
            "model.options={modes: 4, hidden: 8, n_layers: 1}",
            "train.epochs=1",
            f"out={tmp_path / 'run'}",
        ],
    )
    run_dir = train(cfg, evaluate=True)
    run = RunDir(run_dir)
    norm = run.read_normalizer()
    assert norm.channels == ["u", "t[level=0]", "t[level=1]", "t[level=2]"] and norm.per == per
    if per == "channel":  # the levels' spreads (1, 10, 100 K) are kept apart
        assert norm.std[3] / norm.std[1] == pytest.approx(100, rel=0.05)
    else:
        assert norm.std[1] == norm.std[2] == norm.std[3]
    assert run.read_data_spec().layout.widths == [1, 3]
    fc = pf.load(run_dir)
    ds = xr.open_dataset(source)
    out = pf.rollout(fc, ds, 3, init=[3])
    assert out["t"].dims == ("sample", "lead_time", "level", "y", "x")
    assert out["u"].dims == ("sample", "lead_time", "y", "x")
    np.testing.assert_array_equal(out["level"].values, [850.0, 500.0, 250.0])
    assert np.isfinite(out["t"].values).all()
    # back in physical units at each level: within a fraction of that level's (or, per
    # variable, the pooled) spread of the truth, 250 K on average
    tolerance = {"channel": 5.0, "variable": 30.0}[per]
    assert abs(float(out["t"].isel(level=0).mean()) - 250.0) < tolerance
    card = xr.open_dataset(run_dir / "scorecard.nc")
    assert set(card["variable"].values.tolist()) == {"u", "t_850", "t_500", "t_250"}
    with pytest.raises(ValueError, match="levels"):
        pf.rollout(fc, ds.isel(level=[0, 1]), 2)
