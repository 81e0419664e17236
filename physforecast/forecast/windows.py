"""Forecast every window of a split and pair it with its truth (the evaluation path)."""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from physforecast.data.normalization import Normalizer
from physforecast.data.windows import ForecastWindows, collate_windows

from .dataset import declared_parameters, forecast_dataset, sample_parameters

__all__ = ["forecast_windows"]


@torch.no_grad()
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
        ``trajectory`` per sample; masked (invalid) points are NaN.
    """
    model.eval()
    device = torch.device(device)
    model.to(device)
    cond_dim = getattr(model, "cond_dim", 0)
    preds, truths = [], []
    loader = DataLoader(windows, batch_size=batch_size, shuffle=False, collate_fn=collate_windows)
    for batch in tqdm(loader, desc="forecast", leave=False, disable=not progress):
        x = batch["x"].to(device)
        cond = batch["params"].to(device) if cond_dim else None
        preds.append(normalizer.denormalize(model(x, cond).float().cpu()))
        truths.append(normalizer.denormalize(batch["y"]))
    mask = windows.mask
    pred = torch.cat(preds).masked_fill(~mask, float("nan")).numpy()
    true = torch.cat(truths).masked_fill(~mask, float("nan")).numpy()
    return _as_dataset(pred, windows), _as_dataset(true, windows)


def _as_dataset(values: np.ndarray, windows: ForecastWindows) -> xr.Dataset:
    """(S, T_out, C, H, W) -> the forecast Dataset of the windows' samples."""
    ds = windows.ds
    n = values.shape[0]
    locs = [windows.locate(i) for i in range(n)]
    traj = None
    if windows.is_simulation:
        sel = windows.selection.get("trajectory")
        traj = np.asarray([int(np.asarray(sel)[t]) if sel is not None else t for t, _ in locs])
    offset = 0
    if not windows.is_simulation and isinstance(windows.selection.get("time"), slice):
        offset = windows.selection["time"].start or 0
    init_index = np.asarray([t0 + windows.in_steps - 1 + offset for _, t0 in locs])
    names = list(dict.fromkeys([*windows.params, *declared_parameters(ds)]))
    return forecast_dataset(
        values,
        layout=windows.layout,
        source=ds,
        init_index=init_index,
        trajectory=traj,
        params=sample_parameters(ds, names, traj, n),
    )
