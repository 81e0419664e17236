"""The four simulators of this folder follow the dataset convention and are seeded."""

from __future__ import annotations

import numpy as np
import pytest

from physforecast.registry import DATASETS

TINY = {
    "shallow_water": dict(n_trajectories=2, size=12, n_steps=3, dt=0.02),
    "rayleigh_benard": dict(n_trajectories=2, size=(8, 16), n_steps=3, dt=0.2, spinup=0.0),
    "reaction_diffusion": dict(n_trajectories=2, size=12, n_steps=3),
    "storms": dict(n_trajectories=2, size=16, n_steps=3),
}


@pytest.mark.parametrize("name", sorted(TINY))
def test_convention(name):
    entry = DATASETS.entry(name)
    assert entry.meta["kind"] == "simulator" and entry.meta["description"]
    ds = DATASETS.create(name, seed=3, progress=False, **TINY[name])
    opts = TINY[name]
    fields = [v for v in ds.data_vars if "time" in ds[v].dims]
    assert fields
    for v in fields:
        da = ds[v]
        assert da.dims == ("trajectory", "time", "y", "x")
        assert da.shape[:2] == (opts["n_trajectories"], opts["n_steps"])
        assert da.dtype == np.float32
        assert da.attrs["units"] and da.attrs["long_name"]
        assert np.isfinite(da.values).all()
    params = ds.attrs["parameters"].split(",")
    assert params and all(ds[p].dims == ("trajectory",) for p in params)
    for p in params:
        assert ds[p].attrs["units"] and ds[p].attrs["long_name"]
    for c in ("x", "y", "time"):
        assert "units" in ds[c].attrs
    assert ds.attrs["system"] == name
    for key in ("dx", "dy", "dt", "boundary_conditions"):
        assert key in ds.attrs
    assert np.isclose(ds.attrs["dt"], float(ds.time[1] - ds.time[0]))
    assert np.isclose(ds.attrs["dx"], float(ds.x[1] - ds.x[0]))
    assert np.isclose(ds.attrs["dy"], float(ds.y[1] - ds.y[0]))


@pytest.mark.parametrize("name", sorted(TINY))
def test_deterministic_by_seed(name):
    a = DATASETS.create(name, seed=5, progress=False, **TINY[name])
    b = DATASETS.create(name, seed=5, progress=False, **TINY[name])
    c = DATASETS.create(name, seed=6, progress=False, **TINY[name])
    for v in a.data_vars:
        np.testing.assert_array_equal(a[v].values, b[v].values)
    params = a.attrs["parameters"].split(",")
    assert not np.allclose(a[params[0]].values, c[params[0]].values)
    # Parameters differ between trajectories of one dataset.
    assert len(np.unique(a[params[0]].values)) == a.sizes["trajectory"]


@pytest.mark.parametrize("name", sorted(TINY))
def test_writes_to_netcdf(name, tmp_path):
    ds = DATASETS.create(name, seed=0, progress=False, **TINY[name])
    path = tmp_path / f"{name}.nc"
    ds.to_netcdf(path)
    import xarray as xr

    with xr.open_dataset(path) as back:
        for v in ds.data_vars:
            np.testing.assert_array_equal(back[v].values, ds[v].values)
        assert back.attrs["system"] == name
