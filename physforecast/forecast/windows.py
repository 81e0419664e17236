"""Forecast the windows of a split and pair them with their truth (the evaluation path).

:func:`iter_forecast_windows` yields the forecast and truth chunk by chunk of samples, so
a split of any size is forecast, scored and written with the memory of one chunk;
:func:`forecast_windows` returns them all at once. :class:`SampleAppender` writes such
chunks one after another into one netCDF file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from physforecast.data.normalization import Normalizer
from physforecast.data.windows import ForecastWindows, collate_windows
from physforecast.memory import chunked_work
from physforecast.metrics.scorecard import ScoreAccumulator

from .dataset import declared_parameters, forecast_dataset, sample_parameters

__all__ = [
    "forecast_windows",
    "iter_forecast_windows",
    "score_windows",
    "ensemble_members",
    "SampleAppender",
]


@torch.no_grad()
def iter_forecast_windows(
    model: nn.Module,
    windows: ForecastWindows,
    normalizer: Normalizer,
    *,
    chunk: int = 64,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> Iterator[tuple[xr.Dataset, xr.Dataset]]:
    """Forecast the windows of ``windows`` in chunks of ``chunk`` samples.

    Parameters
    ----------
    model : nn.Module
        Maps ``(x, cond)`` (B, T_in, C, H, W) to (B, T_out, C, H, W), in normalized units.
    windows : ForecastWindows
        The windows to forecast (a test split, say).
    normalizer : Normalizer
        Undoes the normalization of the model's output.
    chunk : int
        Samples per yielded pair (rounded up to whole batches, so the model sees the
        same batches whatever the chunk); only one chunk is held in memory at a time.
    batch_size : int
        Windows per model call.
    device : str or torch.device
        Where the model runs.
    progress : bool
        Show a progress bar.

    Yields
    ------
    (xr.Dataset, xr.Dataset)
        Forecast and truth of the next ``chunk`` windows, as :func:`forecast_windows`
        returns them; ``sample`` numbers the windows of the whole split.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1; got {chunk}")
    chunk = -(-chunk // batch_size) * batch_size
    model.eval()
    device = torch.device(device)
    model.to(device)
    members = ensemble_members(model)
    if members > 1:
        model.reseed()  # the same members on every evaluation
    params = _parameter_values(windows)
    bar = tqdm(total=len(windows), desc="forecast", leave=False, disable=not progress)
    for start in range(0, len(windows), chunk):
        indices = range(start, min(start + chunk, len(windows)))
        pred, true = _forecast_chunk(
            model, members, windows, normalizer, indices, batch_size, device, bar
        )
        truth = _as_dataset(true, windows, indices, params)
        if members > 1:  # (S, M, T, C, H, W): one forecast Dataset per member, along "member"
            parts = [
                _as_dataset(pred[:, m], windows, indices, params) for m in range(pred.shape[1])
            ]
            fields = list(windows.layout.variables)
            forecast = xr.concat(parts, dim="member", data_vars=fields, coords="minimal")
            forecast = forecast.assign_coords(member=np.arange(pred.shape[1]))
            del parts
        else:
            forecast = _as_dataset(pred, windows, indices, params)
        del pred, true
        yield forecast, truth
        # this frame's references would keep the chunk alive while the next one is built
        del forecast, truth
    bar.close()


def score_windows(
    model: nn.Module,
    windows: ForecastWindows,
    normalizer: Normalizer,
    suite: list[Any] | None = None,
    *,
    chunk: int = 64,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    each: Callable[[xr.Dataset, xr.Dataset], None] | None = None,
) -> xr.Dataset:
    """The scorecard of the forecasts of ``windows``, forecast and scored a chunk at a time.

    Memory holds one chunk of ``chunk`` samples (its forecast, truth and the metrics'
    intermediates) whatever the size of the split; the result equals
    :func:`~physforecast.metrics.score` of :func:`forecast_windows`.

    Parameters
    ----------
    model, windows, normalizer, chunk, batch_size, device
        As for :func:`iter_forecast_windows`.
    suite : list, optional
        The metric suite (:func:`~physforecast.metrics.score`); default chosen from the data.
    each : callable, optional
        ``each(forecast, truth)`` is called with every chunk after it is scored (to write
        it, say); it must not keep the chunk.

    Returns
    -------
    xr.Dataset
        The scorecard.
    """
    acc = ScoreAccumulator(suite)
    chunks = iter_forecast_windows(
        model, windows, normalizer, chunk=chunk, batch_size=batch_size, device=device
    )
    with chunked_work() as release:
        for forecast, truth in chunks:
            acc.add(forecast, truth)
            if each is not None:
                each(forecast, truth)
            # the chunk goes now: xarray objects sit in reference cycles, which the
            # collector (counting objects, not bytes) would otherwise free late, and the
            # allocator would keep the freed pages
            del forecast, truth
            release()
    return acc.result()


def _forecast_chunk(
    model: nn.Module,
    members: int,
    windows: ForecastWindows,
    normalizer: Normalizer,
    indices: range,
    batch_size: int,
    device: torch.device,
    bar: tqdm,
) -> tuple[np.ndarray, np.ndarray]:
    """Forecast and truth of the windows ``indices``, physical units, NaN where invalid.

    Each batch is written into two arrays allocated once, (S, [M,] T_out, C, H, W) and
    (S, T_out, C, H, W), so a chunk costs its own size and no concatenated copies.
    """
    cond_dim = getattr(model, "cond_dim", 0)
    invalid = ~windows.mask  # (C, H, W)
    pred = true = None
    done = 0
    loader = DataLoader(windows, batch_size=batch_size, sampler=indices, collate_fn=collate_windows)
    for batch in loader:
        x = batch["x"].to(device)
        cond = batch["params"].to(device) if cond_dim else None
        out = model.sample(x, cond) if members > 1 else model(x, cond)
        out = normalizer.denormalize(out.float().cpu()).masked_fill_(invalid, float("nan"))
        y = normalizer.denormalize(batch["y"]).masked_fill_(invalid, float("nan"))
        if pred is None:
            pred = np.empty((len(indices), *out.shape[1:]), dtype=np.float32)
            true = np.empty((len(indices), *y.shape[1:]), dtype=np.float32)
        pred[done : done + len(x)] = out.numpy()
        true[done : done + len(x)] = y.numpy()
        done += len(x)
        bar.update(len(x))
    return pred, true


def ensemble_members(model: nn.Module) -> int:
    """Members a stochastic model (``stochastic = True``, ``members``, ``sample(x, cond)``
    returning (B, M, T_out, C, H, W), ``reseed()``) forecasts; 1 for any other model."""
    if not getattr(model, "stochastic", False):
        return 1
    return int(getattr(model, "members", 1) or 1)


def forecast_windows(
    model: nn.Module,
    windows: ForecastWindows,
    normalizer: Normalizer,
    *,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> tuple[xr.Dataset, xr.Dataset]:
    """Forecast every window of ``windows`` and pair it with its truth.

    Parameters
    ----------
    model : nn.Module
        Maps ``(x, cond)`` (B, T_in, C, H, W) to (B, T_out, C, H, W), in normalized units.
    windows : ForecastWindows
        The windows to forecast (a test split, say).
    normalizer : Normalizer
        Undoes the normalization of the model's output.
    batch_size : int
        Windows per model call.
    device : str or torch.device
        Where the model runs.
    progress : bool
        Show a progress bar.

    Returns
    -------
    (xr.Dataset, xr.Dataset)
        Forecast and truth in the forecast convention (:mod:`physforecast.forecast.dataset`)
        with dim ``sample`` (one per window), ``init_index`` and, for simulations,
        ``trajectory`` per sample; masked (invalid) points are NaN. A stochastic model
        with ``members > 1`` (:func:`ensemble_members`) gives a forecast with a ``member``
        dim, which the scorecard scores as an ensemble.
    """
    pairs = iter_forecast_windows(
        model,
        windows,
        normalizer,
        chunk=max(1, len(windows)),
        batch_size=batch_size,
        device=device,
        progress=progress,
    )
    return next(iter(pairs))


def _parameter_values(windows: ForecastWindows) -> xr.Dataset:
    """The physical parameters the forecasts of ``windows`` carry (its ``params`` and the
    dataset's declared ones, scalars or along ``trajectory``), read into memory once: a
    lazy store may hold them in one chunk per trajectory, slow to read for every chunk."""
    ds = windows.ds
    names = [*windows.params, *declared_parameters(ds)]
    small = [n for n in dict.fromkeys(names) if n in ds.data_vars and ds[n].ndim <= 1]
    return xr.Dataset({n: ds[n].variable for n in small}).load()  # without the coords


def _as_dataset(
    values: np.ndarray, windows: ForecastWindows, indices: range, params: xr.Dataset
) -> xr.Dataset:
    """(S, T_out, C, H, W) of the windows ``indices`` -> their forecast Dataset;
    ``params`` from :func:`_parameter_values`."""
    ds = windows.ds
    n = values.shape[0]
    table = windows.index[np.asarray(indices, dtype=np.int64)]
    traj = None
    if windows.is_simulation:
        sel = windows.selection.get("trajectory")
        picked = table[:, 0]
        traj = np.asarray(sel)[picked].astype(np.int64) if sel is not None else picked
    offset = 0
    if not windows.is_simulation and isinstance(windows.selection.get("time"), slice):
        offset = windows.selection["time"].start or 0
    init_index = table[:, 1] + windows.in_steps - 1 + offset
    out = forecast_dataset(
        values,
        layout=windows.layout,
        source=ds,
        init_index=init_index,
        trajectory=traj,
        params=sample_parameters(params, list(params.data_vars), traj, n),
    )
    return out.assign_coords(sample=np.arange(indices.start, indices.start + n))


class SampleAppender:
    """Write forecast chunks one after another into one netCDF file along ``sample``.

    The first chunk is written by xarray (with ``sample`` unlimited), so the file has
    xarray's encoding; later chunks are encoded the same way (the units of the times
    already in the file) and appended through netCDF4.

    Parameters
    ----------
    path : path
        The file to write (a new one).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.samples = 0
        self._nc = None

    def append(self, ds: xr.Dataset) -> None:
        """Append the samples of ``ds`` (a chunk with the first one's variables)."""
        n = int(ds.sizes["sample"])
        if self._nc is None:
            ds.to_netcdf(self.path, engine="netcdf4", unlimited_dims=["sample"])
            import netCDF4

            self._nc = netCDF4.Dataset(self.path, "a")
            self.samples = n
            return
        for name, var in ds.variables.items():
            if "sample" not in var.dims:
                continue
            target = self._nc.variables[str(name)]
            keep = {k: target.getncattr(k) for k in ("units", "calendar") if k in target.ncattrs()}
            encoded = xr.conventions.encode_cf_variable(
                xr.Variable(var.dims, var.values, dict(var.attrs), encoding=keep), name=name
            )
            axis = var.dims.index("sample")
            where = [slice(None)] * var.ndim
            where[axis] = slice(self.samples, self.samples + n)
            target[tuple(where)] = np.asarray(encoded.values)
        self.samples += n

    def close(self) -> None:
        """Flush and close the file."""
        if self._nc is not None:
            self._nc.close()
            self._nc = None

    def __enter__(self) -> SampleAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
