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

import math
import os
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from collections.abc import Sequence as SequenceABC
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch.utils.data import Dataset, default_collate

from physforecast.errors import DataFormatError, WindowsTooShortError

from .integrity import check_frames
from .layout import ChannelLayout
from .normalization import Normalizer

__all__ = [
    "ForecastWindows",
    "SHARED_CACHE_MB",
    "WindowBatch",
    "collate_windows",
    "shared_block_cache",
    "split_indices",
    "worker_init",
]


def _check_time(ds: xr.Dataset, needed: int, index: np.ndarray | None = None) -> None:
    """Refuse a dataset (or the time steps ``index`` of it) too short for a window."""
    if "time" not in ds.dims:
        raise DataFormatError(f"dataset has no 'time' dim; dims are {tuple(ds.dims)}")
    n = ds.sizes["time"] if index is None else len(index)
    if n < needed:
        raise WindowsTooShortError(
            f"windows need in_steps + out_steps = {needed} time steps; the dataset has {n} "
            "in the selection given (one split's block of time, or all of it). Lower "
            "data.in_steps or data.out_steps, or give the split more time with data.split"
        )
    if "time" in ds.coords:
        t = ds["time"].values
        if index is not None:
            t = t[index]
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


class _BlockCache:
    """A least-recently-used cache of decoded blocks, bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[tuple, np.ndarray] = OrderedDict()

    def peek(self, key: tuple) -> np.ndarray | None:
        """The block of ``key`` (now the most recently used), or None."""
        item = self._items.get(key)
        if item is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return item

    def put(self, key: tuple, item: np.ndarray) -> None:
        """Keep ``item``; the least recently used blocks go while over the budget."""
        old = self._items.pop(key, None)
        if old is not None:
            self.nbytes -= old.nbytes
        self._items[key] = item
        self.nbytes += item.nbytes
        while self.nbytes > self.max_bytes and len(self._items) > 1:
            _, dropped = self._items.popitem(last=False)
            self.nbytes -= dropped.nbytes

    def clear(self) -> None:
        self._items.clear()
        self.nbytes = 0


#: The budget of the cache that the lazy datasets of a process share (MB).
SHARED_CACHE_MB = 64.0
_shared: tuple[int, _BlockCache] | None = None  # (pid, cache)


def shared_block_cache() -> _BlockCache:
    """The cache of decoded blocks shared by this process's lazy datasets (all splits
    together stay within :data:`SHARED_CACHE_MB`); a forked process starts an empty one."""
    global _shared
    if _shared is None or _shared[0] != os.getpid():
        _shared = (os.getpid(), _BlockCache(int(SHARED_CACHE_MB * 2**20)))
    return _shared[1]


def _edges(chunks: Sequence[int] | None, n: int, default: int) -> np.ndarray:
    """Edges of the stored chunks along a dim of length ``n`` (blocks of ``default``
    entries when the storage says nothing)."""
    sizes = [int(c) for c in chunks] if chunks else []
    if not sizes:
        step = max(1, int(default))
        sizes = [step] * (n // step) + ([n % step] if n % step else [])
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


class _VariableReader:
    """Frames of one variable as ``(time, c, H, W)``: a numpy view when the variable is in
    memory; otherwise the stored chunks a window needs, read in one call (the chunks
    not yet in this process's cache) and kept in the cache for the next windows."""

    def __init__(
        self,
        name: str,
        var: xr.Variable,
        extra: Sequence[str],
        spatial: Sequence[str],
        span: int,
        cache: _BlockCache,
        key: tuple = (),
    ) -> None:
        lead = [d for d in ("trajectory", "time") if d in var.dims]
        var = var.transpose(*lead, *extra, *spatial)
        self.name = name
        self.key = (*key, name)  # prefix of this variable's blocks in the cache
        self.has_traj = "trajectory" in var.dims
        self.grid = tuple(int(var.sizes[d]) for d in spatial)
        self.width = math.prod(int(var.sizes[d]) for d in extra)
        self.cache = cache
        data = getattr(var, "_data", None)
        self.array = data if isinstance(data, np.ndarray) else None
        self.var = var
        self._finite: bool | None = None
        if self.array is not None:
            return
        self.is_dask = var.chunks is not None
        chunks = dict(var.chunksizes) if self.is_dask else {}
        preferred = var.encoding.get("preferred_chunks") or {}

        def along(dim: str, default: int) -> np.ndarray:
            n = int(var.sizes[dim])
            c = chunks.get(dim)
            if c is None and dim in preferred:
                return _edges(None, n, int(preferred[dim]))
            return _edges(c, n, default)

        self.time_edges = along("time", span)
        self.traj_edges = along("trajectory", 1) if self.has_traj else None
        self.frame_bytes = self.width * math.prod(self.grid) * var.dtype.itemsize

    @property
    def all_finite(self) -> bool:
        """Whether every value of an in-memory variable is finite (checked once, in slabs
        along its first dim); False for a lazy one (its windows are checked as read)."""
        if self._finite is None:
            a = self.array
            self._finite = a is not None and all(
                bool(np.isfinite(a[i : i + 8]).all()) for i in range(0, max(len(a), 1), 8)
            )
        return self._finite

    def _load(self, region: dict[str, slice]) -> np.ndarray:
        sub = self.var.isel(region)
        if self.is_dask:
            return np.asarray(sub.data.compute(scheduler="synchronous"))
        return np.asarray(sub.values)

    def read(self, traj: int, times: np.ndarray, contiguous: bool) -> np.ndarray:
        """Frames ``times`` of trajectory ``traj`` (absolute indices): (T, c, H, W)."""
        shape = (len(times), self.width, *self.grid)
        if self.array is not None:
            t = slice(int(times[0]), int(times[-1]) + 1) if contiguous else times
            block = self.array[traj, t] if self.has_traj else self.array[t]
            return block.reshape(shape)
        edges = self.time_edges
        ids = np.searchsorted(edges, times, side="right") - 1
        wanted = [int(i) for i in np.unique(ids)]
        region, row, prefix = self._rows(traj, int(edges[wanted[-1] + 1] - edges[wanted[0]]))
        got: dict[int, np.ndarray] = {}
        missing = []
        for i in wanted:
            block = self.cache.peek((*prefix, i))
            if block is None:
                missing.append(i)
            else:
                got[i] = block
        if missing:  # one read for the chunks this window still lacks
            lo, hi = int(edges[missing[0]]), int(edges[missing[-1] + 1])
            data = self._load({**region, "time": slice(lo, hi)})
            for i in range(missing[0], missing[-1] + 1):
                piece = (
                    data[:, edges[i] - lo : edges[i + 1] - lo]
                    if region
                    else data[edges[i] - lo : edges[i + 1] - lo][None]
                )
                if piece.shape[0] > 1:
                    piece = piece.copy()  # its own memory, so the cache's bytes are exact
                self.cache.put((*prefix, i), piece)
                if i in wanted:
                    got.setdefault(i, piece)
        pieces = [got[i][row, times[ids == i] - edges[i]] for i in wanted]
        out = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
        return out.reshape(shape)

    def _rows(self, traj: int, frames: int) -> tuple[dict[str, slice], int, tuple]:
        """The trajectories read with ``traj``: its whole stored chunk when a time chunk
        of it fits the cache comfortably, else ``traj`` alone; (region, row of ``traj``
        in the block, cache key prefix)."""
        if not self.has_traj:
            return {}, 0, self.key
        j = int(np.searchsorted(self.traj_edges, traj, side="right") - 1)
        a, b = int(self.traj_edges[j]), int(self.traj_edges[j + 1])
        if (b - a) * frames * self.frame_bytes <= self.cache.max_bytes // 4:
            return {"trajectory": slice(a, b)}, traj - a, (*self.key, "chunk", j)
        return {"trajectory": slice(traj, traj + 1)}, 0, (*self.key, "one", traj)


class WindowBatch(SequenceABC):
    """What :meth:`ForecastWindows.__getitems__` returns: the windows as a sequence of
    sample dicts (so torch's default collation still works) that also holds them
    already batched (``batched``), which :func:`collate_windows` returns without copying."""

    def __init__(self, batched: dict[str, torch.Tensor]) -> None:
        self.batched = batched

    def __len__(self) -> int:
        return int(self.batched["x"].shape[0])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:  # type: ignore[override]
        if not -len(self) <= i < len(self):
            raise IndexError(f"sample {i} out of range for a batch of {len(self)}")
        return {k: v[i] for k, v in self.batched.items()}


def collate_windows(batch: Any) -> Any:
    """DataLoader ``collate_fn`` for :class:`ForecastWindows`: a :class:`WindowBatch` as
    its batched dict, anything else through torch's ``default_collate``."""
    if isinstance(batch, WindowBatch):
        return batch.batched
    return default_collate(batch)


class ForecastWindows(Dataset):
    """Windows of (history, future) frames from an ``xr.Dataset``.

    The windows are resolved once into an index table of (trajectory, start) pairs. A
    window of a dataset in memory is a numpy slice of its variables; a lazy (zarr,
    netCDF) dataset is read in blocks aligned with its chunks, kept in a
    least-recently-used cache that all lazy datasets of a process share
    (:func:`shared_block_cache`; each DataLoader worker has its own), so neighbouring
    windows do not decode the same chunk twice and the splits together hold at most
    :data:`SHARED_CACHE_MB` of decoded blocks. Batches are read and
    normalized together (:meth:`__getitems__`, :func:`collate_windows`).

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
    cache_mb : float, optional
        A cache of decoded blocks of this size (MB) for this dataset alone, instead of the
        shared one.
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
        cache_mb: float | None = None,
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
        self.cache_mb = None if cache_mb is None else float(cache_mb)
        self._token = uuid.uuid4().hex  # its blocks' keys in a shared cache
        other = {k: v for k, v in self.selection.items() if k not in ("trajectory", "time")}
        self._other = other
        base = ds.isel(other) if other else ds
        everything = np.arange(base.sizes.get("time", 0))
        picked = self.selection.get("time")
        self._time_index = np.atleast_1d(
            everything[picked] if picked is not None else everything
        ).astype(np.int64)
        _check_time(base, self.in_steps + self.out_steps, self._time_index)
        self._contiguous = bool(np.all(np.diff(self._time_index) == 1))
        if self.is_simulation:
            picked = self.selection.get("trajectory")
            everything = np.arange(base.sizes["trajectory"])
            self._traj_index = np.atleast_1d(
                everything[picked] if picked is not None else everything
            ).astype(np.int64)
        else:
            self._traj_index = np.zeros(1, dtype=np.int64)
        self.spatial = self.layout.spatial
        self.n_traj = len(self._traj_index)
        self.n_time = len(self._time_index)
        span = self.in_steps + self.out_steps
        self.starts = np.arange(0, self.n_time - span + 1, self.stride)
        #: (window, 2) table: trajectory position within the split, start within the split
        self.index = np.stack(
            [
                np.repeat(np.arange(self.n_traj, dtype=np.int64), len(self.starts)),
                np.tile(self.starts.astype(np.int64), self.n_traj),
            ],
            axis=1,
        )
        self.shape = self.layout.shape
        self._opener = opener or _default_opener(ds)
        self._ds: xr.Dataset | None = ds
        self._pid = os.getpid()  # the process whose file handles self._ds holds
        self._readers: list[_VariableReader] | None = None
        self._cache: _BlockCache | None = None
        self.mask = self._static_mask(base)
        self.channels = int(self.mask.shape[0])
        self._param_values = self._read_params(base)

    # -- reading ------------------------------------------------------------------
    @property
    def ds(self) -> xr.Dataset:
        """The dataset, reopened in this process if it was pickled without it or forked.

        A DataLoader worker started by ``fork`` inherits the parent's open file handles; the
        netCDF library shares their position and fails (``Resource temporarily
        unavailable``) when two processes read through one, so a forked process reopens
        its own handle when it can (and its own readers and cache), and reads with dask's
        synchronous scheduler.
        """
        forked = self._pid != os.getpid()
        if forked:
            worker_init(0)  # the inherited dask thread pool has no threads in this process
            self._pid = os.getpid()
            if self._opener is not None:
                self._ds = None
                self._readers = self._cache = None
        if self._ds is None:
            self._ds = self._opener()
        return self._ds

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_readers"] = state["_cache"] = None  # each process builds its own
        if state["_opener"] is not None:
            state["_ds"] = None  # each worker reopens its own handle
        return state

    @property
    def cache(self) -> _BlockCache:
        """The cache of decoded blocks this dataset uses in this process: its own
        (``cache_mb``) or the shared one (lazy datasets only fill it)."""
        if self.cache_mb is None:
            return shared_block_cache()
        if self._cache is None:
            self._cache = _BlockCache(int(self.cache_mb * 2**20))
        return self._cache

    def _variable_readers(self) -> list[_VariableReader]:
        ds = self.ds  # first: in a forked process it drops the parent's readers
        if self._readers is None:
            ds = ds.isel(self._other) if self._other else ds
            span = self.in_steps + self.out_steps
            self._readers = [
                _VariableReader(
                    name,
                    ds[name].variable,
                    [d for d, _ in extra],
                    self.spatial,
                    span,
                    self.cache,
                    key=(self._token,),
                )
                for name, extra in zip(self.variables, self.layout.extra)
            ]
        return self._readers

    def _frames(self, sub: xr.Dataset) -> np.ndarray:
        """Stack the variables of ``sub`` (time, ..., H, W) into (time, C, H, W) float32."""
        return self.layout.stack(sub, ("time",))

    def _static_mask(self, base: xr.Dataset) -> torch.Tensor:
        t0 = [int(self._time_index[0])]
        if self.is_simulation:
            first = base.isel(trajectory=int(self._traj_index[0]), time=t0)
        else:
            first = base.isel(time=t0)
        for name in self.variables:
            if not np.isfinite(np.asarray(first[name].values)).any():
                raise ValueError(f"variable {name!r} is all NaN in its first frame")
        return torch.from_numpy(np.isfinite(self._frames(first)[0]))

    def _read_params(self, base: xr.Dataset) -> np.ndarray:
        if not self.params:
            return np.zeros((self.n_traj, 0), dtype=np.float64)
        cols = []
        for name in self.params:
            da = base[name]
            if self.is_simulation and "trajectory" in da.dims:
                da = da.isel(trajectory=self._traj_index)
            v = np.asarray(da.values, dtype=np.float64)
            if v.ndim == 0:
                v = np.full(self.n_traj, float(v))
            cols.append(v.reshape(self.n_traj))
        return np.stack(cols, axis=1)

    def read_frames(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Raw frames of windows ``indices``: history (B, T_in, C, H, W) and future
        (B, T_out, C, H, W), float32, each window's slices copied once into them."""
        span = self.in_steps + self.out_steps
        n_in = self.in_steps
        x = np.empty((len(indices), n_in, self.channels, *self.shape), dtype=np.float32)
        y = np.empty((len(indices), self.out_steps, self.channels, *self.shape), dtype=np.float32)
        readers = self._variable_readers()
        table, trajs, times_of = self.index, self._traj_index, self._time_index
        contiguous = self._contiguous
        for b, index in enumerate(indices):
            traj, t0 = table[index]
            times = times_of[t0 : t0 + span]
            absolute = int(trajs[traj])
            c = 0
            for reader in readers:
                block = reader.read(absolute, times, contiguous)
                x[b, :, c : c + reader.width] = block[:n_in]
                y[b, :, c : c + reader.width] = block[n_in:]
                c += reader.width
        return x, y

    # -- Dataset protocol ---------------------------------------------------------
    def __len__(self) -> int:
        return len(self.index)

    def locate(self, index: int) -> tuple[int, int]:
        """(trajectory position within the split, first time index within the split) of a window."""
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} out of range for {len(self)} windows")
        traj, t0 = self.index[index]
        return int(traj), int(t0)

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """Windows ``indices`` read, checked and normalized together.

        Returns
        -------
        dict
            ``x`` (B, T_in, C, H, W), ``y`` (B, T_out, C, H, W), ``params`` (B, P),
            ``mask`` (B, C, H, W): the samples of :meth:`__getitem__`, stacked.
        """
        indices = [int(i) for i in indices]
        for i in indices:
            if not 0 <= i < len(self):
                raise IndexError(f"window {i} out of range for {len(self)} windows")
        raw_x, raw_y = self.read_frames(indices)
        x, y = torch.from_numpy(raw_x), torch.from_numpy(raw_y)
        n = len(indices)
        masks = self.mask.unsqueeze(0).expand(n, *self.mask.shape)
        finite = all(r.all_finite for r in self._variable_readers()) or bool(
            np.isfinite(raw_x).all() and np.isfinite(raw_y).all()
        )
        if not finite:
            bad = (~torch.isfinite(torch.cat([x, y], 1)) & self.mask).flatten(1).any(1)
            if bool(bad.any()):
                masks = masks.clone()
                for b in torch.nonzero(bad).flatten().tolist():
                    traj, t0 = self.locate(indices[b])
                    frames = torch.cat([x[b], y[b]])
                    _, masks[b] = check_frames(self, frames, traj, t0)  # NaN where valid
        traj = self.index[indices, 0] if n else np.zeros(0, dtype=np.int64)
        params = torch.from_numpy(self._param_values[traj])
        if self.normalizer is not None:
            x, y = self.normalizer.normalize(x), self.normalizer.normalize(y)
            params = self.normalizer.normalize_params(params)
        if not finite or self.normalizer is not None:
            for t in (x, y):
                torch.nan_to_num_(t, nan=0.0, posinf=0.0, neginf=0.0)
        return {"x": x.float(), "y": y.float(), "params": params.float(), "mask": masks}

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not isinstance(index, int | np.integer):
            raise TypeError(f"window index must be an integer; got {type(index).__name__}")
        if not -len(self) <= index < len(self):
            raise IndexError(f"window {index} out of range for {len(self)} windows")
        one = self.batch([int(index) % len(self)])
        return {k: v[0] for k, v in one.items()}

    def __getitems__(self, indices: Sequence[int]) -> WindowBatch:
        """Windows ``indices`` at once (torch's DataLoader calls this for a batch)."""
        return WindowBatch(self.batch(indices))

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
