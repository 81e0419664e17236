"""``physforecast forecast RUN_DIR --input PATH --steps N --out PATH`` on a tiny trained run."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import physforecast as pf
from physforecast.cli import main
from physforecast.data.io import open_dataset, write_dataset

OPTIONS = {"n_trajectories": 6, "n_steps": 12}


@pytest.fixture(scope="module")
def source():
    return open_dataset("ns2d", options=OPTIONS).load()


@pytest.fixture(scope="module")
def input_file(source, tmp_path_factory):
    return write_dataset(source, tmp_path_factory.mktemp("input") / "ns2d.nc")


def test_forecast_writes_a_rollout_that_plain_xarray_opens(tiny_run, source, input_file, tmp_path):
    out = tmp_path / "forecast.nc"
    rc = main(
        ["forecast", str(tiny_run), "--input", str(input_file), "--steps", "5", "--out", str(out)]
    )
    assert rc == 0
    with xr.open_dataset(out) as ds:
        assert ds["vorticity"].dims == ("sample", "lead_time", "y", "x")
        assert ds.sizes == {"sample": 6, "lead_time": 5, "y": 32, "x": 32}
        assert ds.attrs["forecast_method"] == "autoregressive rollout"
        assert ds["vorticity"].attrs["units"] == "s-1"
        np.testing.assert_allclose(ds["valid_time"].values[0], 6.0 + 0.5 * np.arange(1, 6))
        api = pf.rollout(pf.load(tiny_run), source, 5)
        np.testing.assert_allclose(ds["vorticity"].values, api["vorticity"].values, atol=1e-6)
        np.testing.assert_allclose(ds["viscosity"].values, source["viscosity"].values)
    zarr_out = tmp_path / "forecast.zarr"
    assert (
        main(["forecast", str(tiny_run), "--input", str(input_file), "--out", str(zarr_out)]) == 0
    )
    with xr.open_dataset(zarr_out, engine="zarr") as ds:
        assert ds.sizes["lead_time"] == 2  # the model's own horizon by default


def test_forecast_plots_and_truth(tiny_run, input_file, tmp_path):
    out = tmp_path / "forecast.nc"
    argv = ["forecast", str(tiny_run), "--input", str(input_file), "--steps", "3"]
    assert main([*argv, "--init", "4", "6", "--out", str(out), "--plots"]) == 0
    plots = tiny_run / "plots"
    for name in ("rollout.gif", "rollout_spectra.png", "rollout_panel.png"):
        assert (plots / name).stat().st_size > 0
    with xr.open_dataset(out) as ds:
        np.testing.assert_array_equal(ds["init_index"].values, np.tile([4, 6], 6))


def test_forecast_bad_input_exits_with_a_clear_error(tiny_run, source, tmp_path, capsys):
    cases = [
        (source.rename(vorticity="w"), r"lacks variable(s) ['vorticity']"),
        (source.isel(y=slice(0, 16), x=slice(0, 16)), "different grid (y=16 x x=16)"),
        (source.isel(time=slice(0, 1)), "too short a history"),
    ]
    for i, (ds, message) in enumerate(cases):
        path = write_dataset(ds, tmp_path / f"bad{i}.nc")
        out = tmp_path / f"out{i}.nc"
        rc = main(["forecast", str(tiny_run), "--input", str(path), "--out", str(out)])
        assert rc == 2
        assert message in capsys.readouterr().err
        assert not out.exists()
    rc = main(["forecast", str(tmp_path), "--input", str(path), "--out", str(out)])
    assert rc == 2 and "not a run directory" in capsys.readouterr().err
