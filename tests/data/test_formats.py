"""Readers for real file layouts, each exercised on small files written here in that layout."""

from __future__ import annotations

import pickle

import h5py
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from physforecast.data import hdf5
from physforecast.data.formats import (
    open_any,
    open_cf,
    open_pdebench,
    open_the_well,
    open_weatherbench,
    sniff_format,
)
from physforecast.errors import DataFormatError

RNG = np.random.default_rng(0)


# -- CF netCDF / zarr -------------------------------------------------------------------


def _odd_cf(tmp_path, name="odd.nc", land=False):
    """netCDF with non-canonical names: dims (t, lat, lon), CF units, land NaN if asked."""
    sst = RNG.normal(size=(5, 4, 6)).astype(np.float32)
    if land:
        sst[:, 1:3, 2:4] = np.nan
    ds = xr.Dataset(
        {"sst": (("t", "lat", "lon"), sst, {"units": "K", "long_name": "sea surface temperature"})},
        coords={
            "t": ("t", np.arange(5.0), {"units": "days since 2000-01-01"}),
            "lat": ("lat", np.linspace(30, -30, 4), {"units": "degrees_north"}),
            "lon": ("lon", np.linspace(0, 300, 6), {"units": "degrees_east"}),
        },
    )
    path = tmp_path / name
    ds.to_netcdf(path)
    return path, sst


def test_cf_netcdf_renamed_ordered_and_lazy(tmp_path):
    path, sst = _odd_cf(tmp_path)
    ds = open_any(path)
    assert ds.sst.dims == ("time", "latitude", "longitude")
    assert ds.sst.chunks is not None  # dask-backed
    assert ds.sst.data.chunks[0] == (1,) * 5  # one frame per chunk
    assert np.all(np.diff(ds.latitude.values) > 0)  # reversed to increase
    np.testing.assert_array_equal(ds.sst.values, sst[:, ::-1])
    assert np.issubdtype(ds.time.dtype, np.datetime64)
    assert ds.sst.attrs["units"] == "K"
    assert "valid_mask" not in ds  # nothing missing, nothing added


def test_land_nan_becomes_a_mask(tmp_path):
    path, sst = _odd_cf(tmp_path, land=True)
    ds = open_any(path)
    mask = ds.valid_mask.sel(variable="sst").values  # (latitude, longitude)
    expected = np.isfinite(sst[0, ::-1])
    np.testing.assert_array_equal(mask, expected)
    assert ds.attrs["mask_variable"] == "valid_mask"
    np.testing.assert_array_equal(ds.sst.values, sst[:, ::-1])  # NaN kept by default
    filled = open_any(path, fill_value=0.0)
    values = filled.sst.values
    assert not np.isnan(values).any()
    assert np.all(values[:, ~expected] == 0)
    np.testing.assert_array_equal(values[:, expected], sst[:, ::-1][:, expected])
    assert "valid_mask" not in open_any(path, mask="none")


def _weatherbench_zarr(tmp_path, zarr_format=2):
    """WeatherBench 2 layout: (time, level, longitude, latitude), latitude from +90 down."""
    time = pd.date_range("2020-01-01", periods=6, freq="6h")
    level = np.array([250, 500, 850], dtype=np.int64)
    lat = np.linspace(90, -90, 5)
    lon = np.arange(0, 360, 45.0)
    z = RNG.normal(size=(6, 3, 8, 5)).astype(np.float32)
    t2m = RNG.normal(size=(6, 8, 5)).astype(np.float32)
    ds = xr.Dataset(
        {
            "geopotential": (("time", "level", "longitude", "latitude"), z, {"units": "m2 s-2"}),
            "2m_temperature": (("time", "longitude", "latitude"), t2m, {"units": "K"}),
        },
        coords={
            "time": time,
            "level": ("level", level, {"units": "hPa"}),
            "latitude": lat,
            "longitude": lon,
        },
    )
    path = tmp_path / "era5.zarr"
    ds.chunk({"time": 2}).to_zarr(path, zarr_format=zarr_format, consolidated=zarr_format == 2)
    return path, ds


def test_weatherbench_levels_and_canonical_order(tmp_path):
    path, ref = _weatherbench_zarr(tmp_path)
    assert sniff_format(path) == "zarr"
    ds = open_weatherbench(path, levels=[850, 500])
    assert ds.geopotential.dims == ("time", "level", "latitude", "longitude")
    assert ds["2m_temperature"].dims == ("time", "latitude", "longitude")
    assert ds.level.values.tolist() == [850, 500]
    assert ds.geopotential.data.chunks[0] == (2, 2, 2)  # the store's own chunks
    expected = ref.geopotential.sel(level=[850, 500]).transpose(
        "time", "level", "latitude", "longitude"
    )
    np.testing.assert_array_equal(ds.geopotential.values, expected.values[:, :, ::-1])
    assert ds.latitude.values[0] == -90


def test_weatherbench_split_levels_and_selection(tmp_path):
    path, ref = _weatherbench_zarr(tmp_path)
    ds = open_any(path, variables=["geopotential"], levels=[500], split_levels=True)
    assert list(ds.data_vars) == ["geopotential_500"]
    assert ds.geopotential_500.dims == ("time", "latitude", "longitude")
    assert ds.geopotential_500.attrs["level"] == 500
    np.testing.assert_array_equal(
        ds.geopotential_500.values,
        ref.geopotential.sel(level=500).values.transpose(0, 2, 1)[:, ::-1],
    )
    with pytest.raises(DataFormatError, match=r"level\(s\) \[300\].*available: \[250, 500, 850\]"):
        open_weatherbench(path, levels=[300])


# -- PDEBench ---------------------------------------------------------------------------


def _pdebench_single(tmp_path, name="2D_DarcyFlow_beta0.1_Train.hdf5", n=3, t=4, x=6, y=5):
    tensor = RNG.normal(size=(n, t, x, y)).astype(np.float32)
    path = tmp_path / name
    with h5py.File(path, "w") as f:
        f["tensor"] = tensor
        f["x-coordinate"] = np.linspace(0, 1, x)
        f["y-coordinate"] = np.linspace(0, 2, y)
        f["t-coordinate"] = np.linspace(0, 0.4, t + 1)  # PDEBench stores T + 1 edges
        f["nu"] = RNG.random((n, x, y)).astype(np.float32)
    return path, tensor


def test_pdebench_single_tensor_layout(tmp_path):
    path, tensor = _pdebench_single(tmp_path)
    assert sniff_format(path) == "pdebench"
    ds = open_any(path)
    assert ds.u.dims == ("trajectory", "time", "y", "x")
    np.testing.assert_array_equal(ds.u.values, tensor.transpose(0, 1, 3, 2))
    np.testing.assert_allclose(ds.x.values, np.linspace(0, 1, 6))
    np.testing.assert_allclose(ds.time.values, np.linspace(0, 0.4, 5)[:4])
    assert ds.attrs["dx"] == pytest.approx(0.2) and ds.attrs["dt"] == pytest.approx(0.1)
    assert ds.beta.dims == ("trajectory",) and float(ds.beta[0]) == pytest.approx(0.1)
    assert ds.attrs["parameters"] == "beta"
    assert ds.nu.dims == ("trajectory", "y", "x")  # static coefficient, kept as a coordinate
    assert ds.u.chunks[0] == (1, 1, 1)


def test_pdebench_compressible_and_1d(tmp_path):
    path = tmp_path / "2D_CFD_Rand_M0.1_Eta0.01_Zeta0.01_periodic_8_Train.hdf5"
    arrays = {
        k: RNG.normal(size=(2, 3, 4, 4)).astype(np.float32)
        for k in ("density", "pressure", "Vx", "Vy")
    }
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f[k] = v
        f["x-coordinate"] = np.arange(4.0)
        f["y-coordinate"] = np.arange(4.0)
        f["t-coordinate"] = np.arange(4.0)
    ds = open_any(path)
    assert sorted(ds.attrs["parameters"].split(",")) == ["Eta", "M", "Zeta"]
    assert ds.attrs["boundary_conditions"] == "periodic"
    np.testing.assert_array_equal(ds.velocity_y.values, arrays["Vy"].transpose(0, 1, 3, 2))
    one = tmp_path / "1D_Advection_Sols_beta0.4.hdf5"
    with h5py.File(one, "w") as f:
        f["tensor"] = RNG.normal(size=(2, 5, 7)).astype(np.float32)
        f["x-coordinate"] = np.arange(7.0)
        f["t-coordinate"] = np.arange(6.0)
    ds1 = open_pdebench(one)
    assert ds1.u.dims == ("trajectory", "time", "x") and ds1.u.shape == (2, 5, 7)


def _pdebench_seeds(tmp_path, name="2D_diff-react_NA_NA.h5", n=3):
    path = tmp_path / name
    data = RNG.normal(size=(n, 4, 6, 5, 2)).astype(np.float32)  # per seed [T, X, Y, C]
    with h5py.File(path, "w") as f:
        for i in range(n):
            g = f.create_group(f"{i:04d}")
            g["data"] = data[i]
            g["grid/x"] = np.linspace(-1, 1, 6)
            g["grid/y"] = np.linspace(-1, 1, 5)
            g["grid/t"] = np.linspace(0, 5, 4)
    return path, data


def test_pdebench_seed_group_layout(tmp_path):
    path, data = _pdebench_seeds(tmp_path)
    assert sniff_format(path) == "pdebench"
    ds = open_any(path)
    assert sorted(ds.data_vars) == ["u", "v"]  # diffusion-reaction channels
    np.testing.assert_array_equal(ds.v.values, data[..., 1].transpose(0, 1, 3, 2))
    assert ds.attrs["dy"] == pytest.approx(0.5)
    named = open_pdebench(path, channel_names=["a", "b"], variables="b")
    assert list(named.data_vars) == ["b"]


def test_hdf5_reads_are_lazy_and_picklable(tmp_path, monkeypatch):
    path, tensor = _pdebench_single(tmp_path, n=4)
    ds = open_pdebench(path)
    reads = []
    original = hdf5._H5Array.__getitem__

    def counting(self, index):
        reads.append((self.key, index))
        return original(self, index)

    monkeypatch.setattr(hdf5._H5Array, "__getitem__", counting)
    one = ds.u.isel(trajectory=2, time=1).values
    np.testing.assert_array_equal(one, tensor[2, 1].T)
    assert len(reads) == 1 and reads[0][1][0] == slice(2, 3, None)  # one trajectory chunk
    back = pickle.loads(pickle.dumps(ds.u.data))  # dask graph travels to workers
    np.testing.assert_array_equal(back[3].compute(), tensor[3].transpose(0, 2, 1))


# -- The Well ---------------------------------------------------------------------------


def _well_file(tmp_path, b=2, t=5, nx=6, ny=4):
    path = tmp_path / "rayleigh_benard_Ra1e6.hdf5"
    rho = RNG.normal(size=(b, t, nx, ny)).astype(np.float32)
    vel = RNG.normal(size=(b, t, nx, ny, 2)).astype(np.float32)
    stress = RNG.normal(size=(b, t, nx, ny, 2, 2)).astype(np.float32)
    obstacle = RNG.random((b, nx, ny)).astype(np.float32)
    with h5py.File(path, "w") as f:
        f.attrs.update(
            dataset_name="toy_well",
            grid_type="cartesian",
            n_spatial_dims=2,
            n_trajectories=b,
            simulation_parameters=["Rayleigh", "Prandtl"],
            Rayleigh=1e6,
            Prandtl=1.0,
        )
        d = f.create_group("dimensions")
        d.attrs["spatial_dims"] = ["x", "y"]
        d["time"] = np.linspace(0, 1, t).astype(np.float32)
        d["x"] = np.linspace(0, 4, nx).astype(np.float32)
        d["y"] = np.linspace(0, 1, ny).astype(np.float32)
        for axis, kind in (("x", "periodic"), ("y", "WALL")):
            g = f.create_group(f"boundary_conditions/{axis}_boundary")
            g.attrs.update(associated_dims=[axis], associated_fields=[], bc_type=kind)
            g["mask"] = np.zeros(nx if axis == "x" else ny, bool)
        s = f.create_group("scalars")
        s.attrs["field_names"] = ["Rayleigh", "Prandtl"]
        for k, v in (("Rayleigh", 1e6), ("Prandtl", 1.0)):
            s[k] = np.array([v])
            s[k].attrs.update(sample_varying=False, time_varying=False)
        for group, name, values, extra in (
            ("t0_fields", "buoyancy", rho, {}),
            ("t0_fields", "obstacle", obstacle, {"time_varying": False}),
            ("t1_fields", "velocity", vel, {}),
            ("t2_fields", "stress", stress, {"symmetric": False, "antisymmetric": False}),
        ):
            ds_ = f.require_group(group).create_dataset(name, data=values)
            ds_.attrs.update(dim_varying=[True, True], sample_varying=True, time_varying=True)
            ds_.attrs.update(extra)
    return path, rho, vel, stress, obstacle


def test_the_well_layout(tmp_path):
    path, rho, vel, stress, obstacle = _well_file(tmp_path)
    assert sniff_format(path) == "the_well"
    ds = open_any(path)
    assert ds.buoyancy.dims == ("trajectory", "time", "y", "x")
    np.testing.assert_array_equal(ds.buoyancy.values, rho.transpose(0, 1, 3, 2))
    np.testing.assert_array_equal(ds.velocity_x.values, vel[..., 0].transpose(0, 1, 3, 2))
    np.testing.assert_array_equal(ds.velocity_y.values, vel[..., 1].transpose(0, 1, 3, 2))
    np.testing.assert_array_equal(ds.stress_xy.values, stress[..., 0, 1].transpose(0, 1, 3, 2))
    np.testing.assert_array_equal(ds.obstacle.values, obstacle.transpose(0, 2, 1))
    assert "obstacle" in ds.coords  # constant in time: not a field to forecast
    assert float(ds.Rayleigh[1]) == 1e6 and ds.Rayleigh.dims == ("trajectory",)
    assert ds.attrs["parameters"] == "Rayleigh,Prandtl"
    assert ds.attrs["boundary_conditions"] == "x: periodic; y: wall"
    assert ds.attrs["system"] == "the_well:toy_well"
    assert ds.attrs["dx"] == pytest.approx(0.8)
    assert ds.velocity_x.chunks is not None


def test_the_well_constant_field_and_variable_selection(tmp_path):
    path, rho, *_ = _well_file(tmp_path)
    with h5py.File(path, "a") as f:  # a field shared by all trajectories (sample_varying=False)
        shared = f["t0_fields"].create_dataset("pressure", data=rho[0])
        shared.attrs.update(dim_varying=[True, True], sample_varying=False, time_varying=True)
    ds = open_the_well(path, variables=["pressure", "velocity_y"])
    assert sorted(ds.data_vars) == ["Prandtl", "Rayleigh", "pressure", "velocity_y"]
    assert ds.pressure.dims == ("trajectory", "time", "y", "x")
    np.testing.assert_array_equal(ds.pressure.values[1], rho[0].transpose(0, 2, 1))
    with pytest.raises(DataFormatError, match="not found; available: .*velocity_x"):
        open_the_well(path, variables=["velocity"])


# -- bad input ----------------------------------------------------------------------------


def test_missing_variable_lists_available(tmp_path):
    path, _ = _odd_cf(tmp_path)
    with pytest.raises(DataFormatError, match=r"\['sea_ice'\] not found; available: sst"):
        open_cf(path, variables=["sea_ice"])
    p2, _ = _pdebench_seeds(tmp_path)
    with pytest.raises(DataFormatError, match="available: u, v"):
        open_pdebench(p2, variables=["w"])


def test_unknown_dims_are_named(tmp_path):
    path = tmp_path / "weird.nc"
    xr.Dataset(
        {"a": (("time", "foo", "x"), np.ones((2, 3, 4)))}, coords={"time": [0.0, 1.0]}
    ).to_netcdf(path)
    with pytest.raises(DataFormatError, match=r"cannot tell what dim\(s\) \['foo'\]"):
        open_any(path)
    ok = open_any(path, rename={"foo": "y"})
    assert ok.a.dims == ("time", "y", "x")


def test_non_monotonic_time(tmp_path):
    path = tmp_path / "shuffled.nc"
    xr.Dataset(
        {"a": (("time", "y", "x"), np.ones((3, 2, 2)))}, coords={"time": [0.0, 2.0, 1.0]}
    ).to_netcdf(path)
    with pytest.raises(DataFormatError, match=r"not strictly increasing: time\[1\]=2.0"):
        open_any(path)


def test_all_nan_variable(tmp_path):
    path = tmp_path / "empty.nc"
    a = np.ones((3, 2, 2))
    b = np.full((3, 2, 2), np.nan)
    late = np.full((3, 2, 2), np.nan)
    late[2] = 1.0  # NaN at first, valid later: acceptable
    xr.Dataset(
        {
            "a": (("time", "y", "x"), a),
            "b": (("time", "y", "x"), b),
            "late": (("time", "y", "x"), late),
        },
        coords={"time": [0.0, 1.0, 2.0]},
    ).to_netcdf(path)
    with pytest.raises(DataFormatError, match=r"\['b'\] are NaN everywhere"):
        open_any(path, variables=["a", "b"])  # asked for by name: refused
    with pytest.warns(UserWarning, match=r"\['b'\] are NaN everywhere"):
        whole = open_any(path)  # opened whole: the others stay usable
    assert whole.a.notnull().all()
    assert open_any(path, variables=["a", "late"], mask="none").late.isnull().any()


def test_corrupt_and_truncated_files(tmp_path):
    garbage = tmp_path / "garbage.nc"
    garbage.write_bytes(b"this is not a netCDF file at all")
    with pytest.raises(DataFormatError, match="not a netCDF, HDF5 or zarr file"):
        open_any(garbage)
    path, _ = _pdebench_single(tmp_path)
    blob = path.read_bytes()
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataFormatError, match="corrupt or truncated"):
        open_any(truncated)
    nc, _ = _odd_cf(tmp_path)
    cut = tmp_path / "cut.nc"
    cut.write_bytes(nc.read_bytes()[:200])
    with pytest.raises(DataFormatError, match="corrupt or truncated"):
        open_any(cut)
    zpath, _ = _weatherbench_zarr(tmp_path, zarr_format=3)
    meta = zpath / "zarr.json"
    meta.write_text("{ not json")
    with pytest.raises(DataFormatError, match="cannot open as a zarr store"):
        open_any(zpath)
    (tmp_path / "plain_dir").mkdir()
    with pytest.raises(DataFormatError, match="not a zarr store"):
        open_any(tmp_path / "plain_dir")
    with pytest.raises(FileNotFoundError):
        open_any(tmp_path / "nowhere.nc")


def test_format_can_be_forced(tmp_path):
    path, _ = _pdebench_seeds(tmp_path, name="data.bin")
    assert sniff_format(path) == "pdebench"  # content, not extension
    with pytest.raises(ValueError, match="unknown format 'grib'"):
        open_any(path, format="grib")
