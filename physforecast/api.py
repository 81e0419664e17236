"""Trained models as ready forecasters, and xarray-level helpers.

``load(run_dir)`` rebuilds the model of a run directory with its normalization and config
as a :class:`Forecaster`: an ``nn.Module`` that takes physical units and returns physical
units, and knows what it was trained on (variables, parameters, history and forecast
lengths, grid). :func:`physforecast.predict` and :func:`physforecast.rollout` run it on
an ``xr.Dataset``.

:func:`spectrum` gives the radially averaged power spectrum of xarray fields, lazily on
dask-backed data. :func:`truth_for` cuts the frames that verify a forecast out of its
source dataset, and :func:`verify` scores a forecast against them.

Examples
--------
>>> import physforecast as pf                                 # doctest: +SKIP
>>> fc = pf.load("runs/ns2d-fno")                             # doctest: +SKIP
>>> forecast = pf.rollout(fc, ds, steps=40)                   # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn

from physforecast.data.normalization import Normalizer

__all__ = [
    "Forecaster",
    "load",
    "spectrum",
    "truth_for",
    "match_truth",
    "as_samples",
    "verify",
    "DATA_SPEC_FILE",
]

#: File in a run directory describing the training grid (written by ``training.run.data_spec``).
DATA_SPEC_FILE = "data.json"

_SPATIAL_PAIRS = (("y", "x"), ("latitude", "longitude"), ("lat", "lon"))


class Forecaster(nn.Module):
    """A backbone with the normalization it was trained with.

    Parameters
    ----------
    model : nn.Module
        Maps normalized ``x`` (B, T_in, C, H, W) and ``cond`` (B, P) to normalized
        (B, T_out, C, H, W).
    normalizer : Normalizer
        Statistics of the training split; names the variables and parameters.
    in_steps, out_steps : int, optional
        ``T_in`` and ``T_out``; read from ``model.in_steps`` / ``model.out_steps`` when
        omitted.
    config : Config, optional
        The run's resolved config.
    grid : dict, optional
        Spatial dims and sizes of the training data, e.g. ``{"y": 64, "x": 64}``. Inputs
        on another grid are refused. ``None`` skips the check.
    run_dir : path, optional
        Where the forecaster was loaded from (recorded in forecast attributes).

    Attributes
    ----------
    variables : list of str
        The forecast variables, in channel order.
    params : list of str
        The physical parameters passed to the model as ``cond``, in order.
    """

    def __init__(
        self,
        model: nn.Module,
        normalizer: Normalizer,
        *,
        in_steps: int | None = None,
        out_steps: int | None = None,
        config: Any = None,
        grid: dict[str, int] | None = None,
        run_dir: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.normalizer = normalizer
        self.config = config
        in_steps = in_steps if in_steps is not None else getattr(model, "in_steps", None)
        out_steps = out_steps if out_steps is not None else getattr(model, "out_steps", None)
        if in_steps is None or out_steps is None:
            raise ValueError(
                "the model has no in_steps/out_steps attributes; pass in_steps= and out_steps="
            )
        self.in_steps, self.out_steps = int(in_steps), int(out_steps)
        self.grid = {str(k): int(v) for k, v in grid.items()} if grid else None
        self.run_dir = str(run_dir) if run_dir is not None else None
        self.eval()

    @property
    def variables(self) -> list[str]:
        return list(self.normalizer.variables)

    @property
    def params(self) -> list[str]:
        return list(self.normalizer.params)

    @property
    def cond_dim(self) -> int:
        """Number of physical parameters the model is conditioned on (0: none)."""
        return int(getattr(self.model, "cond_dim", 0) or 0)

    @property
    def device(self) -> torch.device:
        first = next(self.model.parameters(), None)
        return first.device if first is not None else torch.device("cpu")

    def channel_stats(
        self, widths: Sequence[int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and std, shape (C,): each variable's statistics repeated over
        its ``widths`` channels (levels), one channel per variable by default."""
        widths = list(widths or [1] * len(self.variables))
        if len(widths) != len(self.variables):
            raise ValueError(f"{len(widths)} channel widths for {len(self.variables)} variables")
        reps = torch.tensor(widths)
        mean = torch.tensor(self.normalizer.mean, dtype=torch.float64).repeat_interleave(reps)
        std = torch.tensor(self.normalizer.std, dtype=torch.float64).repeat_interleave(reps)
        return mean, std

    @torch.no_grad()
    def step(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """One model call in normalized units: (B, T_in, C, H, W) -> (B, T_out, C, H, W), fp32,
        on the model's device and returned on ``x``'s."""
        device = self.device
        cond = cond.to(device) if (cond is not None and self.cond_dim) else None
        return self.model(x.to(device), cond).float().to(x.device)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, params: torch.Tensor | None = None) -> torch.Tensor:
        """Forecast in physical units.

        Parameters
        ----------
        x : torch.Tensor
            History (B, T_in, C, H, W) in physical units, one channel per variable; NaN
            (masked) points are allowed.
        params : torch.Tensor, optional
            Physical parameters (B, P) in physical units, required when ``cond_dim > 0``.

        Returns
        -------
        torch.Tensor
            (B, T_out, C, H, W) in physical units.
        """
        mean, std = (s.to(x).reshape(-1, 1, 1) for s in self.channel_stats())
        z = torch.nan_to_num((x - mean) / std, nan=0.0, posinf=0.0, neginf=0.0).float()
        cond = None
        if self.cond_dim:
            if params is None:
                raise ValueError(f"the model is conditioned on {self.params}; pass params=")
            cond = self.normalizer.normalize_params(params.double()).float()
        return self.step(z, cond).to(x.dtype) * std + mean

    def extra_repr(self) -> str:
        return (
            f"variables={self.variables}, params={self.params}, in_steps={self.in_steps}, "
            f"out_steps={self.out_steps}, grid={self.grid}"
        )


def _to_dataset(obj: xr.Dataset | xr.DataArray, what: str = "input") -> xr.Dataset:
    if isinstance(obj, xr.DataArray):
        if obj.name is None:
            raise ValueError(f"the {what} DataArray has no name; name it after its variable")
        return obj.to_dataset()
    if not isinstance(obj, xr.Dataset):
        raise TypeError(
            f"the {what} must be an xr.Dataset or xr.DataArray, got {type(obj).__name__}"
        )
    return obj


def _spatial_of(da: xr.DataArray) -> tuple[str, str]:
    for pair in _SPATIAL_PAIRS:
        if all(d in da.dims for d in pair):
            return pair
    if da.ndim < 2:
        raise ValueError(f"variable {da.name!r} has dims {da.dims}; it needs two spatial dims")
    return str(da.dims[-2]), str(da.dims[-1])


def _training_grid(run_dir: Path) -> dict[str, int]:
    """The training grid ``{dim: size}`` from the run's ``data.json``."""
    spec_path = run_dir / DATA_SPEC_FILE
    if not spec_path.exists():
        raise FileNotFoundError(
            f"{run_dir} has no {DATA_SPEC_FILE}; it was not written by physforecast train"
        )
    spec = json.loads(spec_path.read_text())
    return dict(zip(spec["spatial_dims"], spec["shape"]))


def load(
    run_dir: str | os.PathLike,
    checkpoint: str = "best",
    *,
    device: str | torch.device = "cpu",
) -> Forecaster:
    """Load the trained model of a run directory, ready to forecast.

    Parameters
    ----------
    run_dir : path
        A directory written by ``physforecast train`` (``config.yaml``, ``model.json``,
        ``normalization.json``, ``checkpoints/``).
    checkpoint : str
        ``"best"`` or ``"last"`` (a file ``checkpoints/<checkpoint>.pt``).
    device : str or torch.device
        Where the model runs.

    Returns
    -------
    Forecaster
        In eval mode, with ``.model``, ``.normalizer``, ``.config``, ``.variables``,
        ``.params``, ``.in_steps``, ``.out_steps`` and ``.grid``.

    Raises
    ------
    FileNotFoundError
        When ``run_dir`` is not a run directory or the checkpoint is missing.
    """
    from physforecast.training.run import load_run

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise FileNotFoundError(f"{str(run_dir)!r} is not a run directory (no config.yaml)")
    ckpt = run_dir / "checkpoints" / f"{checkpoint}.pt"
    if not ckpt.exists():
        found = sorted(p.stem for p in (run_dir / "checkpoints").glob("*.pt"))
        raise FileNotFoundError(
            f"no checkpoint {checkpoint!r} in {run_dir / 'checkpoints'}; found {found or 'none'}"
        )
    model, normalizer, cfg = load_run(run_dir, checkpoint)
    forecaster = Forecaster(
        model,
        normalizer,
        in_steps=cfg.data.in_steps,
        out_steps=cfg.data.out_steps,
        config=cfg,
        grid=_training_grid(run_dir),
        run_dir=run_dir,
    )
    return forecaster.to(device)


def spectrum(
    obj: xr.DataArray | xr.Dataset,
    variable: str | None = None,
    *,
    reduction: str = "mean",
) -> xr.DataArray:
    """Radially averaged power spectrum of every 2-D frame of a field.

    Wraps :func:`physforecast.metrics.power_spectrum` (integer shells
    ``k = round(|k_vec|)`` in cycles per domain, ``k = 0 .. min(H, W) // 2``, fp32 or
    better). NaN (masked) points count as zero; a frame with no valid point gives NaN.
    Lazy on dask-backed data: nothing is computed until the result is.

    Parameters
    ----------
    obj : xr.DataArray or xr.Dataset
        A field with two spatial dims (``y, x``, ``latitude, longitude`` or its last two).
    variable : str, optional
        Which variable of a Dataset; may be omitted when it has a single field.
    reduction : {"mean", "sum"}
        Shell average (power spectrum) or shell sum (energy spectrum, summing to
        ``mean(x^2)``).

    Returns
    -------
    xr.DataArray
        The field's other dims plus ``wavenumber`` (K,), float64.
    """
    from physforecast.metrics.spectral import power_spectrum

    if isinstance(obj, xr.Dataset):
        fields = [str(n) for n, v in obj.data_vars.items() if v.ndim >= 2]
        if variable is None:
            if len(fields) != 1:
                raise ValueError(f"the dataset has fields {fields}; name one with variable=...")
            variable = fields[0]
        if variable not in obj.data_vars:
            raise KeyError(f"variable {variable!r} not in dataset; fields: {fields}")
        da = obj[variable]
    else:
        da = obj
    sy, sx = _spatial_of(da)
    h, w = da.sizes[sy], da.sizes[sx]
    n_shells = min(h, w) // 2 + 1
    if da.chunks is not None:
        da = da.chunk({sy: -1, sx: -1})

    def _frames(x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
        finite = torch.isfinite(t)
        out = power_spectrum(torch.nan_to_num(t), mask=finite, reduction=reduction)
        empty = ~finite.flatten(-2).any(-1)  # frames with no valid point: NaN, not 0
        return out.masked_fill(empty[..., None], float("nan")).numpy()

    result = xr.apply_ufunc(
        _frames,
        da,
        input_core_dims=[[sy, sx]],
        output_core_dims=[["wavenumber"]],
        dask="parallelized",
        output_dtypes=[np.float64],
        dask_gufunc_kwargs={"output_sizes": {"wavenumber": n_shells}},
    )
    units = da.attrs.get("units")
    result = result.assign_coords(
        wavenumber=(
            "wavenumber",
            np.arange(n_shells),
            {"units": "cycles per domain", "long_name": "radial wavenumber"},
        )
    )
    result.name = f"{da.name}_spectrum" if da.name is not None else "spectrum"
    result.attrs = {
        "long_name": f"radially {'averaged' if reduction == 'mean' else 'summed'} power "
        f"spectrum of {da.name}",
        **({"units": f"({units})2"} if units else {}),
    }
    return result


# ---------------------------------------------------------------- verification


def _sample_dim(forecast: xr.Dataset) -> str:
    for dim in ("sample", "init_time"):
        if dim in forecast.dims:
            return dim
    raise ValueError(
        f"a forecast needs a 'sample' or 'init_time' dim; it has {tuple(forecast.dims)}"
    )


def _fields(forecast: xr.Dataset) -> list[str]:
    names = [str(n) for n, v in forecast.data_vars.items() if "lead_time" in v.dims]
    if not names:
        raise ValueError("the forecast has no data variable with a 'lead_time' dim")
    return names


def truth_for(forecast: xr.Dataset, source: xr.Dataset | xr.DataArray) -> xr.Dataset:
    """The frames of ``source`` that verify ``forecast``, in the forecast's layout.

    Lead time ``l`` of a sample with ``init_index`` i (and ``trajectory`` t) is verified by
    ``source.isel(trajectory=t, time=i + l)``. Leads past the end of ``source`` are NaN
    (the scorecard treats NaN truth as masked). Lazy on dask-backed data.

    Parameters
    ----------
    forecast : xr.Dataset
        From :func:`predict` / :func:`rollout` (needs ``init_index``, ``lead_time`` and, for
        simulations, ``trajectory``).
    source : xr.Dataset or xr.DataArray
        The dataset the forecast started from (or a longer one with the same times).

    Returns
    -------
    xr.Dataset
        Same variables, dims and coordinates as ``forecast`` (parameters copied).
    """
    source = _to_dataset(source, "truth")
    sdim = _sample_dim(forecast)
    fields = _fields(forecast)
    missing = [v for v in fields if v not in source.data_vars]
    if missing:
        raise ValueError(f"the truth lacks variable(s) {missing}; it has {list(source.data_vars)}")
    if "init_index" not in forecast.coords:
        raise ValueError(
            "the forecast has no 'init_index' coordinate; pass the truth in the forecast layout "
            "(with a 'lead_time' dim) instead"
        )
    if "time" not in source.dims:
        raise ValueError(f"the truth has no 'time' dim; dims are {tuple(source.dims)}")
    idx = forecast["init_index"].values[:, None] + forecast["lead_time"].values[None, :]
    n_time = int(source.sizes["time"])
    indexers = {"time": xr.DataArray(np.minimum(idx, n_time - 1), dims=(sdim, "lead_time"))}
    if "trajectory" in source.dims:
        if "trajectory" not in forecast.coords:
            raise ValueError(
                "the truth has trajectories but the forecast has no 'trajectory' coordinate"
            )
        labels = forecast["trajectory"].values
        pos = source.get_index("trajectory").get_indexer(labels)
        if (pos < 0).any():
            raise ValueError(f"trajectories {labels[pos < 0].tolist()} are not in the truth")
        indexers["trajectory"] = xr.DataArray(pos, dims=sdim)
    inside = xr.DataArray(idx < n_time, dims=(sdim, "lead_time"))
    data_vars = {}
    for name in fields:
        f = forecast[name]
        t = source[name].isel(indexers)
        t = t.drop_vars([c for c in t.coords if c not in t.dims]).transpose(*f.dims)
        for dim in f.dims:
            if t.sizes[dim] != f.sizes[dim]:
                raise ValueError(
                    f"variable {name!r}: the truth has {dim}={t.sizes[dim]}, the forecast "
                    f"{dim}={f.sizes[dim]} (a different grid?)"
                )
        t = t.where(inside) if not bool(inside.all()) else t
        data_vars[name] = (f.dims, t.data, dict(source[name].attrs))
    for name, da in forecast.data_vars.items():
        if da.dims == (sdim,):
            data_vars[str(name)] = da
    return xr.Dataset(data_vars, coords=forecast.coords, attrs=dict(forecast.attrs))


def match_truth(forecast: xr.Dataset, truth: xr.Dataset | xr.DataArray) -> xr.Dataset:
    """``truth`` in the forecast layout: as given when it has ``lead_time``, else
    :func:`truth_for` (``truth`` is then the source dataset)."""
    truth = _to_dataset(truth, "truth")
    if any("lead_time" in v.dims for v in truth.data_vars.values()):
        return truth
    return truth_for(forecast, truth)


def as_samples(forecast: xr.Dataset) -> xr.Dataset:
    """Rename a reanalysis forecast's ``init_time`` dim to ``sample`` (the scorecard's
    convention), keeping ``init_time`` as a coordinate along it."""
    if "init_time" not in forecast.dims or "sample" in forecast.dims:
        return forecast
    out = forecast.rename_dims({"init_time": "sample"})
    return out.assign_coords(sample=np.arange(out.sizes["sample"]))


def verify(
    forecast: xr.Dataset | xr.DataArray,
    truth: xr.Dataset | xr.DataArray,
    suite: Sequence[Any] | None = None,
    **kwargs: Any,
) -> xr.Dataset:
    """Score a forecast with :func:`physforecast.metrics.score`.

    Parameters
    ----------
    forecast : xr.Dataset or xr.DataArray
        From :func:`predict` / :func:`rollout` (or any forecast-convention dataset).
    truth : xr.Dataset or xr.DataArray
        The truth in the forecast layout, or the source dataset (see :func:`truth_for`).
    suite : list, optional
        Metric names or callables; the default suite of the forecast's system otherwise.
    **kwargs
        ``weights``, ``mask``, ``climatology`` for :func:`~physforecast.metrics.score`.

    Returns
    -------
    xr.Dataset
        The scorecard ``score (metric, lead_time, variable)``, ``summary (metric, variable)``.
    """
    from physforecast.metrics import score

    forecast = _to_dataset(forecast, "forecast")
    source = _to_dataset(truth, "truth")
    truth = match_truth(forecast, source)
    if truth is not source and "init_index" in forecast.coords:
        last = forecast["init_index"].values.max() + forecast["lead_time"].values
        short = forecast["lead_time"].values[last >= source.sizes["time"]]
        if short.size:
            warnings.warn(
                f"the truth ends before lead time {int(short[0])} for some samples; the scores "
                "of those lead times are NaN (choose earlier init times to verify them)",
                stacklevel=2,
            )
    return score(as_samples(forecast), as_samples(truth), suite, **kwargs)
