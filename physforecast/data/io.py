"""Open datasets by name or path, cache simulations, and write files atomically."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import xarray as xr

from physforecast.atomic import atomic_write
from physforecast.registry import DATASETS

__all__ = ["open_dataset", "write_dataset", "cache_dir", "cached_simulation"]


def cache_dir() -> Path:
    """Where generated datasets are cached: ``$PHYSFORECAST_CACHE`` or ``~/.cache/physforecast``."""
    root = os.environ.get("PHYSFORECAST_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "physforecast"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_dataset(ds: xr.Dataset, path: str | os.PathLike) -> Path:
    """Write ``ds`` to ``path`` (``.nc`` netCDF or ``.zarr``), atomically.

    The data go to a temporary name beside the target, which is renamed into place
    once complete, so an interrupted write leaves no half-written file.

    Returns
    -------
    Path
        The written path.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".nc", ".nc4", ".netcdf", ".zarr"):
        raise ValueError(f"cannot tell the format of {str(path)!r}: use a .nc or .zarr suffix")
    if suffix == ".zarr":
        return atomic_write(path, lambda tmp: ds.to_zarr(tmp, mode="w"))
    return atomic_write(path, lambda tmp: ds.to_netcdf(tmp, engine="netcdf4"))


def cached_simulation(
    name: str, options: dict[str, Any] | None = None, *, cache: bool = True
) -> xr.Dataset:
    """Generate the registered simulation ``name`` once and reuse it from the cache.

    The cache key is the name, the options and the package version. A cached file is
    opened lazily (chunks are read as needed).
    """
    from physforecast import __version__

    entry = DATASETS.entry(name)
    options = dict(options or {})
    if not cache:
        return entry.factory(**options)
    key = json.dumps(
        {"name": name, "options": options, "version": __version__}, sort_keys=True, default=str
    )
    path = cache_dir() / f"{name}-{hashlib.sha1(key.encode()).hexdigest()[:12]}.nc"
    if not path.exists():
        write_dataset(entry.factory(**options), path)
    return xr.open_dataset(path, chunks={})


def open_dataset(
    name_or_path: str | os.PathLike, *, options: dict[str, Any] | None = None, cache: bool = True
) -> xr.Dataset:
    """Open a registered dataset by name, or a file in any supported format.

    Parameters
    ----------
    name_or_path : str or path
        A name from :func:`physforecast.list_datasets` (simulators are generated and
        cached), or a path to a netCDF, zarr or HDF5 (PDEBench, The Well) file.
    options : dict, optional
        Generator options for a simulator, or reader options for a file.
    cache : bool
        Cache generated simulations on disk.

    Returns
    -------
    xr.Dataset
        Lazily opened where the format allows.
    """
    name = str(name_or_path)
    if name in DATASETS:
        meta = DATASETS.entry(name).meta
        if meta.get("kind", "simulator") == "simulator":
            return cached_simulation(name, options, cache=cache)
        return DATASETS.create(name, **(options or {}))
    path = Path(name)
    if not path.exists():
        raise FileNotFoundError(
            f"{name!r} is neither a registered dataset ({', '.join(DATASETS.names())}) nor an existing file"
        )
    from physforecast.data.formats import open_any

    return open_any(path, **(options or {}))
