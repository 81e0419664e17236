"""HDF5 readers: PDEBench (both layouts) and The Well, lazily through dask.

Each HDF5 dataset is wrapped in a picklable reader that opens the file for every chunk it
reads, so nothing is loaded whole and DataLoader workers never share an h5py handle.
Use them through :func:`physforecast.data.formats.open_any`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import dask.array as dsa
import h5py
import numpy as np
import xarray as xr
from dask.base import tokenize

from physforecast.errors import DataFormatError, DataIntegrityError

from .cf import check_time_monotonic, validate_fields
from .layout import check_variables

__all__ = ["open_pdebench", "open_the_well", "open_h5", "PDEBENCH_FIELDS"]

PDEBENCH_FIELDS = {"tensor", "density", "pressure", "Vx", "Vy", "Vz", "energy"}
_PDEBENCH_RENAME = {"Vx": "velocity_x", "Vy": "velocity_y", "Vz": "velocity_z"}
_SPACE = ("x", "y", "z")


def open_h5(path: Path):
    """Open an HDF5 file read-only; a :class:`DataFormatError` if it is corrupt or truncated."""
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise DataFormatError(
            f"{path}: cannot read as HDF5 (corrupt or truncated?): {err}"
        ) from err


class _H5Array:
    """A picklable, lazily read HDF5 dataset: every read opens the file, reads, closes.

    Dask calls ``__getitem__`` with one tuple of slices per chunk, so a chunk costs one
    file open and workers never share an h5py handle.
    """

    def __init__(self, path: Path, key: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.path, self.key, self.shape, self.dtype = str(path), key, tuple(shape), np.dtype(dtype)
        self.ndim = len(self.shape)

    def __getitem__(self, index):
        try:
            with h5py.File(self.path, "r") as f:
                return np.asarray(f[self.key][index])
        except (OSError, KeyError) as err:
            where = ", ".join(
                f"{sl.start or 0}:{sl.stop}" if isinstance(sl, slice) else str(sl)
                for sl in (index if isinstance(index, tuple) else (index,))
            )
            raise DataIntegrityError(
                f"{self.path}: HDF5 dataset {self.key!r} cannot be read at [{where}] "
                f"(corrupt or truncated?): {err}. Restore the file from a good copy"
            ) from None


def _lazy(path: Path, dset, chunks: Sequence[int] | None = None) -> dsa.Array:
    arr = _H5Array(path, dset.name, dset.shape, dset.dtype)
    stat = os.stat(path)
    chunks = tuple(chunks) if chunks is not None else dset.shape
    name = "h5-" + tokenize(str(path), dset.name, stat.st_mtime_ns, stat.st_size, chunks)
    return dsa.from_array(
        arr,
        chunks=chunks,
        name=name,
        meta=np.empty((0,) * arr.ndim, dtype=arr.dtype),
        asarray=False,
    )


def _per_trajectory(shape: Sequence[int]) -> tuple[int, ...]:
    return (1,) + tuple(shape[1:])


def _coordinate(f, key: str, n: int, source: str) -> np.ndarray:
    """A 1-D grid from ``key`` with ``n`` points (a grid of n + 1 edges keeps the first n)."""
    if key not in f:
        return np.arange(n, dtype=np.float64)
    values = np.asarray(f[key][()], dtype=np.float64).reshape(-1)
    if values.size == n + 1:
        values = values[:n]
    if values.size != n:
        raise DataFormatError(f"{source}: {key!r} has {values.size} points, the data have {n}")
    return values


def _grid_attrs(ds: xr.Dataset) -> dict[str, float]:
    out = {}
    for dim, key in (("x", "dx"), ("y", "dy"), ("z", "dz"), ("time", "dt")):
        if dim in ds.coords and ds.sizes[dim] > 1 and np.issubdtype(ds[dim].dtype, np.number):
            out[key] = float(ds[dim].values[1] - ds[dim].values[0])
    return out


def _parameters_from_name(stem: str) -> dict[str, float]:
    """PDEBench puts parameters in file names: ``..._beta0.1``, ``_M1.0_Eta0.01_Zeta0.1``."""
    out = {}
    for key, value in re.findall(r"(?:^|_)([A-Za-z]+)(\d+(?:\.\d+)?(?:[eE]-?\d+)?)(?=_|$)", stem):
        out[key] = float(value)
    return out


def _attr_value(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.ndarray):
        items = [_attr_value(x) for x in v.reshape(-1).tolist()]
        return items if v.ndim else items[0]
    if isinstance(v, np.generic):
        return v.item()
    return v


def _netcdf_attr(v: Any) -> Any:
    v = _attr_value(v)
    if isinstance(v, list):
        return ",".join(str(_attr_value(x)) for x in v)
    if isinstance(v, bool):
        return int(v)
    return v if isinstance(v, (str, int, float)) else str(v)


def _pdebench_channels(stem: str, n: int, names: Sequence[str] | None, source: str) -> list[str]:
    if names is not None:
        if len(names) != n:
            raise DataFormatError(
                f"{source}: channel_names has {len(names)} names for {n} channels"
            )
        return list(names)
    low = stem.lower()
    if n == 1 and any(t in low for t in ("rdb", "swe", "shallow")):
        return ["h"]
    if n == 2 and "diff-react" in low:
        return ["u", "v"]
    return ["u"] if n == 1 else [f"channel_{i}" for i in range(n)]


def open_pdebench(
    path: str | os.PathLike,
    *,
    variables: Iterable[str] | str | None = None,
    channel_names: Sequence[str] | None = None,
    tensor_name: str = "u",
    mask: str = "none",
) -> xr.Dataset:
    """Open a PDEBench HDF5 file (either layout) lazily.

    Parameters
    ----------
    path : str or path
    variables : str or iterable of str, optional
        Variables to keep, named as in the returned dataset.
    channel_names : sequence of str, optional
        Names of the channels C of the per-seed layout (default from the file name:
        ``h`` for shallow water, ``u, v`` for diffusion-reaction, else ``u`` or
        ``channel_<i>``).
    tensor_name : str
        Name given to the single-file ``tensor`` array.
    mask : {"none", "first", "full"}
        See :func:`open_cf`.

    Returns
    -------
    xr.Dataset
        Fields (trajectory, time, [z,] [y,] x); grid spacing, time step and parameters
        parsed from the file name (``beta0.1`` -> variable ``beta``) as attributes and
        trajectory variables. Arrays are [N, T, X, Y] in the file and (N, T, Y, X) here.
    """
    p = Path(path)
    source = str(p)
    data: dict[str, xr.DataArray] = {}
    static: dict[str, tuple] = {}
    with open_h5(p) as f:
        keys = sorted(f.keys())
        root_attrs = {k: _netcdf_attr(v) for k, v in f.attrs.items()}
        seeds = [k for k in keys if k.isdigit()]
        if seeds:
            first = f[seeds[0]]
            if "data" not in first:
                raise DataFormatError(f"{source}: seed group {seeds[0]!r} has no 'data' array")
            shape = first["data"].shape  # (T, X[, Y[, Z]], C)
            nsp = len(shape) - 2
            if nsp < 1:
                raise DataFormatError(f"{source}: 'data' of shape {shape}, expected [T, X, (Y,) C]")
            arrays = []
            for k in seeds:
                d = f[k].get("data")
                if d is None or d.shape != shape:
                    got = None if d is None else d.shape
                    raise DataFormatError(
                        f"{source}: seed {k!r} has data of shape {got}, seed {seeds[0]!r} {shape}"
                    )
                arrays.append(_lazy(p, d))
            stacked = dsa.stack(arrays)  # (N, T, X.., C)
            grid = {
                ax: _coordinate(first, f"grid/{ax}", shape[1 + i], source)
                for i, ax in enumerate(_SPACE[:nsp])
            }
            t = _coordinate(first, "grid/t", shape[0], source)
            dims = ("trajectory", "time") + _SPACE[:nsp]
            names = _pdebench_channels(p.stem, shape[-1], channel_names, source)
            for c, name in enumerate(names):
                data[name] = xr.DataArray(stacked[..., c], dims=dims)
        else:
            fields = [k for k in keys if k in PDEBENCH_FIELDS and f[k].ndim >= 3]
            if not fields:
                raise DataFormatError(
                    f"{source}: no PDEBench arrays found (expected 'tensor', 'density'... or "
                    f"seed groups '0000'...); keys: {keys}"
                )
            shape = f[fields[0]].shape  # (N, T, X[, Y[, Z]])
            nsp = len(shape) - 2
            for k in fields:
                if f[k].shape != shape:
                    raise DataFormatError(
                        f"{source}: {k!r} has shape {f[k].shape}, {fields[0]!r} {shape}"
                    )
                name = tensor_name if k == "tensor" else _PDEBENCH_RENAME.get(k, k)
                data[name] = xr.DataArray(
                    _lazy(p, f[k], _per_trajectory(shape)),
                    dims=("trajectory", "time") + _SPACE[:nsp],
                )
            grid = {
                ax: _coordinate(f, f"{ax}-coordinate", shape[2 + i], source)
                for i, ax in enumerate(_SPACE[:nsp])
            }
            t = _coordinate(f, "t-coordinate", shape[1], source)
            for k in keys:  # static per-trajectory fields, e.g. Darcy's coefficient "nu"
                if k not in fields and not k.endswith("-coordinate") and f[k].ndim == 1 + nsp:
                    if f[k].shape == (shape[0],) + shape[2:]:
                        static[k] = (("trajectory",) + _SPACE[:nsp], _lazy(p, f[k]))
    canonical = ("trajectory", "time") + tuple(reversed(_SPACE[:nsp]))
    ds = xr.Dataset({k: v.transpose(*canonical) for k, v in data.items()})
    for name in ds.data_vars:
        ds[name].attrs = {"units": "1", "long_name": name}
    ds = ds.assign_coords(
        time=("time", t, {"units": "1", "long_name": "time"}),
        **{ax: (ax, v, {"units": "1", "long_name": ax}) for ax, v in grid.items()},
        trajectory=("trajectory", np.arange(ds.sizes["trajectory"])),
    )
    for k, (dims, arr) in static.items():
        ds = ds.assign_coords(
            {k: xr.DataArray(arr, dims=dims).transpose("trajectory", *reversed(_SPACE[:nsp]))}
        )
    if variables is not None:
        ds = ds[check_variables(ds, variables, source=source)]
    params = _parameters_from_name(p.stem)
    for k, v in params.items():
        if k not in ds.variables:
            ds[k] = (
                "trajectory",
                np.full(ds.sizes["trajectory"], v, np.float32),
                {"units": "1", "long_name": k},
            )
    low = p.stem.lower()
    bc = (
        "periodic"
        if "periodic" in low
        else "open"
        if ("outgoing" in low or "trans" in low)
        else "unknown"
    )
    ds.attrs = {
        **root_attrs,
        "system": f"pdebench:{p.stem}",
        "source_format": "pdebench",
        "boundary_conditions": root_attrs.get("boundary_conditions", bc),
        "parameters": ",".join(k for k in params if k in ds.data_vars),
        **_grid_attrs(ds),
    }
    check_time_monotonic(ds, source=source)
    return validate_fields(ds, mask=mask, source=source)


def _as_list(v: Any) -> list[str]:
    v = _attr_value(v)
    if isinstance(v, str):
        return [v]
    return [str(_attr_value(x)) for x in v]


def open_the_well(
    path: str | os.PathLike,
    *,
    variables: Iterable[str] | str | None = None,
    mask: str = "none",
) -> xr.Dataset:
    """Open one HDF5 file of The Well lazily.

    Parameters
    ----------
    path : str or path
    variables : str or iterable of str, optional
        Variables to keep, named as returned (``velocity_x`` for component x of the
        vector field ``velocity``).
    mask : {"none", "first", "full"}
        See :func:`open_cf`.

    Returns
    -------
    xr.Dataset
        Fields (trajectory, time, [z,] y, x), spatial axes reversed from the file's
        ``spatial_dims`` order (x, y[, z]); vector (t1) fields split into ``<name>_<axis>``
        and tensor (t2) fields into ``<name>_<axis><axis>``; fields constant in time
        become coordinates; root-attribute parameters (``simulation_parameters``) and
        constant scalars become variables along trajectory.
    """
    p = Path(path)
    source = str(p)
    fields: dict[str, xr.DataArray] = {}
    static: dict[str, xr.DataArray] = {}
    with open_h5(p) as f:
        for group in ("dimensions", "t0_fields"):
            if group not in f:
                raise DataFormatError(f"{source}: no {group!r} group; not a file of The Well")
        dim_group = f["dimensions"]
        space = _as_list(dim_group.attrs.get("spatial_dims", [])) or [
            a for a in _SPACE if a in dim_group
        ]
        n_traj = int(_attr_value(f.attrs.get("n_trajectories", 0))) or None
        coords = {
            ax: np.asarray(dim_group[ax][()], np.float64).reshape(-1)
            for ax in space
            if ax in dim_group
        }
        if "time" not in dim_group:
            raise DataFormatError(f"{source}: 'dimensions' has no 'time' dataset")
        time = np.asarray(dim_group["time"][()], np.float64)
        if time.ndim == 2:  # sample-varying time: keep it only if all trajectories agree
            if not np.allclose(time, time[:1]):
                raise DataFormatError(f"{source}: time differs between trajectories; not supported")
            time = time[0]
        for order, group in enumerate(("t0_fields", "t1_fields", "t2_fields")):
            if group not in f:
                continue
            for name, dset in f[group].items():
                sv = bool(_attr_value(dset.attrs.get("sample_varying", True)))
                tv = bool(_attr_value(dset.attrs.get("time_varying", True)))
                dv = dset.attrs.get("dim_varying", [True] * len(space))
                varying = [ax for ax, flag in zip(space, np.atleast_1d(dv)) if bool(flag)]
                dims = (["trajectory"] if sv else []) + (["time"] if tv else []) + varying
                comps = list(dset.shape[len(dims) :])
                if comps != [len(space)] * order:
                    raise DataFormatError(
                        f"{source}: {group}/{name} has shape {dset.shape}; expected "
                        f"{len(dims)} dims {dims} then {order} component axes of size {len(space)}"
                    )
                chunks = ((1,) if sv else ()) + tuple(dset.shape[1 if sv else 0 :])
                arr = xr.DataArray(
                    _lazy(p, dset, chunks), dims=dims + [f"_c{i}" for i in range(order)]
                )
                n_traj = n_traj or (dset.shape[0] if sv else None)
                suffixes = (
                    [""]
                    if order == 0
                    else ["_" + "".join(s) for s in _component_names(space, order)]
                )
                for i, suffix in enumerate(suffixes):
                    piece = arr
                    if order:
                        idx = np.unravel_index(i, (len(space),) * order)
                        piece = arr.isel({f"_c{j}": int(k) for j, k in enumerate(idx)})
                    piece.attrs = {
                        "units": "1",
                        "long_name": f"{name}{suffix}",
                        "tensor_order": order,
                    }
                    (fields if tv else static)[f"{name}{suffix}"] = piece
        params = {
            k: _attr_value(f.attrs[k])
            for k in _as_list(f.attrs.get("simulation_parameters", []))
            if k in f.attrs
        }
        if "scalars" in f:
            for name, dset in f["scalars"].items():
                if not bool(_attr_value(dset.attrs.get("time_varying", False))):
                    values = np.asarray(dset[()], np.float64).reshape(-1)
                    params.setdefault(name, values if values.size > 1 else float(values[0]))
        bcs = []
        for gname, g in f.get("boundary_conditions", {}).items():
            kind = str(_attr_value(g.attrs.get("bc_type", "unknown"))).lower()
            for ax in _as_list(g.attrs.get("associated_dims", [gname])):
                bcs.append(f"{ax}: {kind}")
        root_attrs = {
            k: _netcdf_attr(v)
            for k, v in f.attrs.items()
            if k not in params and k != "simulation_parameters"
        }
    if not fields:
        raise DataFormatError(f"{source}: no time-varying fields in t0/t1/t2_fields")
    n_traj = n_traj or 1
    order = ["trajectory", "time"] + list(reversed(space))
    template = xr.DataArray(
        np.empty((n_traj, time.size) + tuple(coords[ax].size for ax in reversed(space)), np.int8),
        dims=order,
    )
    ds = xr.Dataset(
        {
            k: v.broadcast_like(template).transpose(*order).assign_attrs(v.attrs)
            for k, v in fields.items()
        }
    )
    for k, v in static.items():
        keep = [d for d in order if d != "time"]
        ds = ds.assign_coords(
            {k: v.broadcast_like(template.isel(time=0, drop=True)).transpose(*keep)}
        )
    ds = ds.assign_coords(
        trajectory=("trajectory", np.arange(n_traj)),
        time=("time", time, {"units": "1", "long_name": "time"}),
        **{ax: (ax, coords[ax], {"units": "1", "long_name": ax}) for ax in space},
    )
    if variables is not None:
        ds = ds[check_variables(ds, variables, source=source)]
    for k, v in params.items():
        values = (
            np.broadcast_to(np.asarray(v, np.float32), (n_traj,))
            if np.size(v) in (1, n_traj)
            else None
        )
        if values is not None and k not in ds.variables:
            ds[k] = ("trajectory", values.copy(), {"units": "1", "long_name": k})
    ds.attrs = {
        **root_attrs,
        "system": f"the_well:{root_attrs.get('dataset_name', p.stem)}",
        "source_format": "the_well",
        "boundary_conditions": "; ".join(bcs) if bcs else "unknown",
        "parameters": ",".join(k for k in params if k in ds.data_vars),
        **_grid_attrs(ds),
    }
    check_time_monotonic(ds, source=source)
    return validate_fields(ds, mask=mask, source=source)


def _component_names(space: Sequence[str], order: int) -> list[tuple[str, ...]]:
    """Component labels in C order: ("x",), ("y",) for vectors; ("x", "x"), ("x", "y")... for tensors."""
    return [
        tuple(space[i] for i in np.unravel_index(k, (len(space),) * order))
        for k in range(len(space) ** order)
    ]
