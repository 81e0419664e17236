"""Helpers of the fault and bad-input suite: tiny runs, small files in every format, and
the ``physforecast`` command run in-process (one line on stderr) or as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

#: Overrides of a run that trains in seconds (ns2d, 6 trajectories, a small FNO).
TINY = [
    "data.options.n_trajectories=6",
    "data.options.n_steps=12",
    "data.in_steps=2",
    "data.out_steps=2",
    "data.split=[0.5,0.25,0.25]",
    "model.options.hidden=8",
    "model.options.modes=4",
]


def error_line(capsys) -> str:
    """The stderr of the last command, which must be exactly one ``physforecast: error:``
    line (apart from notes and progress lines)."""
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("physforecast: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    return lines[0]


def cli(*args: str, timeout: float = 240, env: dict | None = None, **kw) -> subprocess.Popen:
    """Start ``physforecast ARGS`` as a subprocess (stdout and stderr piped)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    code = "import sys; from physforecast.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
        **kw,
    )


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str, str]:
    """Wait for ``proc`` (killed if it overruns ``timeout``): (returncode, stdout, stderr)."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"the command ran past {timeout} s:\n{err[-3000:]}")
    return proc.returncode, out, err


def temporaries(root: Path) -> list[str]:
    """Names of the atomic-write temporaries anywhere under ``root``."""
    return sorted(p.name for p in Path(root).rglob(".*.tmp*"))


# -- small files in the field's formats ---------------------------------------------------


def reanalysis(n_time: int = 24, *, dead: bool = False, seed: int = 0) -> xr.Dataset:
    """A monthly lat-lon anomaly field ``sst`` (time, lat, lon) with land, like the
    NOAA SST files, plus ``z500``; with ``dead`` an extra variable that is all NaN."""
    rng = np.random.default_rng(seed)
    ny, nx = 8, 12
    t = np.arange(n_time)
    base = np.sin(2 * np.pi * t / 12)[:, None, None]
    sst = (base + 0.3 * rng.normal(size=(n_time, ny, nx))).astype(np.float32)
    sst[:, 2:4, 3:6] = np.nan  # land
    z500 = (0.5 * base + 0.2 * rng.normal(size=(n_time, ny, nx))).astype(np.float32)
    data = {
        "sst": (("time", "lat", "lon"), sst, {"units": "K", "long_name": "SST anomaly"}),
        "z500": (("time", "lat", "lon"), z500, {"units": "m", "long_name": "Z500 anomaly"}),
    }
    if dead:
        data["ice"] = (("time", "lat", "lon"), np.full((n_time, ny, nx), np.nan, np.float32))
    return xr.Dataset(
        data,
        coords={
            "time": pd.date_range("1990-01-01", periods=n_time, freq="MS"),
            "lat": ("lat", np.linspace(-35, 35, ny), {"units": "degrees_north"}),
            "lon": ("lon", np.linspace(0, 330, nx), {"units": "degrees_east"}),
        },
    )


def write_netcdf3(ds: xr.Dataset, path: Path) -> Path:
    """netCDF-3 (classic, ``CDF`` magic), through scipy."""
    ds.to_netcdf(path, format="NETCDF3_64BIT", engine="scipy")
    return path


def write_netcdf4(ds: xr.Dataset, path: Path) -> Path:
    """netCDF-4 (HDF5 inside), compressed in per-frame chunks."""
    encoding = {v: {"zlib": True, "chunksizes": (1, *ds[v].shape[1:])} for v in ds.data_vars}
    ds.to_netcdf(path, format="NETCDF4", engine="netcdf4", encoding=encoding)
    return path


def write_zarr(ds: xr.Dataset, path: Path) -> Path:
    """A zarr store with one chunk per frame."""
    ds.chunk({"time": 1}).to_zarr(path, mode="w", consolidated=False)
    return path


def chunk_file(store: Path, name: str, t: int) -> Path:
    """The chunk file of variable ``name`` that holds time index ``t`` (one chunk per frame;
    zarr v3 ``c/T/0/0`` or v2 ``T.0.0`` layout)."""
    import re

    skip = {"zarr.json", ".zarray", ".zattrs", ".zgroup"}
    for p in (store / name).rglob("*"):
        if not p.is_file() or p.name in skip:
            continue
        numbers = [int(n) for n in re.findall(r"\d+", str(p.relative_to(store / name)))]
        if numbers and numbers[0] == t:
            return p
    raise FileNotFoundError(f"no chunk for time {t} of {name} in {store}")
