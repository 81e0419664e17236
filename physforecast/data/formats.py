"""Readers for the field's file formats, each returning an ``xr.Dataset`` in our convention.

- CF netCDF and zarr, through xarray: dims found from CF attributes and renamed to the
  canonical names (:mod:`physforecast.data.cf`), missing values turned into a mask.
- WeatherBench 2 / ERA5-style zarr (time, level, latitude, longitude): level selection,
  optionally one variable per level (``geopotential_500``).
- PDEBench HDF5, both layouts: one ``tensor`` array [N, T, X(, Y)] with ``x-coordinate``
  and ``t-coordinate`` (compressible-flow files: ``density``, ``pressure``, ``Vx``...), or
  one group per seed (``"0000"``...) with ``data`` [T, X(, Y), C] and ``grid/{x,y,t}``.
- The Well HDF5: ``t0_fields``, ``t1_fields`` (vectors, split into ``velocity_x``...),
  ``t2_fields``, ``dimensions``, ``boundary_conditions``, ``scalars`` and parameters as
  root attributes.

:func:`open_any` sniffs the format from the content (magic bytes, HDF5 groups). Every reader is
lazy: arrays are dask arrays read chunk by chunk (HDF5 through a picklable reader that
opens the file for each chunk, so DataLoader workers can use it; see
:mod:`physforecast.data.hdf5`), never loaded whole.
Bad input raises :class:`~physforecast.data.cf.DataFormatError` naming the problem.
"""

from __future__ import annotations

import inspect
import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import xarray as xr

from physforecast.errors import ConfigError, DataFormatError, check_options

from .cf import canonicalize, validate_fields
from .hdf5 import PDEBENCH_FIELDS, open_h5, open_pdebench, open_the_well
from .integrity import BAD_DATA_ATTR, check_on_bad_data, check_zarr_chunks, guard_zarr
from .layout import check_variables

__all__ = [
    "DataFormatError",
    "sniff_format",
    "open_any",
    "open_cf",
    "open_weatherbench",
    "open_pdebench",
    "open_the_well",
]

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def sniff_format(path: str | os.PathLike) -> str:
    """Which reader fits ``path``: ``"zarr"``, ``"netcdf"``, ``"pdebench"`` or ``"the_well"``.

    The content decides, not the extension: a zarr store is a directory with
    ``zarr.json`` or ``.zgroup``; HDF5 files with ``t0_fields`` are The Well's, those
    with ``tensor`` (or compressible-flow fields) or numbered seed groups are PDEBench's,
    other HDF5 and netCDF-3 files are read as CF netCDF.

    Raises
    ------
    FileNotFoundError
        If nothing exists at ``path``.
    DataFormatError
        If the file is none of these, or cannot be read.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such file or directory: {str(p)!r}")
    if p.is_dir():
        if any((p / n).exists() for n in ("zarr.json", ".zgroup", ".zarray", ".zmetadata")):
            return "zarr"
        raise DataFormatError(f"{p}: a directory, but not a zarr store (no zarr.json or .zgroup)")
    with open(p, "rb") as fh:
        head = fh.read(8)
    if head.startswith(b"CDF"):
        return "netcdf"
    if head != _HDF5_MAGIC:
        raise DataFormatError(
            f"{p}: not a netCDF, HDF5 or zarr file (starts with {head!r}); "
            "supported: CF netCDF/zarr, WeatherBench 2 zarr, PDEBench and The Well HDF5"
        )
    with open_h5(p) as f:
        keys = set(f.keys())
        if keys & {"t0_fields", "t1_fields", "t2_fields"}:
            return "the_well"
        if keys & PDEBENCH_FIELDS and any(k.endswith("-coordinate") for k in keys):
            return "pdebench"
        if keys and all(k.isdigit() for k in keys):
            if all(isinstance(f[k], h5py.Group) and "data" in f[k] for k in keys):
                return "pdebench"
        if "tensor" in keys:
            return "pdebench"
    return "netcdf"


def open_any(path: str | os.PathLike, **options: Any) -> xr.Dataset:
    """Open any supported file lazily, in the package's dataset convention.

    Parameters
    ----------
    path : str or path
        A netCDF file, a zarr store, or a PDEBench / The Well HDF5 file.
    **options
        ``format=`` forces a reader (``"netcdf"``, ``"zarr"``, ``"weatherbench"``,
        ``"pdebench"``, ``"the_well"``); the rest go to that reader (:func:`open_cf`,
        :func:`open_weatherbench`, :func:`open_pdebench`, :func:`open_the_well`).
        Passing ``levels=`` or ``split_levels=`` selects the WeatherBench reader.

    Returns
    -------
    xr.Dataset

    Examples
    --------
    >>> ds = open_any("era5.zarr", variables=["geopotential"], levels=[500])  # doctest: +SKIP
    """
    fmt = options.pop("format", None) or sniff_format(path)
    if fmt in ("netcdf", "zarr") and ({"levels", "split_levels"} & set(options)):
        fmt = "weatherbench"
    readers = {
        "netcdf": open_cf,
        "zarr": open_cf,
        "weatherbench": open_weatherbench,
        "pdebench": open_pdebench,
        "the_well": open_the_well,
    }
    if fmt not in readers:
        raise ConfigError(f"unknown format {fmt!r}; choose from {', '.join(sorted(readers))}")
    check_options(
        f"the {fmt} reader of {Path(path).name}",
        options,
        ["format", *reader_options(readers[fmt])],
        key="data.options",
    )
    return readers[fmt](path, **options)


def reader_options(reader: Any) -> list[str]:
    """The keyword options a reader takes (those of :func:`open_cf` too, for a reader that
    passes the rest on to it)."""
    params = inspect.signature(reader).parameters.values()
    names = [p.name for p in params if p.kind is p.KEYWORD_ONLY]
    if any(p.kind is p.VAR_KEYWORD for p in params):
        names += [n for n in reader_options(open_cf) if n not in names]
    return names


# -- CF netCDF / zarr through xarray ---------------------------------------------------


def _drop_bounds(ds: xr.Dataset) -> xr.Dataset:
    """Drop CF cell-bounds variables (``time_bnds``...), whose extra dim is not a field dim."""
    bounds = {str(ds[c].attrs.get("bounds")) for c in ds.variables if "bounds" in ds[c].attrs}
    bounds |= {str(v) for v in ds.variables if re.search(r"_(bnds|bounds)$", str(v))}
    return ds.drop_vars([b for b in bounds if b in ds.variables])


def _open_zarr(path: Path, decode_times: bool, on_bad_data: str, check_chunks: bool) -> xr.Dataset:
    """Open with consolidated metadata when the store has it, without otherwise (no
    warning); check that no chunk is absent and read every chunk through a guard that names
    a chunk it cannot decode (:mod:`physforecast.data.integrity`)."""
    consolidated = (path / ".zmetadata").exists()
    if not consolidated and (path / "zarr.json").exists():
        meta = json.loads((path / "zarr.json").read_text())
        consolidated = isinstance(meta, dict) and meta.get("consolidated_metadata") is not None
    options = {"decode_times": decode_times, "consolidated": consolidated}
    ds = xr.open_zarr(path, chunks=None, **options)
    if check_chunks:
        check_zarr_chunks(path, ds, on_bad_data=on_bad_data)
    return guard_zarr(ds, path, options, on_bad_data)


def open_cf(
    path: str | os.PathLike,
    *,
    variables: Iterable[str] | str | None = None,
    chunks: dict[str, int] | None = None,
    rename: dict[str, str] | None = None,
    extra_dims: Iterable[str] = (),
    mask: str = "first",
    fill_value: float | None = None,
    decode_times: bool = True,
    on_bad_data: str = "raise",
    check_chunks: bool = True,
) -> xr.Dataset:
    """Open a CF netCDF file or zarr store lazily, with canonical dims.

    Parameters
    ----------
    path : str or path
        ``.nc`` file or zarr store.
    variables : str or iterable of str, optional
        Data variables to keep (all by default).
    chunks : dict, optional
        Dask chunks per canonical dim. Default: the store's own chunks for zarr; for
        netCDF one step along time/trajectory/sample and whole along the others.
    rename : dict, optional
        Explicit ``{file dim: canonical dim}``, for dims the CF rules cannot place.
    extra_dims : iterable of str
        Non-canonical dims to accept as they are.
    mask : {"first", "full", "none"}
        Turn NaN into a ``valid_mask`` variable (decided from the first frame, or from
        all frames), or do not.
    fill_value : float, optional
        Replaces NaN when a mask is made; by default they stay (windows, normalizer and
        scorecard handle them).
    decode_times : bool
        Decode CF time units into datetimes.
    on_bad_data : {"raise", "mask"}
        What absent or unreadable zarr chunks, and training windows with values missing
        where the field is valid, do: stop with a
        :class:`~physforecast.errors.DataIntegrityError` naming the variable, file and
        index, or (``mask``, only when asked) read as NaN and leave the loss.
    check_chunks : bool
        Check at opening that a zarr store holds every chunk: a directory listing, about
        0.4 s for 8000 chunks (``physforecast/data/integrity.py``); turn it off for a store
        of millions of chunks that you trust.

    Returns
    -------
    xr.Dataset
        Dask-backed, dims renamed and ordered (see :func:`~physforecast.data.cf.canonicalize`).

    Raises
    ------
    DataFormatError
        Unreadable file, missing variable (the message lists the available ones), unknown
        dims, non-increasing time, a requested variable that is NaN everywhere.
    DataIntegrityError
        A zarr store without some of its chunks.
    """
    p = Path(path)
    source = str(p)
    is_zarr = p.is_dir()
    check_on_bad_data(on_bad_data)
    try:
        if is_zarr:
            ds = _open_zarr(p, decode_times, on_bad_data, check_chunks)
        else:
            ds = xr.open_dataset(p, chunks=None, decode_times=decode_times)
    except DataFormatError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as err:
        kind = "zarr store" if is_zarr else "netCDF file"
        raise DataFormatError(
            f"{source}: cannot open as a {kind} (corrupt or truncated?): {err}"
        ) from err
    ds = _drop_bounds(ds)
    if variables is not None:
        ds = ds[check_variables(ds, variables, source=source)]
    ds = canonicalize(ds, rename=rename, extra_dims=extra_dims, source=source)
    if chunks is None and not is_zarr:
        chunks = {d: 1 for d in ("trajectory", "sample", "time") if d in ds.dims}
    if chunks is not None or not is_zarr:
        ds = ds.chunk(chunks or {})
    # This view (renamed dims, mask) differs from the raw file, so nobody should reopen
    # the raw file by its path in its place: drop the source. The dataset still pickles
    # lazily (each process reopens the file through xarray's file manager).
    ds.encoding.pop("source", None)
    ds.attrs.setdefault("source_file", source)
    if on_bad_data == "mask":
        ds.attrs[BAD_DATA_ATTR] = "mask"
    return validate_fields(
        ds,
        mask=mask,
        fill_value=fill_value,
        source=source,
        all_nan="raise" if variables is not None else "warn",
    )


def open_weatherbench(
    path: str | os.PathLike,
    *,
    variables: Iterable[str] | str | None = None,
    levels: Sequence[float] | None = None,
    split_levels: bool = False,
    time: slice | None = None,
    **cf_options: Any,
) -> xr.Dataset:
    """Open a WeatherBench 2 / ERA5-style zarr store (time, level, latitude, longitude).

    Parameters
    ----------
    path : str or path
        The zarr store (or a netCDF file with the same layout).
    variables : str or iterable of str, optional
        Variables to keep (``geopotential``, ``2m_temperature``...).
    levels : sequence of float, optional
        Pressure levels to keep (hPa, as in the store); every one must exist.
    split_levels : bool
        Make one variable per level, ``<name>_<level>`` with dims (time, latitude,
        longitude), so every variable is one channel.
    time : slice, optional
        Time range, e.g. ``slice("2020-01-01", "2020-12-31")``.
    **cf_options
        Passed to :func:`open_cf` (``chunks``, ``mask``, ``rename``...).

    Returns
    -------
    xr.Dataset
        Dims (time, [level,] latitude, longitude), latitude increasing.
    """
    ds = open_cf(path, variables=variables, **cf_options)
    source = str(path)
    for d in ("latitude", "longitude"):
        if d not in ds.dims:
            raise DataFormatError(f"{source}: no {d} dim found (dims: {list(ds.dims)})")
    if time is not None:
        ds = ds.sel(time=time)
    if levels is not None:
        if "level" not in ds.dims:
            raise DataFormatError(
                f"{source}: levels={list(levels)} given, but there is no level dim"
            )
        have = np.asarray(ds["level"].values)
        missing = [lv for lv in levels if not np.isclose(have, lv).any()]
        if missing:
            raise DataFormatError(
                f"{source}: level(s) {missing} not in the store; available: {have.tolist()}"
            )
        idx = [int(np.flatnonzero(np.isclose(have, lv))[0]) for lv in levels]
        ds = ds.isel(level=idx)
    if split_levels and "level" in ds.dims:
        out = {}
        for name, da in ds.data_vars.items():
            if "level" not in da.dims:
                out[name] = da
                continue
            for i, lv in enumerate(ds["level"].values):
                tag = f"{float(lv):g}"
                piece = da.isel(level=i, drop=True)
                piece.attrs = {
                    **da.attrs,
                    "level": float(lv),
                    "level_units": ds["level"].attrs.get("units", ""),
                }
                out[f"{name}_{tag}"] = piece
        ds = xr.Dataset(out, attrs=ds.attrs)
        if "valid_mask" in ds:
            ds = ds.drop_vars("valid_mask")
            ds = validate_fields(
                ds,
                mask=cf_options.get("mask", "first"),
                fill_value=cf_options.get("fill_value"),
                source=source,
            )
    ds.attrs.setdefault("grid", "latitude-longitude")
    return ds
