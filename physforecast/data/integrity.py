"""Data integrity: no missing chunk, unreadable chunk or broken frame goes unnoticed.

Three checks, each failing with a :class:`~physforecast.errors.DataIntegrityError` that
names the variable, the file and the index, and says what to do:

- :func:`check_zarr_chunks`, when a zarr store is opened: every chunk of every variable
  must exist. zarr reads an absent chunk as the fill value (NaN), so without this a lost
  file would silently become NaN, then 0 in the windows, and train as if it were data.
- :class:`GuardedZarrArray`, when a chunk is read: a chunk that cannot be decoded (a
  truncated or overwritten file: "Zstd decompression error") names its variable, file and
  chunk instead of a codec's bare message.
- :func:`check_frames`, on every training window: a value that is not finite where the
  field's validity mask says it is valid (a gap in the data, a chunk read as NaN).

Only when the user asks, with the reader option ``on_bad_data="mask"``
(``--set data.options.on_bad_data=mask``), are such values treated as missing instead: an
absent chunk reads as NaN, an undecodable chunk as NaN (with a warning naming it), and a
window's mask leaves those points out of the loss.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Iterator
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from physforecast.errors import ConfigError, DataIntegrityError

__all__ = [
    "ON_BAD_DATA",
    "BAD_DATA_ATTR",
    "check_on_bad_data",
    "missing_zarr_chunks",
    "check_zarr_chunks",
    "GuardedZarrArray",
    "guard_zarr",
    "check_frames",
]

#: What to do with missing or unreadable values: stop with an error, or treat them as masked.
ON_BAD_DATA = ("raise", "mask")
#: Dataset attribute a reader sets when the user asked for ``on_bad_data="mask"``.
BAD_DATA_ATTR = "physforecast_on_bad_data"

_WHAT_TO_DO = (
    "restore the file from a good copy, or set data.options.on_bad_data=mask to train "
    "with those values masked out"
)


def check_on_bad_data(value: str) -> str:
    """``value`` if it is one of :data:`ON_BAD_DATA`, else a :class:`ConfigError`."""
    if value not in ON_BAD_DATA:
        raise ConfigError(f"on_bad_data must be one of {', '.join(ON_BAD_DATA)}; got {value!r}")
    return value


# -- zarr: chunks that are absent ----------------------------------------------------------


def _zarr_arrays(path: Path, names: Iterable[str]) -> dict[str, Any]:
    import zarr

    group = zarr.open_group(str(path), mode="r")
    out = {}
    for name in names:
        try:
            arr = group[name]
        except KeyError:
            continue
        if isinstance(arr, zarr.Array) and arr.ndim > 0:
            out[name] = arr
    return out


_METADATA = {"zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"}


def _storage_chunks(arr: Any) -> tuple[int, ...]:
    """The shape of one stored object (a shard when the array is sharded, else a chunk)."""
    return tuple(getattr(arr, "shards", None) or arr.chunks)


def _grid(arr: Any) -> tuple[int, ...]:
    """Stored objects per dim of a zarr array."""
    return tuple(-(-s // c) for s, c in zip(arr.shape, _storage_chunks(arr)))


def _stored_keys(folder: str, prefix: str = "") -> Iterator[str]:
    """The relative paths (``c/3/0/0``) of the files below ``folder``, metadata aside."""
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                yield from _stored_keys(entry.path, f"{prefix}{entry.name}/")
            elif entry.name not in _METADATA:
                yield prefix + entry.name


def missing_zarr_chunks(path: str | os.PathLike, names: Iterable[str]) -> dict[str, list]:
    """The chunks of each array ``names`` that a local zarr store lacks.

    Returns
    -------
    dict
        ``{name: [(chunk index tuple, key), ...]}`` for the arrays that miss chunks; the
        key is the chunk's path inside the store (``sst/c/3/0/0``).
    """
    root = Path(path)
    out: dict[str, list] = {}
    for name, arr in _zarr_arrays(root, names).items():
        present = set(_stored_keys(str(root / name)))
        if len(present) >= math.prod(_grid(arr)):
            continue  # every chunk is there (the common case: no key to compare)
        lost = []
        for coords in product(*map(range, _grid(arr))):
            key = arr.metadata.encode_chunk_key(coords)
            if key not in present:
                lost.append((coords, f"{name}/{key}"))
        if lost:
            out[name] = lost
    return out


def _region(arr: Any, dims: tuple[str, ...], coords: tuple[int, ...]) -> dict[str, slice]:
    return {
        d: slice(i * c, min((i + 1) * c, s))
        for d, i, c, s in zip(dims, coords, _storage_chunks(arr), arr.shape)
    }


def _time_like(dim: Any) -> bool:
    """Whether a (raw, not yet canonical) dim runs over time or over samples of it."""
    name = str(dim).lower()
    return name in ("t", "trajectory", "sample", "member") or name.startswith("time")


def _describe_region(ds: xr.Dataset, region: dict[str, slice]) -> str:
    """``time 3 (1990-04-01)`` or ``time 8-15``: where a chunk lies along time-like dims."""
    parts = []
    for dim, sl in region.items():
        if not _time_like(dim):
            continue
        span = f"{sl.start}" if sl.stop - sl.start == 1 else f"{sl.start}-{sl.stop - 1}"
        label = ""
        if dim in ds.coords and ds[dim].ndim == 1:
            values = ds[dim].values[sl]
            label = f" ({_label(values[0])}" + (
                f" to {_label(values[-1])})" if len(values) > 1 else ")"
            )
        parts.append(f"{dim} {span}{label}")
    return ", ".join(parts) or "the whole array"


def _label(value: Any) -> str:
    if isinstance(value, np.datetime64):
        return str(np.datetime_as_string(value, unit="auto"))
    return str(value)


def _lost(absent: list, dims: tuple[str, ...], grid: tuple[int, ...]) -> list:
    """The absent chunks that were lost, not left out.

    zarr (v3 by default) does not write a chunk that holds only the fill value, so an
    absent chunk may be all NaN by design: land in an ocean field, a variable that is NaN
    everywhere. Such a block of space is absent at every time. A block absent at some
    times and present at others lost those chunks.
    """
    when = [i for i, d in enumerate(dims) if _time_like(d)]
    if not when:
        return []  # no time axis to compare along
    per_block: dict[tuple[int, ...], int] = {}
    for coords, _ in absent:
        block = tuple(c for i, c in enumerate(coords) if i not in when)
        per_block[block] = per_block.get(block, 0) + 1
    times = 1
    for i in when:
        times *= grid[i]
    return [
        (coords, key)
        for coords, key in absent
        if per_block[tuple(c for i, c in enumerate(coords) if i not in when)] < times
    ]


def check_zarr_chunks(
    path: str | os.PathLike, ds: xr.Dataset, *, on_bad_data: str = "raise"
) -> None:
    """Refuse a zarr store whose data variables lost chunks (unless ``on_bad_data="mask"``).

    A chunk counts as lost when its block of space is stored at other times; a block
    absent at every time (land, a variable that is all fill value) was left out by design.

    Parameters
    ----------
    path : path
        The store (a local directory).
    ds : xr.Dataset
        The store as xarray opened it (its dims and coordinates name the lost region).
    on_bad_data : {"raise", "mask"}
        ``mask``: warn, and let the absent chunks read as NaN (masked downstream).

    Raises
    ------
    DataIntegrityError
        Naming the variable, the store, the chunk and the frames it held.
    """
    check_on_bad_data(on_bad_data)
    names = [str(v) for v in ds.data_vars if ds[v].ndim > 0]
    arrays = _zarr_arrays(Path(path), names)
    lost = {}
    for name, chunks in missing_zarr_chunks(path, names).items():
        dims = tuple(str(d) for d in ds[name].dims)
        chunks = _lost(chunks, dims, _grid(arrays[name]))
        if chunks:
            lost[name] = chunks
    if not lost:
        return
    lines = []
    for name, chunks in lost.items():
        dims = tuple(str(d) for d in ds[name].dims)
        coords, key = chunks[0]
        where = _describe_region(ds, _region(arrays[name], dims, coords))
        more = f" and {len(chunks) - 1} more" if len(chunks) > 1 else ""
        lines.append(f"variable {name!r}: chunk {coords} (file {key}){more}, holding {where}")
    message = f"{path}: the zarr store lacks data chunks, which would read as NaN: " + "; ".join(
        lines
    )
    if on_bad_data == "mask":
        warnings.warn(message + "; treated as masked (on_bad_data=mask)", stacklevel=3)
        return
    raise DataIntegrityError(
        f"{message}. If the store was written with "
        "write_empty_chunks=False and those chunks hold only the fill "
        f"value, or the data are really missing: {_WHAT_TO_DO}"
    )


# -- zarr: chunks that cannot be decoded -----------------------------------------------------


class GuardedZarrArray:
    """One variable of a zarr store, read through xarray (CF decoding included) in blocks,
    with a read failure reported as the variable, the store and the chunk that failed.

    Picklable: it holds the path and reopens the store once per process (each DataLoader
    worker gets its own handle).

    Parameters
    ----------
    path : path
        The zarr store.
    name : str
        The variable.
    open_options : dict
        Arguments of ``xr.open_zarr`` (``decode_times``, ``consolidated``).
    chunks : tuple of int
        The store's chunk shape of the variable.
    on_bad_data : {"raise", "mask"}
        ``mask``: an undecodable chunk reads as NaN, with a warning naming it.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        name: str,
        open_options: dict[str, Any],
        chunks: tuple[int, ...],
        on_bad_data: str = "raise",
    ) -> None:
        self.path, self.name = str(path), str(name)
        self.open_options = dict(open_options)
        self.store_chunks = tuple(int(c) for c in chunks)
        self.on_bad_data = check_on_bad_data(on_bad_data)
        var = self._variable()
        self.shape, self.dtype, self.ndim = tuple(var.shape), np.dtype(var.dtype), var.ndim

    def _variable(self) -> xr.Variable:
        ds = getattr(self, "_ds", None)
        if ds is None:
            ds = xr.open_zarr(self.path, chunks=None, **self.open_options)
            self._ds = ds
        return ds[self.name].variable

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_ds", None)
        return state

    def __getitem__(self, index: tuple) -> np.ndarray:
        try:
            return np.asarray(self._variable()[index].values)
        except (RuntimeError, ValueError, OSError, TypeError) as err:
            chunk = tuple(
                (sl.start or 0) // c if isinstance(sl, slice) else int(sl) // c
                for sl, c in zip(index, self.store_chunks)
            )
            message = (
                f"{self.path}: variable {self.name!r}, chunk {chunk} cannot be read "
                f"(corrupt or truncated?): {type(err).__name__}: {err}"
            )
            if self.on_bad_data == "mask" and np.issubdtype(self.dtype, np.floating):
                warnings.warn(message + "; read as NaN (on_bad_data=mask)", stacklevel=2)
                shape = tuple(
                    len(range(*sl.indices(n))) if isinstance(sl, slice) else 1
                    for sl, n in zip(index, self.shape)
                )
                return np.full(shape, np.nan, dtype=self.dtype)
            raise DataIntegrityError(
                f"{message}. {_WHAT_TO_DO[0].upper()}{_WHAT_TO_DO[1:]}"
            ) from None


def guard_zarr(
    ds: xr.Dataset, path: str | os.PathLike, open_options: dict[str, Any], on_bad_data: str
) -> xr.Dataset:
    """``ds`` (a zarr store opened with ``chunks=None``) with every data variable read
    lazily, block by block along the store's chunks, through a :class:`GuardedZarrArray`."""
    import dask.array as dsa
    from dask.base import tokenize

    stat = os.stat(path)
    arrays = _zarr_arrays(Path(path), [str(v) for v in ds.data_vars])
    out = ds.copy()
    for name, arr in arrays.items():
        if tuple(ds[name].shape) != tuple(arr.shape):
            continue  # a view xarray reshaped; leave it to xarray
        guard = GuardedZarrArray(path, name, open_options, arr.chunks, on_bad_data)
        token = tokenize(str(path), name, stat.st_mtime_ns, on_bad_data, open_options)
        data = dsa.from_array(
            guard,
            chunks=arr.chunks,
            name=f"zarr-{name}-{token}",
            asarray=False,
            meta=np.empty((0,) * guard.ndim, dtype=guard.dtype),
        )
        out[name] = ds[name].copy(data=data)
    return out


# -- windows: frames with values missing where the field is valid ----------------------------


def _window_place(windows: Any, traj: int, t0: int) -> tuple[str, int]:
    """("trajectory 4, " or "", absolute time index of the window's first frame)."""
    selection = getattr(windows, "selection", {}) or {}
    start = 0
    if isinstance(selection.get("time"), slice):
        start = int(selection["time"].start or 0)
    where = ""
    if getattr(windows, "is_simulation", False):
        picked = selection.get("trajectory")
        absolute = int(np.asarray(picked)[traj]) if picked is not None else traj
        where = f"trajectory {absolute}, "
    return where, start + int(t0)


def check_frames(
    windows: Any, frames: torch.Tensor, traj: int, t0: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check one window's raw frames against the field's validity mask.

    Parameters
    ----------
    windows : ForecastWindows
        The split the window comes from (its ``mask``, ``layout``, ``ds``, ``selection``).
    frames : torch.Tensor
        The window's frames before normalization, (T_in + T_out, C, H, W).
    traj, t0 : int
        The window's trajectory and first time index within the split.

    Returns
    -------
    (frames, mask)
        The frames unchanged, and the window's mask (C, H, W): the split's mask, less the
        points that are not finite in some frame when ``on_bad_data=mask`` was asked for.

    Raises
    ------
    DataIntegrityError
        When a value is not finite where the mask says the field is valid; the message
        names the variable, the file, the trajectory and the time index.
    """
    mask = windows.mask
    finite = torch.isfinite(frames)
    bad = ~finite & mask
    if not bool(bad.any()):
        return frames, mask
    ds = windows.ds
    if ds.attrs.get(BAD_DATA_ATTR) == "mask":
        return frames, mask & finite.all(0)
    t, c = (int(i) for i in torch.nonzero(bad.flatten(2).any(-1))[0])
    where, start = _window_place(windows, traj, t0)
    index = start + t
    label = ""
    if "time" in ds.coords and ds["time"].ndim == 1 and index < ds.sizes.get("time", 0):
        label = f" ({_label(ds['time'].values[index])})"
    channel = windows.layout.channel_names[c]
    source = ds.attrs.get("source_file") or ds.encoding.get("source") or "the dataset"
    count = int(bad[t, c].sum())
    raise DataIntegrityError(
        f"{source}: variable {channel!r} at {where}time index {index}{label} has {count} "
        f"missing (NaN or infinite) value(s) where the field is valid (the mask comes from the "
        "first frame): a lost or corrupt chunk, or a gap in the data. Fix the file; if the "
        "valid area changes in time, open it with data.options.mask=full; or set "
        "data.options.on_bad_data=mask to leave such values out of the loss"
    )
