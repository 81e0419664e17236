"""``physforecast train --dataset PATH --variables ...`` on files in the field's formats."""

from __future__ import annotations

import json

import h5py
import numpy as np
import xarray as xr

from physforecast.cli import main

SMALL = [
    "model.options.hidden=8",
    "model.options.modes=3",
    "data.in_steps=2",
    "data.out_steps=2",
    "data.batch_size=4",
]


def test_train_on_lat_lon_netcdf_with_land(tmp_path):
    rng = np.random.default_rng(0)
    t, ny, nx = 40, 8, 12
    base = np.sin(np.linspace(0, 6, t))[:, None, None] + 0.1 * rng.normal(size=(t, ny, nx))
    sst = (280 + base).astype(np.float32)
    sst[:, 2:4, 3:6] = np.nan  # land
    ds = xr.Dataset(
        {
            "sst": (
                ("t", "lat", "lon"),
                sst,
                {"units": "K", "long_name": "sea surface temperature"},
            ),
            "ssh": (
                ("t", "lat", "lon"),
                (sst - 280) * 0.1,
                {"units": "m", "long_name": "sea surface height"},
            ),
        },
        coords={
            "t": ("t", np.arange(float(t)), {"units": "days since 2000-01-01"}),
            "lat": ("lat", np.linspace(40, -40, ny), {"units": "degrees_north"}),
            "lon": ("lon", np.linspace(0, 330, nx), {"units": "degrees_east"}),
        },
    )
    path = tmp_path / "ocean.nc"
    ds.to_netcdf(path)
    out = tmp_path / "run"
    args = [
        "train",
        "--dataset",
        str(path),
        "--variables",
        "sst,ssh",
        "--epochs",
        "1",
        "--out",
        str(out),
    ]
    assert main([*args, "--set", *SMALL, "data.split=[0.6,0.2,0.2]"]) == 0
    fc = xr.open_dataset(out / "forecasts.nc")
    assert fc.sst.dims == ("sample", "lead_time", "latitude", "longitude")
    land = {"latitude": ds.lat.values[2:4], "longitude": ds.lon.values[3:6]}
    assert np.isnan(fc.sst.sel(land).values).all()  # land stays land in the forecast
    assert int(np.isnan(fc.sst.isel(sample=0, lead_time=0)).sum()) == 2 * 3
    assert np.isfinite(
        fc.sst.sel(latitude=ds.lat.values[0], longitude=ds.lon.values[0]).values
    ).all()
    assert abs(float(np.nanmean(fc.sst)) - 280) < 5  # physical units, normalization undone
    card = json.loads((out / "scorecard.json").read_text())
    assert "sst" in json.dumps(card) and "ssh" in json.dumps(card)


def test_train_on_pdebench_seed_groups(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "2D_diff-react_NA_NA.h5"
    with h5py.File(path, "w") as f:
        for i in range(10):
            g = f.create_group(f"{i:04d}")
            g["data"] = rng.normal(size=(8, 8, 8, 2)).astype(np.float32)  # [T, X, Y, C]
            g["grid/x"] = np.linspace(-1, 1, 8)
            g["grid/y"] = np.linspace(-1, 1, 8)
            g["grid/t"] = np.linspace(0, 5, 8)
    out = tmp_path / "run"
    assert (
        main(["train", "--dataset", str(path), "--epochs", "1", "--out", str(out), "--set", *SMALL])
        == 0
    )
    spec = json.loads((out / "data.json").read_text())
    assert spec["in_channels"] == 2 and spec["shape"] == [8, 8]
