"""Forecasts as ``xr.Dataset`` in physical units: predict, autoregressive rollout, windows.

- :func:`predict` runs a trained model once (``T_out`` lead times) from chosen initial
  times of an ``xr.Dataset``; :func:`rollout` feeds its own output back in to reach any
  horizon, stopping a sample that blows up.
- :func:`forecast_windows` forecasts every window of a :class:`ForecastWindows` split and
  returns the truth beside it (used by ``physforecast evaluate``).
- The verifying truth of a forecast and its scorecard: :func:`physforecast.api.truth_for`,
  :func:`physforecast.api.verify`.

Forecast layout (the package's forecast convention): data variables
``(sample, lead_time, [level...], y, x)`` for simulations, ``(init_time, lead_time, ...,
latitude, longitude)`` for reanalysis; coordinate ``lead_time`` in steps (1, 2, ...),
``init_index`` (the time index of the last input frame), ``init_time`` and ``valid_time``
when the input has a time coordinate, ``trajectory`` per sample; per-sample physical
parameters as variables ``(sample,)``; the input's attributes and coordinates.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import xarray as xr
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from physforecast.api import Forecaster, _spatial_of, _to_dataset, load
from physforecast.data.normalization import Normalizer
from physforecast.data.windows import ForecastWindows

__all__ = [
    "RolloutBlowupError",
    "predict",
    "rollout",
    "forecast_windows",
]


class RolloutBlowupError(RuntimeError):
    """A rollout left the range of the training data (non-finite or huge values)."""


ModelLike = Forecaster | str | os.PathLike


@dataclass
class _Layout:
    """Where the model's channels live in a dataset."""

    variables: list[str]
    extra: list[list[str]]  # per variable: dims besides trajectory/time/space (levels)
    widths: list[int]  # channels per variable
    spatial: tuple[str, str]
    shape: tuple[int, int]
    simulation: bool


def _as_forecaster(model: ModelLike) -> Forecaster:
    if isinstance(model, Forecaster):
        return model
    if isinstance(model, (str, os.PathLike)):
        return load(model)
    raise TypeError(
        f"expected a Forecaster (physforecast.load(run_dir)) or a run directory, got "
        f"{type(model).__name__}; wrap a bare module as Forecaster(module, normalizer)"
    )


def _layout(fc: Forecaster, ds: xr.Dataset) -> _Layout:
    """Check that ``ds`` holds what ``fc`` was trained on, and where."""
    missing = [v for v in fc.variables if v not in ds.data_vars]
    if missing:
        raise ValueError(
            f"the dataset lacks variable(s) {missing} that the model forecasts (trained on "
            f"{fc.variables}); the dataset has {list(ds.data_vars)}. Rename with ds.rename(...)"
        )
    simulation = "trajectory" in ds.dims
    spatial: tuple[str, str] | None = None
    extra, widths = [], []
    for name in fc.variables:
        da = ds[name]
        if "time" not in da.dims:
            raise ValueError(
                f"variable {name!r} has dims {da.dims}; forecasting needs a 'time' dim"
            )
        if simulation and "trajectory" not in da.dims:
            raise ValueError(
                f"variable {name!r} has dims {da.dims}, but the dataset has a 'trajectory' dim"
            )
        dims = _spatial_of(da)
        if spatial is None:
            spatial = dims
        elif dims != spatial:
            raise ValueError(
                f"variable {name!r} is on dims {dims}, not {spatial} as {fc.variables[0]!r}"
            )
        other = [str(d) for d in da.dims if d not in ("trajectory", "time", *dims)]
        extra.append(other)
        widths.append(int(np.prod([ds.sizes[d] for d in other])) if other else 1)
    assert spatial is not None
    shape = (int(ds.sizes[spatial[0]]), int(ds.sizes[spatial[1]]))
    if fc.grid is not None and (list(fc.grid) != list(spatial) or tuple(fc.grid.values()) != shape):
        got = " x ".join(f"{d}={n}" for d, n in zip(spatial, shape))
        want = " x ".join(f"{d}={n}" for d, n in fc.grid.items())
        raise ValueError(
            f"the dataset is on a different grid ({got}) than the model was trained on ({want}); "
            "regrid it (ds.interp, ds.coarsen) to the training grid first"
        )
    in_channels = getattr(fc.model, "in_channels", None)
    if in_channels is not None and sum(widths) != int(in_channels):
        parts = ", ".join(f"{v}: {w}" for v, w in zip(fc.variables, widths))
        raise ValueError(
            f"the dataset gives {sum(widths)} channels ({parts}); the model takes {in_channels}"
        )
    if fc.cond_dim:
        for name in fc.params:
            if name not in ds.data_vars:
                raise ValueError(
                    f"the model is conditioned on the physical parameter {name!r}; add it to "
                    "the dataset as a variable with dim (trajectory,) or as a scalar"
                )
    return _Layout(list(fc.variables), extra, widths, spatial, shape, simulation)


def _init_positions(ds: xr.Dataset, init: Any, in_steps: int) -> np.ndarray:
    """Time positions of the last input frame of each forecast."""
    n = int(ds.sizes["time"])
    if n < in_steps:
        raise ValueError(
            f"too short a history: the dataset has {n} time step(s); the model needs "
            f"in_steps={in_steps} input frames"
        )
    if init is None:
        return np.array([n - 1])
    items = np.atleast_1d(np.asarray(init))
    if items.dtype.kind in "iu":
        pos = np.where(items < 0, items + n, items).astype(int)
        bad = items[(pos < 0) | (pos >= n)]
        if bad.size:
            raise ValueError(f"init index(es) {bad.tolist()} out of range for {n} time steps")
    else:
        if "time" not in ds.indexes:
            raise ValueError("init labels need a 'time' coordinate; pass integer indices instead")
        index = ds.get_index("time")
        labels = pd.DatetimeIndex(items) if isinstance(index, pd.DatetimeIndex) else items
        pos = index.get_indexer(labels)
        if (pos < 0).any():
            raise ValueError(
                f"init time(s) {list(items[pos < 0])} are not in the time coordinate "
                f"({index[0]} .. {index[-1]})"
            )
    short = pos[pos < in_steps - 1]
    if short.size:
        raise ValueError(
            f"too short a history: init index {int(short[0])} (the last input frame) has only "
            f"{int(short[0]) + 1} frame(s) up to it; the model needs in_steps={in_steps}, so "
            f"init must be >= {in_steps - 1}"
        )
    return pos


def _history(
    ds: xr.Dataset, layout: _Layout, traj: np.ndarray | None, init: np.ndarray, in_steps: int
) -> np.ndarray:
    """Read the input frames of a batch, (B, T_in, C, H, W) float32, in one compute."""
    offsets = np.arange(-in_steps + 1, 1)
    indexers: dict[str, xr.DataArray] = {
        "time": xr.DataArray(init[:, None] + offsets[None, :], dims=("sample", "step"))
    }
    if traj is not None:
        indexers["trajectory"] = xr.DataArray(traj, dims="sample")
    sub = ds[layout.variables].isel(indexers).compute()
    arrays = []
    for name, extra in zip(layout.variables, layout.extra):
        a = sub[name].transpose("sample", "step", *extra, *layout.spatial).values
        arrays.append(
            np.asarray(a, dtype=np.float32).reshape(len(init), in_steps, -1, *layout.shape)
        )
    return np.concatenate(arrays, axis=2)


def _parameters(
    ds: xr.Dataset, names: Sequence[str], traj: np.ndarray | None, n: int, strict: set[str]
) -> dict[str, np.ndarray]:
    """Per-sample values (n,) of the parameters ``names`` (scalars or along trajectory)."""
    out = {}
    for name in names:
        if name not in ds.data_vars:
            continue
        da = ds[name]
        if da.dims == ():
            values = np.full(n, np.asarray(da.values).item())
        elif da.dims == ("trajectory",) and traj is not None:
            values = np.asarray(da.values)[traj]
        elif name in strict:
            raise ValueError(
                f"parameter {name!r} has dims {da.dims}; expected a scalar or ('trajectory',)"
            )
        else:
            continue
        out[str(name)] = values
    return out


def _autoregress(
    fc: Forecaster,
    x: torch.Tensor,
    cond: torch.Tensor | None,
    steps: int,
    mask: torch.Tensor,
    threshold: float,
    on_blowup: str,
    describe: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Roll ``fc`` forward from normalized ``x`` (B, T_in, C, H, W) for ``steps`` leads.

    Returns the normalized forecast (B, steps, C, H, W), NaN from a sample's blow-up on,
    and the first blown-up lead position per sample (-1: none).
    """
    b = x.shape[0]
    frames = x
    outputs: list[torch.Tensor] = []
    first_bad = torch.full((b,), -1, dtype=torch.long)
    produced = 0
    while produced < steps:
        y = fc.step(frames[:, -fc.in_steps :], cond)
        if y.shape[0] != b or y.shape[2:] != x.shape[2:]:
            raise ValueError(
                f"the model returned shape {tuple(y.shape)} for input {tuple(frames.shape)}"
            )
        t_out = y.shape[1]
        bad = (~torch.isfinite(y) | (y.abs() > threshold)) & mask[:, None]
        bad_step = bad.flatten(2).any(2)  # (B, T_out)
        new = bad_step.any(1) & (first_bad < 0)
        if new.any():
            first = produced + bad_step.float().argmax(1)
            if on_blowup == "raise":
                i = int(torch.nonzero(new)[0])
                raise RolloutBlowupError(
                    f"rollout blew up for {describe(i)} at lead time {int(first[i]) + 1}: values "
                    f"are non-finite or exceed {threshold:g} x the training std. Shorten the "
                    "rollout, or pass on_blowup='nan' to keep the finite part"
                )
            first_bad = torch.where(new, first, first_bad)
        lead = produced + torch.arange(t_out)
        dead = (first_bad[:, None] >= 0) & (lead[None, :] >= first_bad[:, None])
        dead = dead[:, :, None, None, None]
        outputs.append(y.masked_fill(dead, float("nan")))
        feed = torch.where(mask[:, None] & ~dead, y, torch.zeros(()))
        frames = torch.cat([frames, feed], dim=1)[:, -fc.in_steps :]
        produced += t_out
    return torch.cat(outputs, dim=1)[:, :steps], first_bad


def rollout(
    model: ModelLike,
    ds: xr.Dataset | xr.DataArray,
    steps: int,
    *,
    init: Any = None,
    batch_size: int = 16,
    on_blowup: str = "nan",
    blowup_threshold: float = 1e3,
    progress: bool = False,
) -> xr.Dataset:
    """Forecast ``steps`` lead times autoregressively from an ``xr.Dataset``.

    The model sees the ``T_in`` frames ending at each initial time and predicts ``T_out``;
    its predictions are appended to the history and the last ``T_in`` frames (all model
    output once ``T_out >= T_in``) are fed back until ``steps`` lead times exist. Inputs
    are normalized as in training and the output is in physical units.

    Parameters
    ----------
    model : Forecaster or path
        From :func:`physforecast.load`, or a run directory to load.
    ds : xr.Dataset or xr.DataArray
        Simulation (trajectory, time, [level], y, x) or reanalysis (time, [level],
        latitude, longitude) holding the model's variables (and its conditioning
        parameters, per trajectory or scalar) on the training grid. Read lazily: only the
        ``T_in`` frames before each initial time are loaded, one batch at a time.
    steps : int
        Lead times to produce; any number (longer than ``T_out`` means rollout).
    init : int, sequence of int, or time labels, optional
        Time of the last input frame of each forecast: positions (negative counts from
        the end) or labels of the ``time`` coordinate (datetimes, strings). Default: the
        last frame. For simulations every trajectory is forecast from every ``init``.
    batch_size : int
        Samples per model call.
    on_blowup : {"nan", "raise"}
        When a sample's values become non-finite or exceed ``blowup_threshold`` training
        standard deviations (at a valid point): ``"nan"`` fills that sample from the
        offending lead time on with NaN, stops feeding it, and warns once naming the
        samples; ``"raise"`` raises :class:`RolloutBlowupError`.
    blowup_threshold : float
        The guard, in units of the training std (normalized values).
    progress : bool
        Show a progress bar over batches.

    Returns
    -------
    xr.Dataset
        Variables (sample | init_time, lead_time, [level], y | latitude, x | longitude),
        ``lead_time`` = 1..steps (units "steps"), ``init_index``, ``trajectory``,
        ``init_time``/``valid_time`` when the input has a time coordinate, per-sample
        parameters, the input's spatial coordinates and attributes. Points that are NaN in
        the last input frame (land) are NaN.

    Raises
    ------
    ValueError
        Missing variables or parameters, another grid, too short a history, bad ``init``.
    RolloutBlowupError
        With ``on_blowup="raise"``.

    Examples
    --------
    >>> fc = physforecast.load("runs/ns2d-fno")                   # doctest: +SKIP
    >>> out = physforecast.rollout(fc, ds, steps=30, init=[9, 19])  # doctest: +SKIP
    >>> out.vorticity.dims                                           # doctest: +SKIP
    ('sample', 'lead_time', 'y', 'x')
    """
    if on_blowup not in ("nan", "raise"):
        raise ValueError(f"on_blowup must be 'nan' or 'raise', got {on_blowup!r}")
    if int(steps) < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    steps = int(steps)
    fc = _as_forecaster(model)
    ds = _to_dataset(ds)
    layout = _layout(fc, ds)
    inits = _init_positions(ds, init, fc.in_steps)
    if layout.simulation:
        n_traj = int(ds.sizes["trajectory"])
        traj: np.ndarray | None = np.repeat(np.arange(n_traj), len(inits))
        init_pos = np.tile(inits, n_traj)
    else:
        traj, init_pos = None, inits
    n = len(init_pos)
    declared = [p.strip() for p in str(ds.attrs.get("parameters", "")).split(",") if p.strip()]
    cond_names = fc.params if fc.cond_dim else []
    params = _parameters(
        ds, list(dict.fromkeys([*cond_names, *declared])), traj, n, set(cond_names)
    )
    mean, std = (s.reshape(-1, 1, 1) for s in fc.channel_stats(layout.widths))

    def describe(i: int) -> str:
        where = f"trajectory {int(traj[i])}, " if traj is not None else ""
        return f"sample {i} ({where}init index {int(init_pos[i])})"

    out = np.empty((n, steps, sum(layout.widths), *layout.shape), dtype=np.float32)
    first_bad = np.full(n, -1)
    for start in tqdm(range(0, n, batch_size), desc="rollout", leave=False, disable=not progress):
        sl = slice(start, min(start + batch_size, n))
        x = torch.from_numpy(
            _history(ds, layout, traj[sl] if traj is not None else None, init_pos[sl], fc.in_steps)
        ).double()
        valid = torch.isfinite(x[:, -1])
        z = torch.nan_to_num((x - mean) / std, nan=0.0, posinf=0.0, neginf=0.0).float()
        cond = None
        if cond_names:
            p = torch.from_numpy(
                np.stack([params[k][sl] for k in cond_names], 1).astype(np.float64)
            )
            cond = fc.normalizer.normalize_params(p).float()
        y, bad = _autoregress(
            fc,
            z,
            cond,
            steps,
            valid,
            blowup_threshold,
            on_blowup,
            lambda i, s=start: describe(s + i),
        )
        y = (y.double() * std + mean).masked_fill(~valid[:, None], float("nan"))
        out[sl] = y.float().numpy()
        first_bad[sl] = bad.numpy()
    blown = np.flatnonzero(first_bad >= 0)
    if blown.size:
        warnings.warn(
            f"rollout blew up (non-finite or > {blowup_threshold:g} x training std) for "
            f"{blown.size} of {n} samples, first at lead time {int(first_bad[blown].min()) + 1}; "
            f"they are NaN from there on: {', '.join(describe(int(i)) for i in blown[:5])}"
            + (" ..." if blown.size > 5 else ""),
            RuntimeWarning,
            stacklevel=2,
        )
    return _forecast_dataset(out, ds, layout, traj, init_pos, params, fc)


def predict(
    model: ModelLike,
    ds: xr.Dataset | xr.DataArray,
    *,
    init: Any = None,
    batch_size: int = 16,
    progress: bool = False,
) -> xr.Dataset:
    """One forecast of the model's own horizon (``T_out`` lead times) from ``ds``.

    Same inputs and output as :func:`rollout` with ``steps = model.out_steps``: by default
    every trajectory's last ``T_in`` frames (simulations) or the last ``T_in`` times
    (reanalysis); ``init`` picks other initial times.
    """
    fc = _as_forecaster(model)
    return rollout(
        fc, ds, fc.out_steps, init=init, batch_size=batch_size, on_blowup="nan", progress=progress
    )


def _time_attrs(time: xr.DataArray) -> dict[str, Any]:
    if time.dtype.kind in "mM":
        return {k: v for k, v in time.attrs.items() if k not in ("units", "calendar")}
    return dict(time.attrs)


def _time_step(ds: xr.Dataset) -> Any:
    """The spacing of a regular time coordinate (or the ``dt`` attribute), else None."""
    t = ds["time"].values
    if t.size >= 2:
        d = np.diff(t)
        return d[0] if (d == d[0]).all() else None
    dt = ds.attrs.get("dt")
    if dt is not None and t.dtype.kind in "fiu":
        return float(dt)
    return None


def _forecast_dataset(
    values: np.ndarray,
    ds: xr.Dataset,
    layout: _Layout,
    traj: np.ndarray | None,
    init: np.ndarray,
    params: dict[str, np.ndarray],
    fc: Forecaster,
) -> xr.Dataset:
    """(S, L, C, H, W) physical values -> forecast-convention Dataset."""
    n, steps = values.shape[:2]
    sdim = "sample" if layout.simulation else "init_time"
    lead = np.arange(1, steps + 1)
    keep = {*layout.spatial, *(d for e in layout.extra for d in e)}
    coords: dict[str, Any] = {
        str(k): c.variable for k, c in ds.coords.items() if c.dims and set(c.dims) <= keep
    }
    coords["lead_time"] = ("lead_time", lead, {"units": "steps", "long_name": "lead time"})
    coords["init_index"] = (sdim, init, {"long_name": "time index of the last input frame"})
    if layout.simulation:
        coords["sample"] = np.arange(n)
        labels = ds["trajectory"].values[traj] if "trajectory" in ds.coords else traj
        coords["trajectory"] = (
            sdim,
            labels,
            dict(ds["trajectory"].attrs) if "trajectory" in ds.coords else {},
        )
    if "time" in ds.coords:
        time = ds["time"]
        attrs = _time_attrs(time)
        t0 = time.values[init]
        coords["init_time"] = (sdim, t0, {**attrs, "long_name": "time of the last input frame"})
        step = _time_step(ds)
        if step is not None:
            coords["valid_time"] = (
                (sdim, "lead_time"),
                t0[:, None] + step * lead[None, :],
                {**attrs, "long_name": "time the forecast is valid for"},
            )
    elif not layout.simulation:
        coords["init_time"] = (
            "init_time",
            init,
            {"long_name": "time index of the last input frame"},
        )
    data_vars: dict[str, Any] = {}
    offset = 0
    for name, extra, width in zip(layout.variables, layout.extra, layout.widths):
        block = values[:, :, offset : offset + width]
        offset += width
        block = block.reshape(n, steps, *[ds.sizes[d] for d in extra], *layout.shape)
        data_vars[name] = (
            (sdim, "lead_time", *extra, *layout.spatial),
            block,
            dict(ds[name].attrs),
        )
    for name, v in params.items():
        data_vars[name] = ((sdim,), v, dict(ds[name].attrs))
    attrs = dict(ds.attrs)
    attrs.update(
        {
            "forecast_in_steps": fc.in_steps,
            "forecast_out_steps": fc.out_steps,
            "forecast_steps": steps,
            "forecast_method": "autoregressive rollout" if steps > fc.out_steps else "direct",
        }
    )
    if fc.config is not None:
        attrs["forecast_backbone"] = str(fc.config.model.backbone)
    if fc.run_dir is not None:
        attrs["forecast_run"] = fc.run_dir
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


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
