"""Forecast windows: (x, y) samples cut from an ``xr.Dataset``, read lazily.

A window is ``T_in`` consecutive frames of history ``x`` and the ``T_out`` frames that
follow, ``y``. Simulations (dims ``trajectory, time, ...``) are split by trajectory,
reanalysis (dims ``time, ...``) by contiguous time blocks, so no window crosses a split.

Each sample is a dict::

    x      (T_in, C, H, W)  float32, normalized, NaN -> 0
    y      (T_out, C, H, W) float32, normalized, NaN -> 0
    params (P,)             float32, normalized physical parameters
    mask   (C, H, W)        bool, True where the field is valid (not land / NaN)

Only the frames of one window are read per sample, so a zarr or netCDF store is never
loaded whole; when the dataset came from a file, each DataLoader worker reopens its
own handle.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np
import torch
import xarray as xr
from torch.utils.data import Dataset

from physforecast.errors import DataFormatError, WindowsTooShortError

from .integrity import check_frames
from .layout import ChannelLayout
from .normalization import Normalizer

__all__ = ["ForecastWindows", "split_indices", "worker_init"]


def _check_time(ds: xr.Dataset, needed: int) -> None:
    if "time" not in ds.dims:
        raise DataFormatError(f"dataset has no 'time' dim; dims are {tuple(ds.dims)}")
    n = ds.sizes["time"]
    if n < needed:
        raise WindowsTooShortError(
            f"windows need in_steps + out_steps = {needed} time steps; the dataset has {n} "
            "in the selection given (one split's block of time, or all of it). Lower "
            "data.in_steps or data.out_steps, or give the split more time with data.split"
        )
    if "time" in ds.coords:
        t = ds["time"].values
        if t.size > 1:
            diffs = np.diff(t)
            if not (diffs > diffs.dtype.type(0)).all():
                raise ValueError("the 'time' coordinate is not strictly increasing")


def split_indices(
    ds: xr.Dataset, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> list[dict[str, object]]:
    """Selections for train/validation/test splits.

    Simulations are split by trajectory (a seeded permutation); reanalysis by
    contiguous blocks of time (train first). Each selection is an ``isel`` mapping.

    Parameters
    ----------
    ds : xr.Dataset
        The dataset to split.
    fractions : sequence of float
        Fractions of the three splits; they are normalized to sum to one.

    Returns
    -------
    list of dict
        Three ``isel`` selections, e.g. ``{"trajectory": array([...])}``.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ValueError(f"split needs three non-negative fractions; got {list(fractions)}")
    total = float(sum(fractions))
    if "trajectory" in ds.dims:
        n = ds.sizes["trajectory"]
        order = np.random.default_rng(seed).permutation(n)
        dim = "trajectory"
    else:
        n = ds.sizes["time"]
        order = np.arange(n)
        dim = "time"
    # every split with a positive fraction gets at least one unit; training takes the rest
    counts = [max(1, int(round(f / total * n))) if f > 0 else 0 for f in fractions[1:]]
    n_train = n - sum(counts)
    if n_train < (1 if fractions[0] > 0 else 0):
        raise ValueError(f"{n} {dim} entries are too few for split {list(fractions)}")
    parts = np.split(order, np.cumsum([n_train, counts[0]]))
    if dim == "trajectory":
        return [{dim: np.sort(p)} for p in parts]
    return [
        {dim: slice(int(p[0]), int(p[-1]) + 1)} if len(p) else {dim: slice(0, 0)} for p in parts
    ]


class ForecastWindows(Dataset):
    """Windows of (history, future) frames from an ``xr.Dataset``.

    Parameters
    ----------
    ds : xr.Dataset
        Simulation (trajectory, time, ..., y, x) or reanalysis (time, ..., lat, lon).
        Extra dims of a variable (e.g. ``level``) become extra channels.
    variables : sequence of str
        Forecast variables, in channel order.
    in_steps, out_steps : int
        ``T_in`` and ``T_out``.
    stride : int
        Steps between window starts.
    selection : dict, optional
        ``isel`` selection of this split (from :func:`split_indices`).
    params : sequence of str, optional
        Per-trajectory parameter variables returned (normalized) as ``params``.
    normalizer : Normalizer, optional
        Applied to fields and parameters; raw values when omitted.
    opener : callable, optional
        Zero-argument function reopening ``ds`` (e.g. ``lambda: xr.open_zarr(path)``);
        used so that each DataLoader worker opens its own handle. Defaults to the
        dataset's source file when it has one.
    """

    def __init__(
        self,
        ds: xr.Dataset,
        variables: Sequence[str],
        in_steps: int,
        out_steps: int,
        *,
        stride: int = 1,
        selection: dict[str, object] | None = None,
        params: Sequence[str] | None = None,
        normalizer: Normalizer | None = None,
        opener: Callable[[], xr.Dataset] | None = None,
    ) -> None:
        if in_steps < 1 or out_steps < 1 or stride < 1:
            raise ValueError(
                f"in_steps, out_steps and stride must be >= 1; got {in_steps}, {out_steps}, {stride}"
            )
        self.layout = ChannelLayout.from_dataset(ds, variables)
        for name in params or []:
            if name not in ds.data_vars:
                raise KeyError(
                    f"parameter {name!r} not in dataset; available: {', '.join(ds.data_vars)}"
                )
        self.variables = list(variables)
        self.params = list(params or [])
        self.in_steps, self.out_steps, self.stride = int(in_steps), int(out_steps), int(stride)
        self.selection = dict(selection or {})
        self.normalizer = normalizer
        self.is_simulation = "trajectory" in ds.dims
        sub = ds.isel(self.selection) if self.selection else ds
        _check_time(sub, self.in_steps + self.out_steps)
        self.spatial = self.layout.spatial
        self.n_traj = sub.sizes["trajectory"] if self.is_simulation else 1
        self.n_time = sub.sizes["time"]
        span = self.in_steps + self.out_steps
        self.starts = np.arange(0, self.n_time - span + 1, self.stride)
        self.shape = self.layout.shape
        self._opener = opener or _default_opener(ds)
        self._ds: xr.Dataset | None = ds
        self._pid = os.getpid()  # the process whose file handles self._ds holds
        self.mask = self._static_mask(sub)
        self.channels = int(self.mask.shape[0])
        self._param_values = self._read_params(sub)

    # -- reading ------------------------------------------------------------------
    @property
    def ds(self) -> xr.Dataset:
        """The dataset, reopened in this process if it was pickled without it or forked.

        A DataLoader worker started by ``fork`` inherits the parent's open file handles; the
        netCDF library shares their position and fails (``Resource temporarily
        unavailable``) when two processes read through one, so a forked process reopens
        its own handle when it can, and reads with dask's synchronous scheduler.
        """
        forked = self._pid != os.getpid()
        if forked:
            worker_init(0)  # the inherited dask thread pool has no threads in this process
            self._pid = os.getpid()
        if self._ds is None or (forked and self._opener is not None):
            self._ds = self._opener()
        return self._ds

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if state["_opener"] is not None:
            state["_ds"] = None  # each worker reopens its own handle
        return state

    def _frames(self, sub: xr.Dataset) -> np.ndarray:
        """Stack the variables of ``sub`` (time, ..., H, W) into (time, C, H, W) float32."""
        return self.layout.stack(sub, ("time",))

    def _static_mask(self, sub: xr.Dataset) -> torch.Tensor:
        first = sub.isel(trajectory=0, time=[0]) if self.is_simulation else sub.isel(time=[0])
        for name in self.variables:
            if not np.isfinite(np.asarray(first[name].values)).any():
                raise ValueError(f"variable {name!r} is all NaN in its first frame")
        return torch.from_numpy(np.isfinite(self._frames(first)[0]))

    def _read_params(self, sub: xr.Dataset) -> np.ndarray:
        if not self.params:
            return np.zeros((self.n_traj, 0), dtype=np.float64)
        cols = []
        for name in self.params:
            v = np.asarray(sub[name].values, dtype=np.float64)
            if v.ndim == 0:
                v = np.full(self.n_traj, float(v))
            cols.append(v.reshape(self.n_traj))
        return np.stack(cols, axis=1)

    # -- Dataset protocol ---------------------------------------------------------
    def __len__(self) -> int:
        return self.n_traj * len(self.starts)

    def locate(self, index: int) -> tuple[int, int]:
        """(trajectory position within the split, first time index within the split) of a window."""
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} out of range for {len(self)} windows")
        return index // len(self.starts), int(self.starts[index % len(self.starts)])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        traj, t0 = self.locate(index)
        sub = self.ds.isel(self.selection) if self.selection else self.ds
        if self.is_simulation:
            sub = sub.isel(trajectory=traj)
        frames = torch.from_numpy(
            self._frames(sub.isel(time=slice(t0, t0 + self.in_steps + self.out_steps)))
        )
        frames, mask = check_frames(self, frames, traj, t0)  # NaN where valid: an error
        params = torch.from_numpy(self._param_values[traj])
        if self.normalizer is not None:
            frames = self.normalizer.normalize(frames)
            params = self.normalizer.normalize_params(params)
        frames = torch.nan_to_num(frames, nan=0.0, posinf=0.0, neginf=0.0)
        return {
            "x": frames[: self.in_steps].float(),
            "y": frames[self.in_steps :].float(),
            "params": params.float(),
            "mask": mask,
        }

    def __repr__(self) -> str:
        return (
            f"ForecastWindows({len(self)} windows, variables={self.variables}, "
            f"T_in={self.in_steps}, T_out={self.out_steps}, grid={self.shape}, params={self.params})"
        )


def worker_init(_: int) -> None:
    """DataLoader ``worker_init_fn``: dask's synchronous scheduler in each worker.

    Dask's thread pool does not survive ``fork``; a worker that inherited a dataset
    read once in the parent would otherwise deadlock on its first compute.
    """
    import dask

    dask.config.set(scheduler="synchronous")


class _FileOpener:
    """Picklable zero-argument reopener of a file through :func:`~physforecast.data.formats.open_any`."""

    def __init__(self, source: str) -> None:
        self.source = str(source)

    def __call__(self) -> xr.Dataset:
        from .formats import open_any

        return open_any(self.source)


def _default_opener(ds: xr.Dataset) -> Callable[[], xr.Dataset] | None:
    source = ds.encoding.get("source") or ds.attrs.get("source_file")
    return _FileOpener(source) if source else None
