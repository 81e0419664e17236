"""Fuzzing with hypothesis: whatever a user writes into a config, and whatever lies in a
file, the package answers with a value or with one of its own errors, never a traceback of
another kind."""

from __future__ import annotations

import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from physforecast.config import (
    Config,
    apply_overrides,
    check_config,
    config_from_dict,
    load_config,
)
from physforecast.data.formats import open_any, sniff_format
from physforecast.errors import ConfigError, PhysforecastError

FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
FILES = settings(max_examples=20, deadline=None)

KEYS = ["data", "model", "train", "method", "out", "beamvq", "dataset", "epochs", "lr"]
KEYS += ["in_steps", "options", "split", "variables", "backbone", "seed", "scores", "top_k"]
names = st.one_of(st.sampled_from(KEYS), st.text(max_size=8), st.integers(-3, 3), st.none())
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(names, inner, max_size=4)),
    max_leaves=12,
)


def _answers_or_refuses(call, *args):
    try:
        out = call(*args)
    except ConfigError:
        return None
    assert isinstance(out, Config)
    return out


def _built_and_checked(data):
    cfg = config_from_dict(data)
    check_config(cfg)  # the ranges a run checks before writing anything
    return cfg


@FUZZ
@given(st.dictionaries(names, values, max_size=5))
def test_config_from_any_mapping(data):
    _answers_or_refuses(_built_and_checked, data)


@FUZZ
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "data": st.dictionaries(
                st.sampled_from(["in_steps", "out_steps", "split", "batch_size", "stride"]),
                values,
                max_size=3,
            ),
            "train": st.dictionaries(
                st.sampled_from(["epochs", "lr", "ema", "precision", "patience"]),
                values,
                max_size=3,
            ),
        },
    )
)
def test_config_sections_with_any_values(data):
    _answers_or_refuses(_built_and_checked, data)


@FUZZ
@given(
    st.lists(
        st.builds(
            lambda k, v: f"{k}={v}",
            st.one_of(
                st.sampled_from(
                    ["train.epochs", "data.split", "model.options.hidden", "beamvq.top_k"]
                ),
                st.text(max_size=16),
            ),
            st.one_of(st.text(max_size=16), st.sampled_from(["[1,", "{a: 1", "3", "- x"])),
        ),
        max_size=4,
    )
)
def test_overrides_from_any_text(overrides):
    _answers_or_refuses(apply_overrides, Config(), overrides)


@FUZZ
@given(
    st.one_of(
        st.text(max_size=200),
        st.sampled_from(
            [
                "data:\n  in_steps: [1,\n",
                "train: {epochs: 3\n",
                "data:\n\tdataset: x\n",
                "- a\n- b\n",
                "? [a, b]\n: c\n",
                "key: &a [*a]\n",
                "train:\n  epochs: !!python/object:os.system 1\n",
            ]
        ),
    )
)
def test_config_files_with_any_text(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_text(text, encoding="utf-8")
        _answers_or_refuses(load_config, path)


# -- files: sniffing and reading ---------------------------------------------------------------

MAGICS = [b"", b"CDF\x01", b"CDF\x02", b"\x89HDF\r\n\x1a\n", b"PK\x03\x04", b"\x00" * 8]


@FILES
@given(st.sampled_from(MAGICS), st.binary(max_size=600))
def test_sniffing_and_opening_any_bytes(magic, body):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.nc"
        path.write_bytes(magic + body)
        try:
            sniff_format(path)
            open_any(path)
        except PhysforecastError:
            pass  # a DataFormatError naming the file: the right answer


@FILES
@given(st.binary(max_size=300), st.sampled_from(["zarr.json", ".zgroup", ".zarray", "other"]))
def test_a_directory_with_any_metadata(body, name):
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store.zarr"
        store.mkdir()
        (store / name).write_bytes(body)
        with pytest.raises(PhysforecastError):
            open_any(store)


@st.composite
def fields(draw):
    """A random small field: (time, y, x) with optional land, 1 or 2 variables."""
    t, ny, nx = draw(st.integers(2, 5)), draw(st.integers(2, 5)), draw(st.integers(2, 5))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    data = {}
    for name in ["u", "v"][: draw(st.integers(1, 2))]:
        values = rng.normal(size=(t, ny, nx)).astype(draw(st.sampled_from(["f4", "f8"])))
        if draw(st.booleans()) and ny * nx > 1:
            values[:, 0, 0] = np.nan  # a land point
        data[name] = (("time", "y", "x"), values, {"units": "1"})
    return xr.Dataset(data, coords={"time": np.arange(t, dtype=float) * 0.5})


def _write(ds: xr.Dataset, fmt: str, root: Path) -> Path:
    if fmt == "netcdf3":
        path = root / "f.nc"
        ds.to_netcdf(path, format="NETCDF3_64BIT", engine="scipy")
    elif fmt == "netcdf4":
        path = root / "f.nc"
        ds.to_netcdf(path, format="NETCDF4", engine="netcdf4")
    elif fmt == "zarr":
        path = root / "f.zarr"
        ds.chunk({"time": 1}).to_zarr(path, consolidated=False)
    else:  # PDEBench: one tensor [N, T, X, Y] per file
        path = root / "f.h5"
        with h5py.File(path, "w") as f:
            f["tensor"] = ds["u"].values[None].transpose(0, 1, 3, 2)
            f["x-coordinate"] = np.arange(ds.sizes["x"], dtype=float)
            f["y-coordinate"] = np.arange(ds.sizes["y"], dtype=float)
            f["t-coordinate"] = ds["time"].values
    return path


@FILES
@given(fields(), st.sampled_from(["netcdf3", "netcdf4", "zarr", "pdebench"]))
def test_generated_files_read_back_exactly(ds, fmt):
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(ds, fmt, Path(tmp))
        back = open_any(path, mask="none") if fmt != "pdebench" else open_any(path)
        if fmt == "pdebench":
            got = back["u"].isel(trajectory=0).transpose("time", "y", "x").values
            np.testing.assert_array_equal(got, ds["u"].values)
            return
        for name in ds.data_vars:
            np.testing.assert_array_equal(
                back[name].transpose("time", "y", "x").values, ds[name].values
            )
