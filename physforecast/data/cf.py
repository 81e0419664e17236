"""CF conventions: find the time/latitude/longitude/level/x/y dims, masks, latitude weights.

Real files name their dims in many ways (``lat``, ``nav_lat``, ``XLAT``, a dim with
``standard_name="latitude"``, one with ``units="degrees_north"``...). :func:`canonicalize`
recognises them from CF attributes first (``standard_name``, ``axis``, ``units``) and
common names second, renames them to the canonical names used across physforecast,

    trajectory, sample, time, lead_time, member, level, z, y, x, latitude, longitude

and puts every variable's dims in that order. It refuses what it cannot place: an
unknown dim, a time axis that does not increase, a variable that is NaN everywhere.

Missing values (land in ocean data) become a boolean mask, True where valid, stored as
the data variable ``valid_mask`` with dims ``(variable, *spatial)`` (see :func:`attach_valid_mask`);
training losses and metrics multiply by it. :func:`latitude_weights` gives the area
weights of a lat-lon grid, normalised to mean 1.

:func:`simulation_dataset` assembles a simulator's arrays into the package's dataset
convention (dims (trajectory, time, y, x), units, parameters along trajectory).
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from physforecast.errors import ConfigError, DataFormatError

from .layout import check_variables

__all__ = [
    "CANONICAL_DIMS",
    "SPATIAL_DIMS",
    "MASK_VARIABLE",
    "detect_dims",
    "canonicalize",
    "check_time_monotonic",
    "check_not_all_nan",
    "all_nan_variables",
    "present_spatial_dims",
    "valid_mask",
    "attach_valid_mask",
    "validate_fields",
    "latitude_weights",
    "simulation_dataset",
]


#: Canonical dims, in the order variables are transposed to.
CANONICAL_DIMS: tuple[str, ...] = (
    "trajectory",
    "sample",
    "time",
    "lead_time",
    "member",
    "variable",
    "level",
    "z",
    "y",
    "x",
    "latitude",
    "longitude",
)
#: Dims that span space (the last two or three of a field).
SPATIAL_DIMS: tuple[str, ...] = ("z", "y", "x", "latitude", "longitude")
#: Name of the boolean validity mask written by :func:`attach_valid_mask`.
MASK_VARIABLE = "valid_mask"

# Common names, matched case-insensitively after CF attributes failed.
_NAMES: dict[str, tuple[str, ...]] = {
    "trajectory": ("trajectory", "trajectories", "traj", "samples", "batch", "run", "seed"),
    "sample": ("sample",),
    "time": ("time", "t", "times", "valid_time", "init_time", "date", "datetime", "time_counter"),
    "lead_time": ("lead_time", "prediction_timedelta", "step", "lead", "leadtime"),
    "member": ("member", "number", "realization", "ensemble", "ens", "member_id"),
    "level": (
        "level",
        "lev",
        "plev",
        "pressure_level",
        "pressure",
        "isobaricinhpa",
        "air_pressure",
        "depth",
        "height",
        "altitude",
    ),
    "z": ("z",),
    "latitude": ("latitude", "lat", "nav_lat", "xlat", "lats", "rlat", "grid_latitude"),
    "longitude": ("longitude", "lon", "long", "nav_lon", "xlong", "lons", "rlon", "grid_longitude"),
    "y": ("y", "south_north", "j", "nj", "row", "rows", "yc"),
    "x": ("x", "west_east", "i", "ni", "col", "cols", "xc"),
}
_STANDARD_NAMES: dict[str, str] = {
    "time": "time",
    "forecast_period": "lead_time",
    "forecast_reference_time": "time",
    "realization": "member",
    "latitude": "latitude",
    "grid_latitude": "latitude",
    "longitude": "longitude",
    "grid_longitude": "longitude",
    "air_pressure": "level",
    "altitude": "level",
    "height": "level",
    "depth": "level",
    "model_level_number": "level",
    "atmosphere_hybrid_sigma_pressure_coordinate": "level",
    "projection_x_coordinate": "x",
    "projection_y_coordinate": "y",
}
_LAT_UNITS = {"degrees_north", "degree_north", "degree_n", "degrees_n", "degreen", "degreesn"}
_LON_UNITS = {"degrees_east", "degree_east", "degree_e", "degrees_e", "degreee", "degreese"}
_PRESSURE_UNITS = {"pa", "hpa", "mbar", "millibar", "millibars", "bar", "kpa"}


def _classify(name: Hashable, var: xr.DataArray | None) -> str | None:
    """The canonical name for a dim (or its coordinate variable ``var``), or None."""
    attrs = var.attrs if var is not None else {}
    encoding = var.encoding if var is not None else {}
    std = str(attrs.get("standard_name", "")).lower()
    if std in _STANDARD_NAMES:
        return _STANDARD_NAMES[std]
    units = str(attrs.get("units", encoding.get("units", ""))).lower().replace(" ", "_")
    if units in _LAT_UNITS:
        return "latitude"
    if units in _LON_UNITS:
        return "longitude"
    if " since " in str(attrs.get("units", encoding.get("units", ""))).lower():
        return "time"
    if var is not None and np.issubdtype(var.dtype, np.datetime64):
        return "time"
    axis = str(attrs.get("axis", "")).upper()
    if axis == "T":
        return "time"
    if axis == "Z":
        return "level" if units in _PRESSURE_UNITS or str(name).lower() != "z" else "z"
    if axis in ("X", "Y"):
        return axis.lower()
    lowered = str(name).lower()
    for canonical, names in _NAMES.items():
        if lowered in names:
            return canonical
    return None


def detect_dims(ds: xr.Dataset | xr.DataArray) -> dict[Hashable, str]:
    """Map each dim of ``ds`` that can be recognised to its canonical name.

    Parameters
    ----------
    ds : xr.Dataset or xr.DataArray

    Returns
    -------
    dict
        ``{existing name: canonical name}`` for every recognised dim, including those
        that already carry their canonical name. Unrecognised dims are left out.

    Examples
    --------
    >>> ds = xr.Dataset(coords={"lat": ("lat", [0.0, 1.0], {"units": "degrees_north"})})
    >>> detect_dims(ds)
    {'lat': 'latitude'}
    """
    found: dict[Hashable, str] = {}
    for dim in ds.dims:
        var = ds.coords[dim] if dim in ds.coords else None
        canonical = _classify(dim, var)
        if canonical is not None:
            found[dim] = canonical
    return found


def _order(dims: Sequence[Hashable]) -> tuple[Hashable, ...]:
    rank = {d: i for i, d in enumerate(CANONICAL_DIMS)}
    other = rank["variable"]  # extra dims sit between the time-like and the spatial dims
    return tuple(sorted(dims, key=lambda d: rank.get(str(d), other)))


def canonicalize(
    ds: xr.Dataset,
    *,
    rename: Mapping[str, str] | None = None,
    extra_dims: Iterable[str] = (),
    sort_latitude: bool = True,
    source: str = "dataset",
) -> xr.Dataset:
    """Rename dims and coordinates to the canonical names and order; check the time axis.

    Lazy (dask-backed) data stay lazy: only coordinates are read.

    Parameters
    ----------
    ds : xr.Dataset
    rename : mapping, optional
        Explicit ``{existing dim: canonical dim}`` renames that take precedence over detection.
    extra_dims : iterable of str
        Further dims to accept unchanged (``"channel"``...); they go after the time-like
        dims and before the spatial ones.
    sort_latitude : bool
        Reverse a decreasing latitude axis so latitude increases (lazy).
    source : str
        How to name the data in error messages (a path).

    Returns
    -------
    xr.Dataset
        Dims renamed and ordered as :data:`CANONICAL_DIMS`.

    Raises
    ------
    DataFormatError
        A dim that is neither recognised nor in ``extra_dims``; two dims that map to the
        same canonical name; a time axis that is not strictly increasing.
    """
    rename = dict(rename or {})
    extra = set(extra_dims)
    mapping = {k: v for k, v in detect_dims(ds).items() if k not in rename and k not in extra}
    mapping.update(rename)
    targets: dict[str, Hashable] = {}
    for old, new in mapping.items():
        if new in targets and targets[new] != old:
            raise DataFormatError(
                f"{source}: dims {targets[new]!r} and {old!r} both look like {new!r}; "
                f"pass rename={{...}} to say which is which"
            )
        targets[new] = old
    unknown = [d for d in ds.dims if d not in mapping and d not in extra]
    if unknown:
        raise DataFormatError(
            f"{source}: cannot tell what dim(s) {unknown} are (dims: {list(ds.dims)}). "
            f"Expected CF dims among {list(CANONICAL_DIMS)} (by standard_name, axis, units "
            f"or a common name); pass rename={{'{unknown[0]}': 'x'}} or extra_dims=[...]"
        )
    renames = {k: v for k, v in mapping.items() if k != v}
    clash = [v for k, v in renames.items() if v in ds.variables and v not in renames]
    if clash:
        raise DataFormatError(
            f"{source}: cannot rename dims to {clash}: variables with those names already exist"
        )
    out = ds.rename(renames)
    for name in list(out.data_vars):
        out[name] = out[name].transpose(*_order(out[name].dims))
    if "time" in out.dims and "time" in out.coords:
        check_time_monotonic(out, source=source)
    if sort_latitude and "latitude" in out.coords and out["latitude"].ndim == 1:
        lat = np.asarray(out["latitude"].values)
        if lat.size > 1 and lat[0] > lat[-1]:
            out = out.isel(latitude=slice(None, None, -1))
    return out


def check_time_monotonic(ds: xr.Dataset | xr.DataArray, *, source: str = "dataset") -> None:
    """Raise :class:`DataFormatError` unless the ``time`` coordinate strictly increases."""
    t = np.asarray(ds["time"].values)
    if t.ndim != 1 or t.size < 2:
        return
    step = np.diff(t)
    zero = np.zeros((), dtype=step.dtype)
    bad = np.flatnonzero(~(step > zero))
    if bad.size:
        i = int(bad[0])
        raise DataFormatError(
            f"{source}: time is not strictly increasing: time[{i}]={t[i]} is followed by "
            f"time[{i + 1}]={t[i + 1]}; sort it (ds.sortby('time')) and drop duplicates"
        )


def present_spatial_dims(obj: xr.Dataset | xr.DataArray) -> tuple[str, ...]:
    """The canonical spatial dims (:data:`SPATIAL_DIMS`, ``z`` included) present in ``obj``.

    Unlike :func:`physforecast.data.layout.spatial_dims` (the two grid dims of a field), this
    answers whether, and along which canonical dims, a variable spans space at all.
    """
    return tuple(d for d in SPATIAL_DIMS if d in obj.dims)


def _first_index(da: xr.DataArray) -> xr.DataArray:
    """The first slice along every non-spatial dim."""
    keep = set(present_spatial_dims(da))
    return da.isel({d: 0 for d in da.dims if d not in keep})


def all_nan_variables(
    ds: xr.Dataset, variables: Iterable[str] | None = None, *, source: str = "dataset"
) -> list[str]:
    """The floating-point variables (of ``variables``, or all) that hold no finite value.

    The first frame is read first; only when it is all NaN is the whole variable
    reduced (chunk by chunk with dask, never loaded at once).
    """
    bad = []
    for name in check_variables(ds, variables, source=source):
        da = ds[name]
        if not np.issubdtype(da.dtype, np.floating):
            continue
        if bool(np.isfinite(_first_index(da).values).any()):
            continue
        if not bool(da.notnull().any().compute()):
            bad.append(name)
    return bad


def check_not_all_nan(
    ds: xr.Dataset, variables: Iterable[str] | None = None, *, source: str = "dataset"
) -> None:
    """Raise :class:`DataFormatError` naming every variable that holds no finite value.

    The first frame is read first; only when it is all NaN is the whole variable
    reduced (chunk by chunk with dask, never loaded at once).
    """
    bad = all_nan_variables(ds, variables, source=source)
    if bad:
        raise DataFormatError(f"{source}: variable(s) {bad} are NaN everywhere; nothing to learn")


def valid_mask(
    ds: xr.Dataset, variables: Iterable[str] | None = None, *, first_only: bool = False
) -> xr.DataArray:
    """Where each variable holds data: True = valid, False = missing (NaN).

    Parameters
    ----------
    ds : xr.Dataset
    variables : iterable of str, optional
        Variables to include (all data variables with spatial dims when omitted).
    first_only : bool
        Decide from the first frame only (cheap; right for static masks such as land).
        Otherwise a point is valid only if it is finite at every time, level, trajectory.

    Returns
    -------
    xr.DataArray
        Boolean, dims ``(variable, *spatial)``. If ``ds`` already carries a stored
        ``valid_mask``, the stored values are returned for the requested variables.

    Examples
    --------
    >>> sst = xr.DataArray([[[1.0, np.nan]]], dims=("time", "y", "x"))
    >>> valid_mask(xr.Dataset({"sst": sst})).values.tolist()
    [[[True, False]]]
    """
    if variables is None:
        variables = [
            str(v) for v in ds.data_vars if v != MASK_VARIABLE and present_spatial_dims(ds[v])
        ]
    variables = check_variables(ds, variables)
    if MASK_VARIABLE in ds.data_vars:
        stored = ds[MASK_VARIABLE]
        have = [str(v) for v in stored["variable"].values]
        if all(v in have for v in variables):
            return stored.sel(variable=list(variables))
    space = {d: ds.sizes[d] for d in SPATIAL_DIMS if any(d in ds[v].dims for v in variables)}
    masks = []
    for name in variables:
        da = ds[name]
        if first_only:
            da = _first_index(da)
        finite = da.notnull() if np.issubdtype(da.dtype, np.floating) else xr.ones_like(da, bool)
        other = [d for d in finite.dims if d not in space]
        finite = finite.all(other) if other else finite
        masks.append(
            finite.broadcast_like(xr.DataArray(np.zeros(tuple(space.values())), dims=tuple(space)))
        )
    mask = xr.concat(masks, dim="variable").assign_coords(variable=list(variables))
    mask = mask.transpose("variable", *_order(list(space)))
    mask.name = MASK_VARIABLE
    mask.attrs = {"long_name": "True where the variable holds valid (non-missing) data"}
    return mask


def attach_valid_mask(
    ds: xr.Dataset,
    variables: Iterable[str] | None = None,
    *,
    first_only: bool = True,
    fill_value: float | None = None,
    source: str = "dataset",
) -> xr.Dataset:
    """Store a validity mask, if anything is missing; optionally fill the missing values.

    By default the NaN stay: the normalizer skips them, forecast windows turn them into
    their ``mask`` and then into zeros, and the scorecard combines them with the stored
    mask. Pass ``fill_value`` to replace them (lazily) for consumers that need finite
    data (``NaN * 0`` is still NaN). Datasets without NaN are returned unchanged.

    Parameters
    ----------
    ds : xr.Dataset
    variables : iterable of str, optional
        Variables to mask (all data variables with spatial dims when omitted).
    first_only : bool
        Decide the mask from the first frame (see :func:`valid_mask`).
    fill_value : float, optional
        What replaces NaN; None keeps them.
    source : str
        How to name the data in error messages.

    Returns
    -------
    xr.Dataset
        With data variable ``valid_mask`` ``(variable, *spatial)`` and attribute
        ``mask_variable="valid_mask"``.

    Raises
    ------
    DataFormatError
        If a variable is NaN everywhere.
    """
    if variables is None:
        variables = [str(v) for v in ds.data_vars if present_spatial_dims(ds[v])]
    variables = check_variables(ds, variables, source=source)
    check_not_all_nan(ds, variables, source=source)
    mask = valid_mask(ds, variables, first_only=first_only).compute()
    if bool(mask.all()):
        return ds
    out = ds.copy()
    for name in variables if fill_value is not None else ():
        if np.issubdtype(out[name].dtype, np.floating):
            attrs = out[name].attrs
            out[name] = out[name].fillna(fill_value)
            out[name].attrs = attrs
    out[MASK_VARIABLE] = mask
    out.attrs["mask_variable"] = MASK_VARIABLE
    out.attrs["mask_source"] = "first frame" if first_only else "all frames"
    return out


def validate_fields(
    ds: xr.Dataset,
    *,
    mask: str = "first",
    fill_value: float | None = None,
    source: str = "dataset",
    all_nan: str = "raise",
) -> xr.Dataset:
    """The readers' last step: refuse all-NaN fields, then store a validity mask if needed.

    Parameters
    ----------
    ds : xr.Dataset
    mask : {"first", "full", "none"}
        Build the mask from the first frame, from all frames, or not at all.
    fill_value : float, optional
        Replaces NaN where a mask is built; None keeps them.
    source : str
        How to name the data in error messages.
    all_nan : {"raise", "warn"}
        A field that is NaN everywhere: an error (the fields were asked for by name), or
        a warning (a file opened whole: its other fields stay usable).
    """
    if mask not in ("first", "full", "none"):
        raise ConfigError(f"mask must be 'first', 'full' or 'none', got {mask!r}")
    fields = [str(v) for v in ds.data_vars if present_spatial_dims(ds[v])]
    if all_nan == "raise":
        check_not_all_nan(ds, fields, source=source)
    else:
        dead = all_nan_variables(ds, fields, source=source)
        if dead:
            warnings.warn(
                f"{source}: variable(s) {dead} are NaN everywhere; they cannot be forecast "
                "(choose the variables to use with data.variables)",
                stacklevel=3,
            )
            fields = [f for f in fields if f not in dead]  # no mask to make of them
    if mask != "none" and fields:
        ds = attach_valid_mask(
            ds, fields, first_only=mask == "first", fill_value=fill_value, source=source
        )
    return ds


def latitude_weights(lat: Any, method: str = "cos") -> np.ndarray:
    """Area weights of the rows of a regular lat-lon grid, normalised to mean 1.

    Parameters
    ----------
    lat : array-like, shape (H,)
        Latitudes in degrees, increasing or decreasing.
    method : {"cos", "area"}
        ``"cos"``: ``cos(lat)``. ``"area"``: ``sin(upper) - sin(lower)`` of each cell's
        bounds (midpoints between rows, clipped at the poles), as WeatherBench 2 does;
        it gives pole rows a small positive weight instead of zero.

    Returns
    -------
    np.ndarray, shape (H,)
        Float64 weights with mean 1.

    Examples
    --------
    >>> latitude_weights([-60.0, 0.0, 60.0]).round(3).tolist()
    [0.5, 2.0, 0.5]
    """
    lat = np.asarray(lat, dtype=np.float64)
    if lat.ndim != 1 or lat.size == 0:
        raise ValueError(
            f"latitude_weights: expected a 1-D array of latitudes, got shape {lat.shape}"
        )
    if np.any(np.abs(lat) > 90.0):
        raise ValueError(
            f"latitude_weights: latitudes must lie in [-90, 90] degrees, got {lat.min()}..{lat.max()}"
        )
    if method == "cos":
        w = np.cos(np.deg2rad(lat))
    elif method == "area":
        order = np.argsort(lat)
        s = lat[order]
        mid = (s[1:] + s[:-1]) / 2
        lower = np.concatenate([[-90.0], mid])
        upper = np.concatenate([mid, [90.0]])
        w_sorted = np.sin(np.deg2rad(upper)) - np.sin(np.deg2rad(lower))
        w = np.empty_like(w_sorted)
        w[order] = w_sorted
    else:
        raise ValueError(f"latitude_weights: method must be 'cos' or 'area', got {method!r}")
    w = np.clip(w, 0.0, None)
    if w.sum() <= 0:
        raise ValueError("latitude_weights: all weights are zero (only poles given?)")
    return w / w.mean()


def simulation_dataset(
    fields: Mapping[str, tuple[np.ndarray, str, str]],
    *,
    time: np.ndarray,
    y: np.ndarray,
    x: np.ndarray,
    parameters: Mapping[str, tuple[np.ndarray, str, str]],
    attrs: Mapping[str, Any],
    space_units: str = "m",
    time_units: str = "s",
    coords: Mapping[str, tuple[tuple[str, ...], np.ndarray, Mapping[str, Any]]] | None = None,
) -> xr.Dataset:
    """Assemble simulator output into the package's dataset convention.

    Parameters
    ----------
    fields : mapping
        ``name -> (values, units, long_name)`` with values of shape (N, T, H, W);
        stored as float32 with dims (trajectory, time, y, x).
    time, y, x : np.ndarray
        Coordinates, shapes (T,), (H,), (W,).
    parameters : mapping
        ``name -> (values, units, long_name)`` with values of shape (N,); stored as
        float32 data variables along ``trajectory`` and listed in ``attrs["parameters"]``.
    attrs : mapping
        Dataset attributes (``system``, ``dt``, ``boundary_conditions``...); ``dx``,
        ``dy`` and ``parameters`` are filled in when absent.
    space_units, time_units : str
        Units of the x/y and time coordinates.
    coords : mapping, optional
        Extra coordinates, ``name -> (dims, values, attrs)``.

    Returns
    -------
    xr.Dataset
    """
    n = None
    data_vars = {}
    for name, (values, units, long_name) in fields.items():
        values = np.asarray(values)
        if values.ndim != 4 or values.shape[1:] != (len(time), len(y), len(x)):
            raise ValueError(
                f"field {name!r}: expected shape (N, {len(time)}, {len(y)}, {len(x)}), "
                f"got {values.shape}"
            )
        n = values.shape[0]
        data_vars[name] = xr.Variable(
            ("trajectory", "time", "y", "x"),
            values.astype(np.float32, copy=False),
            {"units": units, "long_name": long_name},
        )
    for name, (values, units, long_name) in parameters.items():
        values = np.asarray(values, dtype=np.float32).reshape(-1)
        if n is not None and values.shape != (n,):
            raise ValueError(f"parameter {name!r}: expected shape ({n},), got {values.shape}")
        data_vars[name] = xr.Variable(
            ("trajectory",), values, {"units": units, "long_name": long_name}
        )
    all_coords: dict[str, Any] = {
        "time": ("time", np.asarray(time, np.float64), {"units": time_units, "long_name": "time"}),
        "y": (
            "y",
            np.asarray(y, np.float64),
            {"units": space_units, "long_name": "y", "axis": "Y"},
        ),
        "x": (
            "x",
            np.asarray(x, np.float64),
            {"units": space_units, "long_name": "x", "axis": "X"},
        ),
    }
    if n is not None:
        all_coords["trajectory"] = ("trajectory", np.arange(n))
    for name, (dims, values, cattrs) in (coords or {}).items():
        all_coords[name] = (dims, values, dict(cattrs))
    out_attrs = dict(attrs)
    out_attrs.setdefault("dx", float(x[1] - x[0]) if len(x) > 1 else 1.0)
    out_attrs.setdefault("dy", float(y[1] - y[0]) if len(y) > 1 else 1.0)
    out_attrs.setdefault("parameters", ",".join(parameters))
    out_attrs.setdefault("Conventions", "CF-1.8")
    return xr.Dataset(data_vars, coords=all_coords, attrs=out_attrs)
