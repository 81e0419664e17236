"""predict / rollout / load: values against analytic forecasts, the blow-up guard, layouts,
clear errors on bad input, and parity with the evaluation path on a tiny trained run."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
from torch import nn

import physforecast as pf
from physforecast.data.normalization import Normalizer
from physforecast.forecast import Forecaster
from physforecast.forecast.rollout import RolloutBlowupError
from physforecast.metrics import truth_for, verify


class LinearExtrapolation(nn.Module):
    """Continues the last two frames linearly: ``y_k = x_-1 + k (x_-1 - x_-2)``."""

    def __init__(self, in_steps: int, out_steps: int, channels: int = 1) -> None:
        super().__init__()
        self.in_steps, self.out_steps = in_steps, out_steps
        self.in_channels = self.out_channels = channels
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        assert x.shape[1] == self.in_steps
        last, prev = x[:, -1], x[:, -2]
        k = torch.arange(1, self.out_steps + 1, dtype=x.dtype).view(1, -1, 1, 1, 1)
        return self.scale * (last[:, None] + k * (last - prev)[:, None])


class Multiply(nn.Module):
    """``y_k = factor^k x_-1`` (grows without bound when factor > 1)."""

    def __init__(self, factor: float, in_steps: int = 1, out_steps: int = 1) -> None:
        super().__init__()
        self.in_steps, self.out_steps, self.in_channels = in_steps, out_steps, 1
        self.factor = factor
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        k = torch.arange(1, self.out_steps + 1, dtype=x.dtype).view(1, -1, 1, 1, 1)
        return x[:, -1:] * self.factor**k


class EchoCond(nn.Module):
    """Outputs the (normalized) first parameter everywhere."""

    in_steps, out_steps, in_channels, cond_dim = 1, 2, 1, 1

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        assert cond is not None and cond.shape == (x.shape[0], 1)
        return cond[:, 0].view(-1, 1, 1, 1, 1).expand(-1, self.out_steps, *x.shape[2:])


def linear_dataset(n_traj: int = 3, n_time: int = 8, size: int = 8) -> xr.Dataset:
    """``u = a + b t`` per trajectory and point, with time coordinate 0.5, 1.0, ..."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(n_traj, 1, size, size))
    b = rng.normal(size=(n_traj, 1, size, size))
    t = np.arange(n_time)[None, :, None, None]
    u = (a + b * t).astype(np.float32)
    return xr.Dataset(
        {
            "u": (("trajectory", "time", "y", "x"), u, {"units": "m s-1", "long_name": "u"}),
            "viscosity": (("trajectory",), np.array([1e-3, 1e-2, 1e-1][:n_traj])),
        },
        coords={
            "trajectory": np.arange(10, 10 + n_traj),
            "time": ("time", 0.5 * (1 + np.arange(n_time)), {"units": "s"}),
            "y": ("y", np.arange(size) / size, {"units": "m"}),
            "x": ("x", np.arange(size) / size, {"units": "m"}),
        },
        attrs={"system": "toy", "dt": 0.5, "parameters": "viscosity"},
    )


def forecaster(module: nn.Module, **kw) -> Forecaster:
    return Forecaster(module, Normalizer(["u"], [0.3], [2.0]), **kw)


# ---------------------------------------------------------------- values


@pytest.mark.parametrize("t_in,t_out", [(2, 3), (3, 2), (2, 1), (4, 4)])
def test_rollout_continues_a_linear_series_exactly(t_in, t_out):
    """Autoregression feeds the right frames back: for u = a + b t the linear
    extrapolator's rollout is a + b (i + l) at every lead l, whatever T_in and T_out."""
    ds = linear_dataset()
    fc = forecaster(LinearExtrapolation(t_in, t_out))
    out = pf.rollout(fc, ds, 7, init=[4, 5])
    assert out["u"].dims == ("sample", "lead_time", "y", "x")
    assert out.sizes == {"sample": 6, "lead_time": 7, "y": 8, "x": 8}
    a = ds["u"].isel(time=0).values
    b = (ds["u"].isel(time=1) - ds["u"].isel(time=0)).values
    traj = np.repeat([0, 1, 2], 2)
    init = np.tile([4, 5], 3)
    lead = np.arange(1, 8)
    expected = a[traj, None] + b[traj, None] * (init[:, None] + lead[None, :])[..., None, None]
    np.testing.assert_allclose(out["u"].values, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(out["trajectory"].values, 10 + traj)
    np.testing.assert_array_equal(out["init_index"].values, init)
    np.testing.assert_array_equal(out["lead_time"].values, lead)
    assert out["lead_time"].attrs["units"] == "steps"
    # valid_time = init_time + lead * dt (time coordinate spacing 0.5 s)
    np.testing.assert_allclose(out["valid_time"].values, 0.5 * (1 + init[:, None] + lead))
    np.testing.assert_allclose(out["viscosity"].values, ds["viscosity"].values[traj])
    assert out["u"].attrs["units"] == "m s-1"
    assert out.attrs["system"] == "toy" and out.attrs["forecast_steps"] == 7
    assert out["x"].attrs["units"] == "m"


def test_predict_is_one_model_call_from_the_last_frames():
    ds = linear_dataset()
    fc = forecaster(LinearExtrapolation(2, 3))
    out = pf.predict(fc, ds)
    assert out.sizes["lead_time"] == 3 and out.sizes["sample"] == 3
    np.testing.assert_array_equal(out["init_index"].values, [7, 7, 7])
    last, prev = ds["u"].isel(time=-1).values, ds["u"].isel(time=-2).values
    expected = last[:, None] + np.arange(1, 4)[None, :, None, None] * (last - prev)[:, None]
    np.testing.assert_allclose(out["u"].values, expected, rtol=1e-4, atol=1e-4)
    assert out.attrs["forecast_method"] == "direct"


def test_forecaster_forward_is_in_physical_units():
    ds = linear_dataset()
    fc = forecaster(LinearExtrapolation(2, 1))
    x = torch.from_numpy(ds["u"].isel(time=slice(0, 2)).values[:, :, None]).double()
    y = fc(x)
    np.testing.assert_allclose(y[:, 0, 0].numpy(), ds["u"].isel(time=2).values, atol=1e-4)


def test_blowup_marks_nan_and_warns_per_sample():
    """Sample 0 grows 10x a step and passes 1e3 training std at lead 4; sample 1 (zeros)
    stays finite to the end."""
    u = np.stack([np.ones((2, 4, 4)), np.zeros((2, 4, 4))]).astype(np.float32)
    ds = xr.Dataset({"u": (("trajectory", "time", "y", "x"), u)})
    fc = Forecaster(Multiply(10.0), Normalizer(["u"], [0.0], [1.0]))
    with pytest.warns(RuntimeWarning, match=r"1 of 2 samples, first at lead time 4"):
        out = pf.rollout(fc, ds, 6)
    v = out["u"].values
    np.testing.assert_allclose(v[0, :3, 0, 0], [10.0, 100.0, 1000.0], rtol=1e-6)
    assert np.isnan(v[0, 3:]).all()
    assert np.isfinite(v[1]).all() and (v[1] == 0).all()
    with pytest.raises(RolloutBlowupError, match=r"sample 0 .*lead time 4"):
        pf.rollout(fc, ds, 6, on_blowup="raise")
    # within the guard: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pf.rollout(fc, ds, 3)


def test_blowup_guard_catches_non_finite_values():
    u = np.ones((1, 2, 4, 4), dtype=np.float32)
    ds = xr.Dataset({"u": (("trajectory", "time", "y", "x"), u)})
    fc = Forecaster(Multiply(float("inf")), Normalizer(["u"], [0.0], [1.0]))
    with pytest.warns(RuntimeWarning, match="blew up"):
        out = pf.rollout(fc, ds, 3)
    assert np.isnan(out["u"].values).all()


def test_masked_points_stay_nan_and_are_not_fed_back():
    ds = linear_dataset(n_traj=1)
    u = ds["u"].values.copy()
    u[:, :, :2, :2] = np.nan  # land
    ds["u"] = (ds["u"].dims, u, ds["u"].attrs)
    out = pf.rollout(forecaster(LinearExtrapolation(2, 2)), ds, 5, init=3)
    v = out["u"].values
    assert np.isnan(v[:, :, :2, :2]).all()
    a, b = ds["u"].isel(time=0).values, (ds["u"].isel(time=1) - ds["u"].isel(time=0)).values
    expected = a[0] + b[0] * (3 + np.arange(1, 6))[:, None, None]
    np.testing.assert_allclose(v[0, :, 2:, 2:], expected[:, 2:, 2:], rtol=1e-4, atol=1e-4)


def test_parameters_are_normalized_per_sample():
    ds = linear_dataset()
    norm = Normalizer(["u"], [1.0], [2.0], ["viscosity"], [-2.0], [0.5], [True])
    out = pf.predict(Forecaster(EchoCond(), norm), ds)
    cond = (np.log10(ds["viscosity"].values) + 2.0) / 0.5
    np.testing.assert_allclose(out["u"].values[:, 0, 0, 0], cond * 2.0 + 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match=r"conditioned on the physical parameter 'viscosity'"):
        pf.predict(Forecaster(EchoCond(), norm), ds.drop_vars("viscosity"))


def reanalysis_dataset(n_time: int = 6) -> xr.Dataset:
    rng = np.random.default_rng(1)
    t = pd.date_range("2020-01-01", periods=n_time, freq="6h")
    lat, lon = np.linspace(-60, 60, 6), np.arange(0, 360, 45.0)
    z = rng.normal(size=(n_time, 2, 6, 8)).astype(np.float32)
    return xr.Dataset(
        {"z": (("time", "level", "latitude", "longitude"), z, {"units": "m2 s-2"})},
        coords={
            "time": t,
            "level": ("level", [500, 850], {"units": "hPa"}),
            "latitude": ("latitude", lat, {"units": "degrees_north"}),
            "longitude": ("longitude", lon, {"units": "degrees_east"}),
        },
    )


class Persistence(nn.Module):
    def __init__(self, in_steps: int = 1, out_steps: int = 1, channels: int = 1) -> None:
        super().__init__()
        self.in_steps, self.out_steps, self.in_channels = in_steps, out_steps, channels
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return x[:, -1:].expand(-1, self.out_steps, -1, -1, -1)


def test_reanalysis_layout_init_times_and_levels():
    ds = reanalysis_dataset()
    fc = Forecaster(
        Persistence(2, 1, channels=2),
        Normalizer(["z"], [5.0], [3.0]),
        grid={"latitude": 6, "longitude": 8},
    )
    out = pf.rollout(fc, ds, 3, init=["2020-01-01T06", "2020-01-01T12"])
    assert out["z"].dims == ("init_time", "lead_time", "level", "latitude", "longitude")
    np.testing.assert_array_equal(out["init_index"].values, [1, 2])
    np.testing.assert_array_equal(out["init_time"].values, ds["time"].values[[1, 2]])
    expected_valid = ds["time"].values[[1, 2]][:, None] + np.timedelta64(6, "h") * np.arange(1, 4)
    np.testing.assert_array_equal(out["valid_time"].values, expected_valid)
    for i, t0 in enumerate([1, 2]):
        for lead in range(3):
            np.testing.assert_allclose(out["z"].values[i, lead], ds["z"].values[t0], atol=1e-6)
    np.testing.assert_array_equal(out["level"].values, [500, 850])
    assert out["latitude"].attrs["units"] == "degrees_north"
    # integer positions select the same forecasts
    same = pf.rollout(fc, ds, 3, init=[1, 2])
    np.testing.assert_array_equal(same["z"].values, out["z"].values)
    # the verifying truth and the scorecard (init_time becomes the scorecard's sample)
    truth = truth_for(out, ds)
    np.testing.assert_allclose(truth["z"].values[0, 0], ds["z"].values[2])
    with pytest.warns(UserWarning, match="ends before lead time 4"):
        card = verify(pf.rollout(fc, ds, 4, init=[1, 2]), ds, ["rmse"])
    assert np.isfinite(card["score"].values[0, :3]).all()
    assert np.isnan(card["score"].values[0, 3]).all()


# ---------------------------------------------------------------- bad input


def test_clear_errors_on_bad_input():
    ds = linear_dataset()
    fc = forecaster(LinearExtrapolation(3, 2), grid={"y": 8, "x": 8})
    with pytest.raises(ValueError, match=r"lacks variable\(s\) \['u'\].*has \['w', 'viscosity'\]"):
        pf.rollout(fc, ds.rename(u="w"), 2)
    with pytest.raises(ValueError, match=r"different grid \(y=4 x x=4\).*\(y=8 x x=8\)"):
        pf.rollout(fc, ds.isel(y=slice(0, 4), x=slice(0, 4)), 2)
    with pytest.raises(ValueError, match=r"different grid \(latitude=8"):
        pf.rollout(fc, ds.rename(y="latitude", x="longitude"), 2)
    with pytest.raises(ValueError, match=r"too short a history: the dataset has 2 time step"):
        pf.rollout(fc, ds.isel(time=slice(0, 2)), 2)
    with pytest.raises(ValueError, match=r"too short a history: init index 1 .*init must be >= 2"):
        pf.rollout(fc, ds, 2, init=[1, 5])
    with pytest.raises(ValueError, match="out of range"):
        pf.rollout(fc, ds, 2, init=[8])
    with pytest.raises(ValueError, match=r"not in the time coordinate"):
        pf.rollout(fc, ds, 2, init=[1.25])
    with pytest.raises(ValueError, match="needs a 'time' dim"):
        pf.rollout(fc, ds.isel(time=0), 2)
    with pytest.raises(ValueError, match="gives 2 channels"):
        pf.rollout(fc, ds.assign(u=ds["u"].expand_dims(level=2, axis=2)), 2)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        pf.rollout(fc, ds, 0)
    with pytest.raises(ValueError, match="on_blowup"):
        pf.rollout(fc, ds, 2, on_blowup="ignore")
    with pytest.raises(TypeError, match="Forecaster"):
        pf.rollout(LinearExtrapolation(3, 2), ds, 2)


# ---------------------------------------------------------------- a trained run


def test_load_and_predict_match_the_evaluation_path(tiny_run):
    """predict on the test trajectories = forecast_windows (what evaluate_run scores),
    and truth_for = the windows' truth."""
    from physforecast.data.prepare import prepare_data as prepare
    from physforecast.forecast import forecast_windows

    fc = pf.load(tiny_run)
    assert fc.variables == ["vorticity"] and fc.in_steps == 2 and fc.out_steps == 2
    assert fc.grid == {"y": 32, "x": 32} and fc.config.model.backbone == "fno"
    assert not fc.training
    prepared = prepare(fc.config, fc.normalizer)
    ref, ref_truth = forecast_windows(fc.model, prepared.test, fc.normalizer)
    trajs = np.unique(ref["trajectory"].values)
    inits = np.unique(ref["init_index"].values)
    out = pf.predict(fc, prepared.dataset.isel(trajectory=trajs), init=inits)
    np.testing.assert_array_equal(out["trajectory"].values, ref["trajectory"].values)
    np.testing.assert_array_equal(out["init_index"].values, ref["init_index"].values)
    np.testing.assert_allclose(out["vorticity"].values, ref["vorticity"].values, atol=1e-5)
    np.testing.assert_allclose(out["viscosity"].values, ref["viscosity"].values)
    truth = truth_for(out, prepared.dataset)
    np.testing.assert_allclose(truth["vorticity"].values, ref_truth["vorticity"].values)
    assert out.attrs["forecast_backbone"] == "fno"


def test_load_reads_the_grid_from_data_json_and_checks_files(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    # the flat data.json of a run written before channel layouts
    old = {"spatial_dims": ["y", "x"], "shape": [16, 16], "variables": ["vorticity"]}
    (run / "data.json").write_text(json.dumps({**old, "in_steps": 2, "out_steps": 2}))
    assert pf.load(run).grid == {"y": 16, "x": 16}
    with pytest.raises(FileNotFoundError, match=r"no checkpoint 'final'.*found \['best', 'last'\]"):
        pf.load(run, "final")
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        pf.load(tmp_path)
