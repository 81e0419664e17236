"""CF dim detection, canonical renaming, checks, masks and latitude weights."""

from __future__ import annotations

import dask.array as dsa
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from physforecast.data.cf import (
    attach_valid_mask,
    canonicalize,
    check_not_all_nan,
    detect_dims,
    latitude_weights,
    simulation_dataset,
    valid_mask,
)
from physforecast.data.layout import check_variables
from physforecast.errors import DataFormatError


def _coord(name, values, **attrs):
    return (name, np.asarray(values), attrs)


def test_detects_dims_by_attributes_and_names():
    ds = xr.Dataset(
        coords={
            "nav_lat": _coord("nav_lat", [0.0, 1.0]),  # common name
            "XX": _coord("XX", [0.0, 1.0], units="degrees_east"),  # CF units
            "when": _coord("when", [0.0, 1.0], standard_name="time"),  # standard_name
            "p": _coord("p", [500.0, 850.0], axis="Z", units="hPa"),  # axis + pressure units
            "ens": _coord("ens", [0, 1]),
            "stamp": ("stamp", pd.date_range("2000", periods=2)),  # datetime dtype
            "col": _coord("col", [0, 1], axis="X"),
        }
    )
    assert detect_dims(ds) == {
        "nav_lat": "latitude",
        "XX": "longitude",
        "when": "time",
        "p": "level",
        "ens": "member",
        "stamp": "time",
        "col": "x",
    }


def test_canonicalize_renames_orders_and_sorts_latitude():
    raw = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)  # (t, lon, lat)
    ds = xr.Dataset(
        {"z": (("t", "lon", "lat"), raw)},
        coords={"t": [0.0, 1.0], "lon": [0.0, 120.0, 240.0], "lat": [60.0, 20.0, -20.0, -60.0]},
    )
    out = canonicalize(ds)
    assert out.z.dims == ("time", "latitude", "longitude")
    assert out.latitude.values.tolist() == [-60.0, -20.0, 20.0, 60.0]
    np.testing.assert_array_equal(out.z.values, raw.transpose(0, 2, 1)[:, ::-1])
    assert out.z.sel(latitude=60.0, longitude=120.0, time=1.0) == raw[1, 1, 0]


def test_canonicalize_errors_name_the_problem():
    ds = xr.Dataset({"a": (("time", "foo"), np.ones((2, 3)))}, coords={"time": [0.0, 1.0]})
    with pytest.raises(DataFormatError, match=r"\['foo'\].*rename="):
        canonicalize(ds)
    assert canonicalize(ds, extra_dims=["foo"]).a.dims == ("time", "foo")
    two = xr.Dataset({"a": (("lat", "latitude"), np.ones((2, 2)))})
    with pytest.raises(DataFormatError, match="both look like 'latitude'"):
        canonicalize(two)
    back = xr.Dataset({"a": (("time",), np.ones(3))}, coords={"time": [0.0, 1.0, 1.0]})
    with pytest.raises(DataFormatError, match=r"time\[1\]=1.0 is followed by time\[2\]=1.0"):
        canonicalize(back)


def test_check_variables_lists_available():
    ds = xr.Dataset({"u": ("x", [1.0]), "v": ("x", [2.0])})
    assert check_variables(ds, None) == ["u", "v"]
    assert check_variables(ds, "v") == ["v"]
    with pytest.raises(DataFormatError, match=r"\['w'\] not found; available: u, v"):
        check_variables(ds, ["u", "w"])


def _sst(lazy=False):
    """(time=4, y=3, x=5) with land at two points in every frame and one missing value."""
    a = np.arange(60, dtype=np.float64).reshape(4, 3, 5)
    a[:, 0, 0] = np.nan
    a[:, 2, 4] = np.nan
    a[3, 1, 1] = np.nan  # transient gap
    data = dsa.from_array(a, chunks=(1, 3, 5)) if lazy else a
    return xr.Dataset(
        {"sst": (("time", "y", "x"), data), "t2m": (("time", "y", "x"), np.ones((4, 3, 5)))},
        coords={"time": np.arange(4.0)},
    ), a


def test_valid_mask_first_frame_and_all_frames():
    ds, a = _sst()
    first = valid_mask(ds, ["sst", "t2m"], first_only=True)
    assert first.dims == ("variable", "y", "x")
    np.testing.assert_array_equal(first.sel(variable="sst"), np.isfinite(a[0]))
    assert bool(first.sel(variable="t2m").all())
    full = valid_mask(ds, ["sst"])
    np.testing.assert_array_equal(full.sel(variable="sst"), np.isfinite(a).all(axis=0))
    assert not bool(full.sel(variable="sst", y=1, x=1))


def test_attach_valid_mask_fills_and_stays_lazy():
    ds, a = _sst(lazy=True)
    kept = attach_valid_mask(ds, first_only=True)
    np.testing.assert_array_equal(kept.sst.values, a)  # NaN kept by default
    out = attach_valid_mask(ds, first_only=True, fill_value=0.0)
    assert isinstance(out.sst.data, dsa.Array)  # still lazy
    values = out.sst.values
    assert not np.isnan(values).any()
    assert values[0, 0, 0] == 0 and values[3, 1, 1] == 0
    np.testing.assert_array_equal(values[np.isfinite(a)], a[np.isfinite(a)])
    stored = valid_mask(out, ["sst"])
    np.testing.assert_array_equal(stored.sel(variable="sst"), np.isfinite(a[0]))
    clean = xr.Dataset({"u": (("time", "y", "x"), np.ones((2, 2, 2)))})
    assert attach_valid_mask(clean) is clean  # nothing missing: unchanged


def test_mask_from_first_frame_reads_one_chunk():
    """Building a first-frame mask on a lazy array computes only the first time chunk."""
    calls = []

    def block(x, block_info=None):
        calls.append(block_info[None]["chunk-location"])
        return x

    base = dsa.ones((10, 4, 4), chunks=(1, 4, 4))
    ds = xr.Dataset({"u": (("time", "y", "x"), base.map_blocks(block, dtype=float))})
    attach_valid_mask(ds, first_only=True)
    assert calls and all(loc[0] == 0 for loc in calls)


def test_all_nan_variable_is_refused():
    ds = xr.Dataset(
        {
            "ok": (("time", "x"), [[1.0, 2.0], [3.0, 4.0]]),
            "dead": (("time", "x"), np.full((2, 2), np.nan)),
            "late": (("time", "x"), [[np.nan, np.nan], [1.0, np.nan]]),
        }
    )
    with pytest.raises(DataFormatError, match=r"\['dead'\] are NaN everywhere"):
        check_not_all_nan(ds)
    check_not_all_nan(ds, ["ok", "late"])


def test_latitude_weights():
    lat = np.linspace(-90, 90, 19)
    w = latitude_weights(lat)
    assert w.mean() == pytest.approx(1.0)
    np.testing.assert_allclose(w, np.cos(np.deg2rad(lat)) / np.cos(np.deg2rad(lat)).mean())
    np.testing.assert_allclose(w, w[::-1])  # symmetric, order-independent
    np.testing.assert_allclose(latitude_weights(lat[::-1]), w[::-1])
    area = latitude_weights(lat, method="area")
    assert area.mean() == pytest.approx(1.0)
    assert area[0] > 0 and w[0] == pytest.approx(0.0, abs=1e-12)  # poles keep a sliver
    # Cell areas: sin(upper) - sin(lower), bounds halfway between rows (WeatherBench 2).
    bounds = np.clip(np.concatenate([[-90], (lat[1:] + lat[:-1]) / 2, [90]]), -90, 90)
    expected = np.diff(np.sin(np.deg2rad(bounds)))
    np.testing.assert_allclose(area, expected / expected.mean())
    with pytest.raises(ValueError, match=r"\[-90, 90\]"):
        latitude_weights([0.0, 100.0])
    with pytest.raises(ValueError, match="method"):
        latitude_weights(lat, method="gauss")


def test_simulation_dataset_convention():
    ds = simulation_dataset(
        {"h": (np.zeros((2, 3, 4, 5)), "m", "depth")},
        time=np.arange(3) * 0.5,
        y=np.arange(4) * 0.1,
        x=np.arange(5) * 0.2,
        parameters={"g": (np.array([1.0, 2.0]), "m s-2", "gravity")},
        attrs={"system": "toy", "dt": 0.5, "boundary_conditions": "wall"},
    )
    assert ds.h.dims == ("trajectory", "time", "y", "x") and ds.h.dtype == np.float32
    assert ds.attrs["dx"] == pytest.approx(0.2) and ds.attrs["dy"] == pytest.approx(0.1)
    assert ds.attrs["parameters"] == "g" and ds.g.attrs["units"] == "m s-2"
    with pytest.raises(ValueError, match=r"expected shape \(N, 3, 4, 5\)"):
        simulation_dataset(
            {"h": (np.zeros((2, 3, 4)), "m", "depth")},
            time=np.arange(3),
            y=np.arange(4),
            x=np.arange(5),
            parameters={},
            attrs={},
        )
