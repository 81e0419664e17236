"""Forecasts of an ``xr.Dataset``: one model call (:func:`predict`) or an autoregressive
rollout to any horizon (:func:`rollout`), in physical units.

The model sees the ``T_in`` frames ending at each initial time and predicts ``T_out``;
its predictions are appended to the history and the last ``T_in`` frames are fed back
until the requested number of lead times exists. A sample whose values blow up (non-finite,
or far outside the training range) is stopped. The result follows the forecast convention
of :mod:`physforecast.forecast.dataset`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import torch
import xarray as xr
from tqdm.auto import tqdm

from physforecast.data.layout import ChannelLayout
from physforecast.errors import DataFormatError, PhysforecastError
from physforecast.metrics.verification import to_dataset

from .dataset import declared_parameters, forecast_dataset, sample_parameters
from .forecaster import Forecaster, load

__all__ = ["RolloutBlowupError", "predict", "rollout", "input_layout", "init_positions"]


class RolloutBlowupError(PhysforecastError, RuntimeError):
    """A rollout left the range of the training data (non-finite or huge values)."""


ModelLike = Forecaster | str | os.PathLike


def _as_forecaster(model: ModelLike) -> Forecaster:
    if isinstance(model, Forecaster):
        return model
    if isinstance(model, (str, os.PathLike)):
        return load(model)
    raise TypeError(
        f"expected a Forecaster (physforecast.load(run_dir)) or a run directory, got "
        f"{type(model).__name__}; wrap a bare module as Forecaster(module, normalizer)"
    )


def input_layout(fc: Forecaster, ds: xr.Dataset) -> ChannelLayout:
    """The channel layout of ``ds`` for ``fc``, checked against what ``fc`` was trained on.

    Raises
    ------
    DataFormatError
        Missing variables or parameters, another grid, other levels, a wrong channel count.
    """
    if fc.layout is not None:
        fc.layout.check(ds)
        layout = fc.layout
    else:
        missing = [v for v in fc.variables if v not in ds.data_vars]
        if missing:
            raise DataFormatError(
                f"the dataset lacks variable(s) {missing} that the model forecasts (trained on "
                f"{fc.variables}); it has {list(ds.data_vars)}. Rename with ds.rename(...)"
            )
        layout = ChannelLayout.from_dataset(ds, fc.variables)
        if fc.grid is not None and layout.grid != fc.grid:
            got = " x ".join(f"{d}={n}" for d, n in layout.grid.items())
            want = " x ".join(f"{d}={n}" for d, n in fc.grid.items())
            raise DataFormatError(
                f"the dataset is on a different grid ({got}) than the model was trained on "
                f"({want}); regrid it (ds.interp, ds.coarsen) to the training grid first"
            )
    if "trajectory" in ds.dims:
        for name in layout.variables:
            if "trajectory" not in ds[name].dims:
                raise DataFormatError(
                    f"variable {name!r} has dims {ds[name].dims}, but the dataset has a "
                    "'trajectory' dim"
                )
    in_channels = getattr(fc.model, "in_channels", None)
    if in_channels is not None and layout.channels != int(in_channels):
        parts = ", ".join(f"{v}: {w}" for v, w in zip(layout.variables, layout.widths))
        raise DataFormatError(
            f"the dataset gives {layout.channels} channels ({parts}); the model takes {in_channels}"
        )
    for name in fc.params if fc.cond_dim else []:
        if name not in ds.data_vars:
            raise DataFormatError(
                f"the model is conditioned on the physical parameter {name!r}; add it to the "
                "dataset as a variable with dim (trajectory,) or as a scalar"
            )
    return layout


def init_positions(ds: xr.Dataset, init: Any, in_steps: int) -> np.ndarray:
    """Time positions of the last input frame of each forecast.

    Parameters
    ----------
    ds : xr.Dataset
        The source, with a ``time`` dim.
    init : None, int, sequence of int, or time labels
        Positions (negative counts from the end) or labels of the ``time`` coordinate;
        None: the last frame.
    in_steps : int
        History length; every init needs ``in_steps`` frames up to it.
    """
    n = int(ds.sizes["time"])
    if n < in_steps:
        raise DataFormatError(
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
            raise DataFormatError(f"init index(es) {bad.tolist()} out of range for {n} time steps")
    else:
        if "time" not in ds.indexes:
            raise DataFormatError(
                "init labels need a 'time' coordinate; pass integer indices instead"
            )
        index = ds.get_index("time")
        labels = pd.DatetimeIndex(items) if isinstance(index, pd.DatetimeIndex) else items
        pos = index.get_indexer(labels)
        if (pos < 0).any():
            raise DataFormatError(
                f"init time(s) {list(items[pos < 0])} are not in the time coordinate "
                f"({index[0]} .. {index[-1]})"
            )
    short = pos[pos < in_steps - 1]
    if short.size:
        raise DataFormatError(
            f"too short a history: init index {int(short[0])} (the last input frame) has only "
            f"{int(short[0]) + 1} frame(s) up to it; the model needs in_steps={in_steps}, so "
            f"init must be >= {in_steps - 1}"
        )
    return pos


def _history(
    ds: xr.Dataset,
    layout: ChannelLayout,
    traj: np.ndarray | None,
    init: np.ndarray,
    in_steps: int,
) -> np.ndarray:
    """Read the input frames of a batch, (B, T_in, C, H, W) float32, in one compute.

    The frames the batch needs of the trajectories it needs are read as one orthogonal
    block (a lazy store: chunk by chunk, once, in one compute; in memory: one slice), and
    each sample's frames are picked from it with numpy. Dask's synchronous scheduler
    reads it: a file opened with one chunk per frame makes hundreds of tiny tasks, which a
    thread pool spends most of its time handing out. When that block would be much
    larger than the frames themselves (every sample at another time), the frames are
    gathered point by point by xarray instead.
    """
    offsets = np.arange(-in_steps + 1, 1)
    times = init[:, None] + offsets[None, :]
    sub = ds[layout.variables]
    frames = np.unique(times)
    rows = np.unique(traj) if traj is not None else None
    if frames.size * (1 if rows is None else rows.size) <= 4 * times.size:
        block: dict[str, np.ndarray] = {"time": frames}
        lead = ("time",)
        if rows is not None:
            block["trajectory"] = rows
            lead = ("trajectory", "time")
        values = layout.stack(sub.isel(block).compute(scheduler="synchronous"), lead)
        at = np.searchsorted(frames, times)
        if rows is None:
            return np.ascontiguousarray(values[at])
        return np.ascontiguousarray(values[np.searchsorted(rows, traj)[:, None], at])
    indexers: dict[str, xr.DataArray] = {"time": xr.DataArray(times, dims=("sample", "step"))}
    if traj is not None:
        indexers["trajectory"] = xr.DataArray(traj, dims="sample")
    return layout.stack(sub.isel(indexers).compute(scheduler="synchronous"), ("sample", "step"))


def _autoregress(
    fc: Forecaster,
    x: torch.Tensor,
    cond: torch.Tensor | None,
    steps: int,
    mask: torch.Tensor,
    threshold: float,
    on_blowup: str,
    describe: Callable[[int], str],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Roll ``fc`` forward from normalized ``x`` (B, T_in, C, H, W) for ``steps`` leads.

    Returns the normalized forecast (B, steps, C, H, W), NaN from a sample's blow-up on,
    and the first blown-up lead position per sample (-1: none).
    """
    b = x.shape[0]
    frames = x
    outputs: list[torch.Tensor] = []
    first_bad = torch.full((b,), -1, dtype=torch.long)
    outside = ~mask[:, None]  # (B, 1, C, H, W): points never checked nor fed (land)
    land = bool(outside.any())
    stopped = False  # some sample has blown up (its leads from then on are NaN)
    produced = 0
    while produced < steps:
        y = fc.step(frames[:, -fc.in_steps :], cond)
        if y.shape[0] != b or y.shape[2:] != x.shape[2:]:
            raise ValueError(
                f"the model returned shape {tuple(y.shape)} for input {tuple(frames.shape)}"
            )
        t_out = y.shape[1]
        # finite and within the threshold (NaN compares False), or outside the mask
        ok = y.abs().le_(threshold)
        if land:
            ok.logical_or_(outside)
        bad_step = ~ok.flatten(2).all(2)  # (B, T_out)
        if bool(bad_step.any()):
            new = bad_step.any(1) & (first_bad < 0)
            any_new = bool(new.any())
            first = produced + bad_step.float().argmax(1)
            if on_blowup == "raise" and any_new:
                i = int(torch.nonzero(new)[0])
                raise RolloutBlowupError(
                    f"rollout blew up for {describe(i)} at lead time {int(first[i]) + 1}: values "
                    f"are non-finite or exceed {threshold:g} x the training std. Shorten the "
                    "rollout, or pass on_blowup='nan' to keep the finite part"
                )
            first_bad = torch.where(new, first, first_bad)
            stopped = stopped or any_new
        feed = y
        if stopped:  # NaN from each blown-up sample's first bad lead on; it is fed zeros
            lead = produced + torch.arange(t_out)
            dead = (first_bad[:, None] >= 0) & (lead[None, :] >= first_bad[:, None])
            dead = dead[:, :, None, None, None]
            y = y.masked_fill(dead, float("nan"))
            feed = y.masked_fill(dead, 0.0)
        if land:
            feed = feed.masked_fill(outside, 0.0)
        outputs.append(y)
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
    members: int = 1,
) -> xr.Dataset:
    """Forecast ``steps`` lead times autoregressively from an ``xr.Dataset``.

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
    members : int
        Ensemble members of a stochastic model (ST-PAD): ``members`` independent
        rollouts along a ``member`` dim (:mod:`physforecast.forecast.members`).

    Returns
    -------
    xr.Dataset
        Variables (sample | init_time, lead_time, [member], [level], y | latitude, x | longitude),
        ``lead_time`` = 1..steps (units "steps"), ``init_index``, ``trajectory``,
        ``init_time``/``valid_time`` when the input has a time coordinate, per-sample
        parameters, the input's grid coordinates and attributes. Points that are NaN in
        the last input frame (land) are NaN.

    Raises
    ------
    DataFormatError
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
    if members != 1:
        from .members import ensemble_rollout

        kw = dict(init=init, batch_size=batch_size, on_blowup=on_blowup, progress=progress)
        return ensemble_rollout(
            rollout, fc, ds, steps, members, blowup_threshold=blowup_threshold, **kw
        )
    ds = to_dataset(ds)
    layout = input_layout(fc, ds)
    normalizer = fc.normalizer.for_layout(layout)
    inits = init_positions(ds, init, fc.in_steps)
    simulation = "trajectory" in ds.dims
    if simulation:
        n_traj = int(ds.sizes["trajectory"])
        traj: np.ndarray | None = np.repeat(np.arange(n_traj), len(inits))
        init_pos = np.tile(inits, n_traj)
    else:
        traj, init_pos = None, inits
    n = len(init_pos)
    cond_names = fc.params if fc.cond_dim else []
    params = sample_parameters(
        ds,
        list(dict.fromkeys([*cond_names, *declared_parameters(ds)])),
        traj,
        n,
        strict=set(cond_names),
    )

    def describe(i: int) -> str:
        where = f"trajectory {int(traj[i])}, " if traj is not None else ""
        return f"sample {i} ({where}init index {int(init_pos[i])})"

    out = np.empty((n, steps, layout.channels, *layout.shape), dtype=np.float32)
    first_bad = np.full(n, -1)
    for start in tqdm(range(0, n, batch_size), desc="rollout", leave=False, disable=not progress):
        sl = slice(start, min(start + batch_size, n))
        x = torch.from_numpy(
            _history(ds, layout, traj[sl] if traj is not None else None, init_pos[sl], fc.in_steps)
        )  # float32 throughout, as in training and evaluation (forecast_windows)
        valid = torch.isfinite(x[:, -1])
        z = torch.nan_to_num(normalizer.normalize(x), nan=0.0, posinf=0.0, neginf=0.0)
        cond = None
        if cond_names:
            p = np.stack([params[k][sl] for k in cond_names], 1).astype(np.float64)
            cond = fc.condition(torch.from_numpy(p))
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
        y = normalizer.denormalize(y).masked_fill_(~valid[:, None], float("nan"))
        out[sl] = y.numpy()
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
    attrs = {
        "forecast_in_steps": fc.in_steps,
        "forecast_out_steps": fc.out_steps,
        "forecast_steps": steps,
        "forecast_method": "autoregressive rollout" if steps > fc.out_steps else "direct",
    }
    if fc.config is not None:
        attrs["forecast_backbone"] = str(fc.config.model.backbone)
        attrs["forecast_training_method"] = str(fc.config.method)
    if fc.run_dir is not None:
        attrs["forecast_run"] = fc.run_dir
    return forecast_dataset(
        out,
        layout=layout,
        source=ds,
        init_index=init_pos,
        trajectory=traj,
        params=params,
        sample_dim="sample" if simulation else "init_time",
        attrs=attrs,
    )


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
