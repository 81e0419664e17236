"""Run a trained model over windows and return forecasts as ``xr.Dataset`` in physical units."""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from physforecast.data.normalization import Normalizer
from physforecast.data.windows import ForecastWindows

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

    Returns
    -------
    (xr.Dataset, xr.Dataset)
        Forecast and truth, each with the variables on dims (sample, lead_time, y, x),
        per-sample parameters (sample,), coords ``trajectory`` and ``init_index`` per
        sample, the source dataset's attributes and each variable's attributes. Masked
        (invalid) points are NaN.
    """
    model.eval()
    device = torch.device(device)
    model.to(device)
    cond_dim = getattr(model, "cond_dim", 0)
    preds, truths = [], []
    loader = DataLoader(windows, batch_size=batch_size, shuffle=False)
    for batch in tqdm(loader, desc="forecast", leave=False, disable=not progress):
        x = batch["x"].to(device)
        cond = batch["params"].to(device) if cond_dim else None
        preds.append(normalizer.denormalize(model(x, cond).float().cpu()))
        truths.append(normalizer.denormalize(batch["y"]))
    mask = windows.mask
    pred = torch.cat(preds).masked_fill(~mask, float("nan")).numpy()
    true = torch.cat(truths).masked_fill(~mask, float("nan")).numpy()
    return _as_dataset(pred, windows), _as_dataset(true, windows)


def _as_dataset(array: np.ndarray, windows: ForecastWindows) -> xr.Dataset:
    """(S, T_out, C, H, W) -> forecast-convention Dataset."""
    ds = windows.ds
    sy, sx = windows.spatial
    n = array.shape[0]
    locs = [windows.locate(i) for i in range(n)]
    sel = windows.selection.get("trajectory") if windows.is_simulation else None
    traj_ids = [int(np.asarray(sel)[t]) if sel is not None else t for t, _ in locs]
    t_offset = 0
    if not windows.is_simulation and isinstance(windows.selection.get("time"), slice):
        t_offset = windows.selection["time"].start or 0
    init_index = [t0 + windows.in_steps - 1 + t_offset for _, t0 in locs]
    coords = {
        "sample": np.arange(n),
        "lead_time": (
            "lead_time",
            np.arange(1, windows.out_steps + 1),
            {"units": "steps", "long_name": "lead time"},
        ),
        sy: ds[sy].values if sy in ds.coords else np.arange(windows.shape[0]),
        sx: ds[sx].values if sx in ds.coords else np.arange(windows.shape[1]),
        "init_index": (
            "sample",
            np.asarray(init_index),
            {"long_name": "time index of the last input frame"},
        ),
    }
    if windows.is_simulation:
        coords["trajectory"] = ("sample", np.asarray(traj_ids))
    data_vars: dict[str, tuple] = {}
    channel = 0
    for name in windows.variables:
        da = ds[name]
        other = [d for d in da.dims if d not in ("trajectory", "time", sy, sx)]
        width = int(np.prod([ds.sizes[d] for d in other])) if other else 1
        block = array[:, :, channel : channel + width]
        channel += width
        if other:
            block = block.reshape(
                n, windows.out_steps, *[ds.sizes[d] for d in other], *windows.shape
            )
            for d in other:
                if d in ds.coords:
                    coords[d] = ds[d].values
        else:
            block = block[:, :, 0]
        data_vars[name] = (("sample", "lead_time", *other, sy, sx), block, dict(da.attrs))
    declared = [p.strip() for p in str(ds.attrs.get("parameters", "")).split(",") if p.strip()]
    for name in dict.fromkeys([*windows.params, *declared]):
        if name not in ds.data_vars or ds[name].dims not in ((), ("trajectory",)):
            continue
        values = np.asarray(ds[name].values)
        if values.ndim == 1:
            values = values[np.asarray(traj_ids)]
        data_vars[name] = (("sample",), np.broadcast_to(values, (n,)).copy(), dict(ds[name].attrs))
    return xr.Dataset(data_vars, coords=coords, attrs=dict(ds.attrs))
