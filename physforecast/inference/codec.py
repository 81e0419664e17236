"""Datasets in and out of HTTP bodies: netCDF bytes or JSON, and the check for missing values.

Two body formats carry an ``xr.Dataset``:

- **netCDF** (``Content-Type: application/x-netcdf``): the bytes of a netCDF3 or
  netCDF4/HDF5 file, as ``ds.to_netcdf()`` returns them;
- **JSON** (``Content-Type: application/json``): xarray's dictionary layout
  (:meth:`xarray.Dataset.to_dict` / :meth:`~xarray.Dataset.from_dict`)::

      {"coords": {"x": {"dims": ["x"], "data": [0.0, 0.1, ...]}},
       "data_vars": {"vorticity": {"dims": ["trajectory", "time", "y", "x"],
                                   "data": [[[[...]]]], "attrs": {"units": "1/s"}},
                     "viscosity": {"dims": ["trajectory"], "data": [0.001]}},
       "attrs": {"system": "ns2d"}}

  ``null`` stands for NaN (JSON has no NaN); a ``time`` coordinate of ISO 8601 strings is
  read as datetimes, and datetimes are written as ISO 8601 strings.

:func:`check_missing` refuses NaN where no mask allows it: the model needs complete
histories, so a value may be missing only at a point that is missing at every time (a
land mask), which stays NaN in the forecast.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

__all__ = [
    "RequestError",
    "NETCDF_TYPES",
    "JSON_TYPE",
    "dataset_from_netcdf",
    "dataset_from_json",
    "dataset_to_netcdf",
    "dataset_to_json",
    "check_missing",
]

#: Media types read and written as netCDF.
NETCDF_TYPES = ("application/x-netcdf", "application/netcdf", "application/octet-stream")
#: The JSON media type.
JSON_TYPE = "application/json"

# the netCDF C / HDF5 libraries are not thread-safe; the server decodes in several threads
_NETCDF_LOCK = threading.Lock()


class RequestError(ValueError):
    """A request the server cannot serve, with the HTTP status to answer.

    Parameters
    ----------
    message : str
        What is wrong and what to do, sent as the response's ``detail``.
    status : int
        400 (unreadable body), 415 (unknown media type), 422 (a dataset the model cannot
        forecast from) or 503 (the queue is full).
    """

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = int(status)


# -------------------------------------------------------------------------- in


def dataset_from_netcdf(body: bytes) -> xr.Dataset:
    """Read a netCDF3 or netCDF4 file held in memory (loaded, nothing stays open).

    Raises
    ------
    RequestError
        400 when the bytes are not a netCDF file.
    """
    if not body:
        raise RequestError("the request body is empty; send a netCDF file or JSON", 400)
    try:
        with _NETCDF_LOCK, xr.open_dataset(bytes(body)) as ds:
            return ds.load()
    except Exception as err:  # any reader failure is a bad body
        raise RequestError(
            f"the body ({len(body)} bytes, starting {bytes(body[:8])!r}) is not a readable "
            "netCDF3 or netCDF4 file; send the bytes of ds.to_netcdf(), or JSON with "
            "Content-Type: application/json",
            400,
        ) from err


def _numeric(data: Any) -> Any:
    """Nested lists of numbers and nulls -> float array (null -> NaN); anything else as is."""
    try:
        array = np.asarray(data, dtype=np.float64)
    except (TypeError, ValueError):
        return data
    return array


def _times(data: Any) -> Any:
    try:
        return np.asarray(data, dtype="datetime64[ns]")
    except (TypeError, ValueError):
        return data


def dataset_from_json(body: bytes | str | Mapping[str, Any]) -> xr.Dataset:
    """Build a dataset from xarray's dictionary layout (see the module docstring).

    Raises
    ------
    RequestError
        400 when the body is not JSON or not in that layout.
    """
    if isinstance(body, (bytes, str)):
        if not body:
            raise RequestError("the request body is empty; send JSON or a netCDF file", 400)
        try:
            obj = json.loads(body)
        except json.JSONDecodeError as err:
            raise RequestError(f"the body is not valid JSON: {err}", 400) from err
    else:
        obj = body
    if not isinstance(obj, Mapping) or "data_vars" not in obj:
        raise RequestError(
            "the JSON body must be an object with 'data_vars' (and optionally 'coords' and "
            "'attrs'), each variable as {'dims': [...], 'data': [...]}: the layout of "
            "xarray's Dataset.to_dict()",
            400,
        )
    layout = dict(obj)
    for key in ("data_vars", "coords"):
        entries = layout.get(key) or {}
        if not isinstance(entries, Mapping):
            raise RequestError(
                f"'{key}' must be an object of variables, got {type(entries).__name__}", 400
            )
        fixed = {}
        for name, entry in entries.items():
            if not isinstance(entry, Mapping) or "dims" not in entry or "data" not in entry:
                raise RequestError(
                    f"{key[:-1].replace('_', ' ')} {name!r} must be an object with 'dims' and "
                    "'data'",
                    400,
                )
            entry = dict(entry)
            entry["data"] = (
                _times(entry["data"])
                if key == "coords" and name == "time"
                else _numeric(entry["data"])
            )
            fixed[name] = entry
        layout[key] = fixed
    try:
        return xr.Dataset.from_dict(layout)
    except (ValueError, TypeError, KeyError) as err:
        raise RequestError(f"the JSON does not describe a dataset: {err}", 400) from err


# -------------------------------------------------------------------------- out


def _jsonable(value: Any) -> Any:
    """Attribute values as JSON types (numpy scalars and arrays to numbers and lists)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return _array(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _array(a: np.ndarray) -> Any:
    kind = a.dtype.kind
    if kind == "M":
        return np.datetime_as_string(a, unit="auto").tolist()
    if kind == "m":
        return (a / np.timedelta64(1, "s")).tolist()
    if kind in "fc":
        if kind == "c":
            raise TypeError("complex values cannot be written as JSON")
        out = a.astype(object)
        out[~np.isfinite(a)] = None
        return out.tolist()
    if kind in "iub":
        return a.tolist()
    return _jsonable(a.tolist())


def dataset_to_json(ds: xr.Dataset) -> dict[str, Any]:
    """The dataset in xarray's dictionary layout with JSON types (NaN -> null)."""

    def var(v: xr.Variable | xr.DataArray) -> dict[str, Any]:
        return {
            "dims": list(v.dims),
            "attrs": _jsonable(dict(v.attrs)),
            "data": _array(np.asarray(v.values)),
        }

    return {
        "dims": {str(k): int(n) for k, n in ds.sizes.items()},
        "attrs": _jsonable(dict(ds.attrs)),
        "coords": {str(k): var(v) for k, v in ds.coords.items()},
        "data_vars": {str(k): var(v) for k, v in ds.data_vars.items()},
    }


def _netcdf_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Attributes netCDF can store: booleans as 0/1, containers as JSON text, None dropped."""
    out = {}
    for key, value in attrs.items():
        if value is None:
            continue
        if isinstance(value, (bool, np.bool_)):
            value = int(value)
        elif isinstance(value, (Mapping, list, tuple)) and not (
            isinstance(value, (list, tuple))
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        ):
            value = json.dumps(_jsonable(value))
        out[str(key)] = value
    return out


def dataset_to_netcdf(ds: xr.Dataset) -> bytes:
    """The bytes of a netCDF file holding ``ds``.

    netCDF3 (64-bit offset, written by scipy: several times faster to write and read than
    netCDF4/HDF5 in memory) when the dataset fits that format, else netCDF4. Both open
    with ``xr.open_dataset(bytes)``.
    """
    clean = ds.copy()
    clean.attrs = _netcdf_attrs(ds.attrs)
    for name in list(clean.variables):
        clean[name].attrs = _netcdf_attrs(clean[name].attrs)
    with _NETCDF_LOCK:
        try:
            return bytes(clean.to_netcdf(engine="scipy"))
        except (ValueError, TypeError, OverflowError):  # does not fit netCDF3
            return bytes(clean.to_netcdf(engine="netcdf4"))


# -------------------------------------------------------------------------- checks


def check_missing(ds: xr.Dataset, variables: Sequence[str], params: Sequence[str] = ()) -> None:
    """Refuse missing values the model cannot be given.

    A point of a forecast variable may be NaN only if it is NaN at every time (a static
    mask, such as land; the forecast is NaN there too). NaN at some times only (a gap),
    infinite values, an all-NaN variable and NaN physical parameters are errors.
    Variables that are absent or lack a ``time`` dim are left to
    :func:`physforecast.predict`, which names them.

    Raises
    ------
    ValueError
        Naming the variable, how many values and the first position.
    """
    for name in variables:
        if name not in ds.data_vars or "time" not in ds[name].dims:
            continue
        da = ds[name]
        if da.dtype.kind not in "fiub":
            raise ValueError(
                f"variable {name!r} has dtype {da.dtype}, not numbers; send its values as numbers"
            )
        values = np.asarray(da.values, dtype=np.float64)
        nan = np.isnan(values)
        if nan.all():
            raise ValueError(
                f"variable {name!r} is NaN everywhere; there is nothing to forecast from"
            )
        static = nan.all(axis=da.dims.index("time"), keepdims=True)
        bad = (nan & ~static) | np.isinf(values)
        if bad.any():
            first = np.argwhere(bad)[0]
            where = ", ".join(f"{d}={int(i)}" for d, i in zip(da.dims, first))
            raise ValueError(
                f"variable {name!r} has {int(bad.sum())} missing or infinite value(s) at points "
                f"that are valid at other times (first at {where}); the model needs complete "
                "histories. NaN is allowed only as a mask, at points missing at every time "
                "(land), which stay NaN in the forecast: fill the gaps (ds.interpolate_na('time')) "
                "or mask those points at every time"
            )
    for name in params:
        if name in ds.data_vars:
            values = np.asarray(ds[name].values)
            if values.dtype.kind not in "fiub" or not np.isfinite(values.astype(np.float64)).all():
                raise ValueError(
                    f"parameter {name!r} has missing or non-numeric values ({values.tolist()!r:.80}); "
                    "the model is conditioned on it, so every sample needs a number"
                )
