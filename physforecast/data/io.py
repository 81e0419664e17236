"""Open datasets by name or path, cache simulations, and write files atomically."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import xarray as xr

from physforecast.atomic import atomic_write, remove_orphans
from physforecast.errors import OutputPathError, check_options
from physforecast.registry import DATASETS

__all__ = [
    "open_dataset",
    "write_dataset",
    "check_output_path",
    "simulate",
    "cache_dir",
    "cached_simulation",
    "OUTPUT_SUFFIXES",
]


def cache_dir() -> Path:
    """Where generated datasets are cached: ``$PHYSFORECAST_CACHE`` or ``~/.cache/physforecast``."""
    root = os.environ.get("PHYSFORECAST_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "physforecast"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


#: Suffixes :func:`write_dataset` writes, and the format each means.
OUTPUT_SUFFIXES = {".nc": "netcdf", ".nc4": "netcdf", ".netcdf": "netcdf", ".zarr": "zarr"}


def check_output_path(path: str | os.PathLike) -> Path:
    """``path`` as a :class:`Path` if :func:`write_dataset` can write there; an
    :class:`~physforecast.errors.OutputPathError` otherwise (check it before long work).

    A known suffix (``.nc``, ``.zarr``) is required, and nothing of another kind may be
    in the way (a directory where a netCDF file goes).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise OutputPathError(
            f"cannot tell the format of {str(path)!r} from its suffix "
            f"{suffix or '(none)'!r}: end the output path in .nc (netCDF) or .zarr"
        )
    if OUTPUT_SUFFIXES[suffix] == "netcdf" and path.is_dir():
        raise OutputPathError(f"{path} is a directory; a netCDF output must be a file")
    if path.parent.exists() and not path.parent.is_dir():
        raise OutputPathError(f"{path.parent} is a file, so {path} cannot be written")
    return path


def write_dataset(ds: xr.Dataset, path: str | os.PathLike) -> Path:
    """Write ``ds`` to ``path`` (``.nc`` netCDF or ``.zarr``), atomically.

    The data go to a temporary name beside the target, which is renamed into place
    once complete, so an interrupted write leaves no half-written file; the temporaries
    of earlier writes to ``path`` whose writer was killed are removed first.

    Returns
    -------
    Path
        The written path.
    """
    path = check_output_path(path)
    remove_orphans(path.parent, stem=path.stem)
    if OUTPUT_SUFFIXES[path.suffix.lower()] == "zarr":
        return atomic_write(path, lambda tmp: ds.to_zarr(tmp, mode="w"))
    return atomic_write(path, lambda tmp: ds.to_netcdf(tmp, engine="netcdf4"))


def simulate(name: str, options: dict[str, Any] | None = None) -> xr.Dataset:
    """Run the registered simulator ``name`` with ``options``, saying what it does.

    The options are checked against the generator's first (a typo is an
    :class:`~physforecast.errors.OptionError` with a suggestion, before any work); a line on
    stderr says what is simulated and another how long it took (the generators show their
    own progress).
    """
    entry = DATASETS.entry(name)
    options = dict(options or {})
    valid = DATASETS.options(name)
    if valid is not None:
        check_options(f"dataset {name!r}", options, valid, key="data.options")
    shown = ", ".join(f"{k}={v}" for k, v in options.items()) or "default options"
    print(f"simulating {name} ({shown})...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    from physforecast.threads import auto_threads, use_threads

    with use_threads(auto_threads()):  # the simulator runs alone: the free cores
        ds = entry.factory(**options)
    sizes = " x ".join(f"{d} {n}" for d, n in ds.sizes.items())
    took = time.perf_counter() - start
    print(f"simulated {name}: {sizes} in {took:.1f} s", file=sys.stderr, flush=True)
    return ds


def cached_simulation(
    name: str, options: dict[str, Any] | None = None, *, cache: bool = True
) -> xr.Dataset:
    """Generate the registered simulation ``name`` once and reuse it from the cache.

    The cache key is the name, the options and the package version. A cached file is
    opened lazily (chunks are read as needed).
    """
    from physforecast import __version__

    DATASETS.entry(name)  # an unknown name fails here, listing the valid ones
    options = dict(options or {})
    if not cache:
        return simulate(name, options)
    key = json.dumps(
        {"name": name, "options": options, "version": __version__}, sort_keys=True, default=str
    )
    path = cache_dir() / f"{name}-{hashlib.sha1(key.encode()).hexdigest()[:12]}.nc"
    if not path.exists():
        ds = simulate(name, options)
        write_dataset(ds, path)
        print(f"cached as {path}", file=sys.stderr, flush=True)
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
        valid = DATASETS.options(name)
        if valid is not None:
            check_options(f"dataset {name!r}", options or {}, valid, key="data.options")
        return DATASETS.create(name, **(options or {}))
    path = Path(name)
    if not path.exists():
        raise FileNotFoundError(
            f"{name!r} is neither a registered dataset ({', '.join(DATASETS.names())}) nor an existing file"
        )
    from physforecast.data.formats import open_any

    return open_any(path, **(options or {}))
