"""HTTP bodies <-> datasets, and the missing-value check."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from physforecast.inference.codec import (
    RequestError,
    check_missing,
    dataset_from_json,
    dataset_from_netcdf,
    dataset_to_json,
    dataset_to_netcdf,
)


@pytest.fixture
def ds() -> xr.Dataset:
    rng = np.random.default_rng(0)
    field = rng.normal(size=(2, 4, 3, 5)).astype(np.float32)
    field[:, :, 0, 0] = np.nan  # land
    return xr.Dataset(
        {
            "t2m": (
                ("trajectory", "time", "y", "x"),
                field,
                {"units": "K", "long_name": "temperature"},
            ),
            "nu": ("trajectory", np.array([1e-3, 2e-3]), {"units": "m2 s-1"}),
        },
        coords={
            "time": (
                "time",
                np.array(
                    ["2020-01-01T00", "2020-01-01T06", "2020-01-01T12", "2020-01-01T18"],
                    dtype="datetime64[ns]",
                ),
            ),
            "y": ("y", np.linspace(0, 1, 3)),
            "lead_time": ("lead_time", np.arange(1, 3)),
        },
        attrs={"system": "test", "dt": 0.5, "periodic": True, "levels": [1, 2]},
    )


def test_json_round_trip_keeps_values_nan_times_and_attrs(ds):
    text = json.dumps(dataset_to_json(ds))  # strict JSON: NaN became null
    assert "NaN" not in text
    back = dataset_from_json(text)
    np.testing.assert_array_equal(back["t2m"].values, ds["t2m"].values.astype(np.float64))
    np.testing.assert_array_equal(back["time"].values, ds["time"].values)
    assert back["t2m"].attrs == {"units": "K", "long_name": "temperature"}
    assert back.attrs["system"] == "test" and back.attrs["periodic"] is True
    np.testing.assert_array_equal(back["nu"].values, ds["nu"].values)


def test_netcdf_round_trip_and_attributes_netcdf_cannot_hold(ds):
    back = dataset_from_netcdf(dataset_to_netcdf(ds))
    np.testing.assert_array_equal(back["t2m"].values, ds["t2m"].values)
    np.testing.assert_array_equal(back["time"].values, ds["time"].values)
    assert back.attrs["periodic"] == 1  # a boolean is stored as 0/1
    assert list(back.attrs["levels"]) == [1, 2]
    # netCDF3 bytes are read too
    classic = dataset_from_netcdf(bytes(ds.drop_vars("lead_time").to_netcdf(engine="scipy")))
    np.testing.assert_array_equal(classic["t2m"].values, ds["t2m"].values)


@pytest.mark.parametrize(
    "body, match",
    [
        (b"", "empty"),
        (b"[1, 2", "not valid JSON"),
        (b"[1, 2]", "'data_vars'"),
        (b'{"data_vars": {"a": [1, 2]}}', "'dims' and 'data'"),
        (
            b'{"data_vars": {"a": {"dims": ["x"], "data": [[1], [2]]}}}',
            "does not describe a dataset",
        ),
    ],
)
def test_bad_json_bodies_are_400(body, match):
    with pytest.raises(RequestError, match=match) as info:
        dataset_from_json(body)
    assert info.value.status == 400


def test_bad_netcdf_bodies_are_400():
    for body, match in ((b"", "empty"), (b"CDF\x01garbage", "not a readable netCDF")):
        with pytest.raises(RequestError, match=match) as info:
            dataset_from_netcdf(body)
        assert info.value.status == 400


def test_check_missing_allows_a_static_mask(ds):
    check_missing(ds, ["t2m"], ["nu"])  # the land point is NaN at every time


def test_check_missing_refuses_gaps_inf_all_nan_and_nan_parameters(ds):
    gap = ds.copy(deep=True)
    gap["t2m"][1, 2, 1, 3] = np.nan
    with pytest.raises(
        ValueError, match=r"1 missing or infinite value.*trajectory=1, time=2, y=1, x=3"
    ):
        check_missing(gap, ["t2m"])
    inf = ds.copy(deep=True)
    inf["t2m"][0, 0, 2, 2] = np.inf
    with pytest.raises(ValueError, match="missing or infinite"):
        check_missing(inf, ["t2m"])
    empty = ds.copy(deep=True)
    empty["t2m"][:] = np.nan
    with pytest.raises(ValueError, match="NaN everywhere"):
        check_missing(empty, ["t2m"])
    bad_nu = ds.copy(deep=True)
    bad_nu["nu"][1] = np.nan
    with pytest.raises(ValueError, match="parameter 'nu'"):
        check_missing(bad_nu, ["t2m"], ["nu"])
    # variables that are absent are left to predict, which names them
    check_missing(ds, ["t2m", "absent"])


def test_netcdf_answers_fall_back_to_netcdf4_when_netcdf3_cannot_hold_them(ds):
    small = dataset_to_netcdf(ds)
    assert small[:4] == b"CDF\x02"  # netCDF3, 64-bit offset
    big = ds.assign(count=("trajectory", np.array([2**40, 1], dtype=np.int64)))
    body = dataset_to_netcdf(big)
    assert body[:4] == b"\x89HDF"
    assert dataset_from_netcdf(body)["count"].values.tolist() == [2**40, 1]
