"""Verification of forecast Datasets: the verifying truth, scores and spectra, in xarray.

:func:`truth_for` cuts the frames that verify a forecast out of its source dataset,
:func:`verify` scores a forecast against them with :func:`~physforecast.metrics.score`,
and :func:`spectrum` gives the radially averaged power spectrum of xarray fields, lazily
on dask-backed data.

Examples
--------
>>> forecast = physforecast.rollout(fc, ds, steps=30)        # doctest: +SKIP
>>> card = verify(forecast, ds)                              # doctest: +SKIP
>>> spectrum(ds.vorticity)                                   # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr

from physforecast.data.layout import spatial_dims

from .scorecard import score
from .spectral import power_spectrum

__all__ = ["to_dataset", "spectrum", "truth_for", "match_truth", "as_samples", "verify"]


def to_dataset(obj: xr.Dataset | xr.DataArray, what: str = "input") -> xr.Dataset:
    """``obj`` as a Dataset: a named DataArray becomes a one-variable Dataset.

    Raises
    ------
    ValueError
        For an unnamed DataArray.
    TypeError
        For anything that is neither.
    """
    if isinstance(obj, xr.DataArray):
        if obj.name is None:
            raise ValueError(f"the {what} DataArray has no name; name it after its variable")
        return obj.to_dataset()
    if not isinstance(obj, xr.Dataset):
        raise TypeError(
            f"the {what} must be an xr.Dataset or xr.DataArray, got {type(obj).__name__}"
        )
    return obj


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
    sy, sx = spatial_dims(da)
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
    source = to_dataset(source, "truth")
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
    truth = to_dataset(truth, "truth")
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
    forecast = to_dataset(forecast, "forecast")
    source = to_dataset(truth, "truth")
    truth = match_truth(forecast, source)
    if truth is not source and "init_index" in forecast.coords:
        inits = np.atleast_1d(forecast["init_index"].values)
        n_time = source.sizes["time"]
        last = inits.max() + forecast["lead_time"].values
        short = forecast["lead_time"].values[last >= n_time]
        if short.size:
            lead = int(short[0])
            cut = int((inits + lead >= n_time).sum())
            which = f"all {inits.size}" if cut == inits.size else f"{cut} of {inits.size}"
            warnings.warn(
                f"the truth ends before lead time {lead} for {which} forecasts (the source "
                f"has {n_time} time steps; the latest init index is {int(inits.max())}); "
                "those scores are NaN. Start the forecasts earlier (init <= "
                f"{n_time - 1 - int(forecast['lead_time'].values.max())}) to verify every lead",
                stacklevel=2,
            )
    return score(as_samples(forecast), as_samples(truth), suite, **kwargs)
